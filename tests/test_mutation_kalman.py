"""Tests written from the mutation run of strategies/kalman.py (issue 19): the documented defaults, the
choices that are validated, which parameters each optimiser steps (and with which learning rate), which loss
term each learned scalar gets its gradient from, the filter update with the stepped gamma, the value a step
returns, gamma's trajectory and per-experience record, the checkpointed state, and kalman-ft's backbone step.
Deterministic throughout (``mc_samples=0``: softmax of the mean logits) so that gradients compare exactly."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from cl.core.registry import ConfigError, strategies
from strategies.kalman import Kalman, KalmanConfig, KalmanFinetune

from test_strategies_er_family import make

D = torch.float64


def batch(seed=0, n=6, d=16, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_defaults():
    c = KalmanConfig()
    assert (c.sigma_w2, c.sigma2, c.gamma, c.learn_gamma, c.gamma_param, c.gamma_optimizer, c.gamma_lr) == (
        1.0, 0.01, 0.999, True, "log1m", "adam", 0.05)
    assert (c.gamma_log_every, c.gamma_objective, c.beta, c.learn_beta, c.beta_lr) == (10, "mc", 1.0, True, 0.01)
    assert (c.learn_noise, c.noise_lr, c.hyper_optimizer, c.mc_samples, c.predictive_noise) == (False, 0.001, "sgd", 32, False)
    assert (c.bias, c.normalize, c.joseph, c.dtype, c.finetune_loss) == (True, True, False, "float64", "gaussian")
    assert strategies.get("kalman").obj is Kalman and strategies.get("kalman-ft").obj is KalmanFinetune
    assert (Kalman.frozen_features, Kalman.finetune, Kalman.task_free) == (True, False, True)
    assert (KalmanFinetune.frozen_features, KalmanFinetune.finetune) == (False, True)


@pytest.mark.parametrize("key,choices", [("gamma_objective", "gaussian, mc"), ("finetune_loss", "gaussian, mc"),
                                         ("hyper_optimizer", "adam, sgd"), ("gamma_optimizer", "adam, sgd"),
                                         ("gamma_param", "log1m, logit"), ("dtype", "float32, float64")])
def test_each_choice_is_validated_naming_the_field_and_the_choices(key, choices):
    with pytest.raises(ConfigError, match=f"unknown kalman {key} 'bogus'.* Valid choices: {choices}$"):
        make("kalman", backbone="identity", **{key: "bogus"})


def test_the_head_gets_the_configured_filter():
    s, _ = make("kalman", backbone="identity", sigma_w2=2.0, sigma2=0.5, gamma=0.9, beta=3.0, bias=False, mc_samples=5,
                predictive_noise=True, dtype="float32", gamma_param="logit", normalize=False)
    h = s.model.head
    assert (h.dim, h.mc_samples, h.predictive_noise, h.dtype, h.gamma_param, h.n_classes) == (
        16, 5, True, torch.float32, "logit", 10)
    assert h.sigma_w2.item() == pytest.approx(2.0) and h.sigma2.item() == pytest.approx(0.5)
    assert h.gamma.item() == pytest.approx(0.9) and h.beta.item() == pytest.approx(3.0)
    assert s.model.normalize is False
    x = torch.randn(3, 16)
    assert torch.equal(s.model.features(x), x)  # not normalised
    s, _ = make("kalman", backbone="identity")
    assert s.model.normalize is True and s.model.head.dim == 17
    assert torch.allclose(s.model.features(3 * x), torch.nn.functional.normalize(x, dim=1))


def test_kalman_model_does_not_normalise_unless_asked():
    from strategies._kalman_filter import KalmanHead
    from strategies.kalman import KalmanModel

    x = torch.tensor([[3.0, 4.0]])
    plain = KalmanModel(torch.nn.Identity(), KalmanHead(2, 2))
    assert plain.normalize is False and torch.equal(plain.features(x), x)
    unit = KalmanModel(torch.nn.Identity(), KalmanHead(2, 2), normalize=True)
    assert torch.allclose(unit.features(x), torch.tensor([[0.6, 0.8]]))


def test_kalman_freezes_the_backbone_and_kalman_ft_does_not():
    s, _ = make("kalman")
    assert not any(p.requires_grad for p in s.model.backbone.parameters())
    ft, _ = make("kalman-ft")
    assert all(p.requires_grad for p in ft.model.backbone.parameters())

    class Uncached(Kalman):  # features through the backbone at every step, not fine-tuned: still frozen
        frozen_features = False

    s2, sc = make("kalman-ft")
    m = Uncached.build_model(s2.cfg, copy.deepcopy(ft.model.backbone), sc)
    assert not any(p.requires_grad for p in m.backbone.parameters())


def _groups(opt):
    return [(g["params"][0], g["lr"]) for g in opt.param_groups]


def test_default_optimisers_step_beta_by_sgd_and_gamma_by_adam():
    s, _ = make("kalman", backbone="identity")
    h = s.model.head
    assert type(s.hyper_optimizer) is torch.optim.SGD and s.optimizer is s.hyper_optimizer
    (p, lr), = _groups(s.hyper_optimizer)
    assert p is h.log_beta and lr == 0.01
    assert h.log_beta.requires_grad and not h.log_s2.requires_grad and not h.log_sw2.requires_grad
    assert h.psi.requires_grad and type(s.gamma_optimizer) is torch.optim.Adam
    (p, lr), = _groups(s.gamma_optimizer)
    assert p is h.psi and lr == 0.05
    assert (s._gamma_log, s._gamma_per_exp, s._steps) == ([], [], 0)


def test_noise_and_adam_hyper_optimiser_and_sgd_for_gamma():
    s, _ = make("kalman", backbone="identity", learn_noise=True, hyper_optimizer="adam", beta_lr=0.3, noise_lr=0.02,
                gamma_optimizer="sgd", gamma_lr=0.7)
    h = s.model.head
    assert type(s.hyper_optimizer) is torch.optim.Adam
    assert _groups(s.hyper_optimizer) == [(h.log_beta, 0.3), (h.log_s2, 0.02), (h.log_sw2, 0.02)]
    assert h.log_s2.requires_grad and h.log_sw2.requires_grad
    assert type(s.gamma_optimizer) is torch.optim.SGD and _groups(s.gamma_optimizer) == [(h.psi, 0.7)]


def test_nothing_learned_keeps_an_inert_optimiser_and_no_gamma_optimiser():
    s, _ = make("kalman", backbone="identity", learn_beta=False, learn_gamma=False)
    h = s.model.head
    (p, lr), = _groups(s.hyper_optimizer)
    assert lr == 0.0 and p.shape == () and p is not h.log_beta and p.item() == 0.0
    assert not h.log_beta.requires_grad and not h.psi.requires_grad and s.gamma_optimizer is None
    x, y = batch()
    psi, beta = h.psi.detach().clone(), h.log_beta.detach().clone()
    s.train_step(x, y)  # the filter still updates; nothing else moves
    assert torch.equal(h.psi, psi) and torch.equal(h.log_beta, beta) and h.M.abs().sum() > 0
    # gamma = 1 exactly: static regression, not learnable (psi = -inf)
    s1, _ = make("kalman", backbone="identity", gamma=1.0)
    assert s1.gamma_optimizer is None and not s1.model.head.psi.requires_grad
    s2, _ = make("kalman", backbone="identity", gamma=0.5)
    assert s2.gamma_optimizer is not None and s2.model.head.psi.requires_grad


def _expected_grads(s, x, y, objective):
    """d(loss)/d(psi, log_beta) with the state before the step: the Gaussian term (per sample) gets gamma's
    gradient only for objective 'gaussian', the class term only for 'mc'; beta only from the class term."""
    h = copy.deepcopy(s.model.head)
    phi = h.phi(s.model.features(x).float())
    Y = h.one_hot(y)
    h.observe(y)
    g = h.gamma
    gauss = -h.gaussian_log_predictive(phi, Y, gamma=g if objective == "gaussian" else g.detach()) / len(y)
    mu, var = h.latent(phi, gamma=g if objective == "mc" else g.detach())
    mc = -h.class_log_probs(mu, var).gather(1, y[:, None]).mean()
    dpsi, dbeta = torch.autograd.grad(gauss + mc, [h.psi, h.log_beta])
    return dpsi, dbeta, gauss.detach()


@pytest.mark.parametrize("objective", ["mc", "gaussian"])
def test_one_step_gradients_parameters_update_and_returned_loss(objective):
    s, _ = make("kalman", backbone="identity", mc_samples=0, gamma=0.9, gamma_objective=objective,
                gamma_optimizer="sgd", gamma_lr=0.1, beta_lr=0.2)
    h = s.model.head
    x0, y0 = batch(0)
    s.train_step(x0, y0)  # a non-zero state first
    x, y = batch(1)
    dpsi, dbeta, gauss = _expected_grads(s, x, y, objective)
    psi0, beta0 = h.psi.detach().clone(), h.log_beta.detach().clone()
    ref = copy.deepcopy(h)
    out = s.train_step(x, y)
    assert torch.allclose(h.psi.grad, dpsi, atol=1e-12) and torch.allclose(h.log_beta.grad, dbeta, atol=1e-12)
    assert torch.allclose(h.psi.detach(), psi0 - 0.1 * dpsi, atol=1e-12)
    assert torch.allclose(h.log_beta.detach(), beta0 - 0.2 * dbeta, atol=1e-12)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert out.item() == pytest.approx(gauss.item(), rel=1e-6)
    # then the filter update, with the gamma just stepped
    with torch.no_grad():
        ref.psi.copy_(h.psi)
    ref.update(ref.phi(s.model.features(x)), ref.one_hot(y))
    assert torch.allclose(h.M, ref.M, atol=1e-12) and torch.allclose(h.A, ref.A, atol=1e-12)
    assert h.seen[y].all() and int(h.seen.sum()) == len(set(y0.tolist()) | set(y.tolist()))
    # gradients are not accumulated over steps
    x2, y2 = batch(2)
    dpsi2, dbeta2, _ = _expected_grads(s, x2, y2, objective)
    s.train_step(x2, y2)
    assert torch.allclose(h.psi.grad, dpsi2, atol=1e-12) and torch.allclose(h.log_beta.grad, dbeta2, atol=1e-12)


def test_learned_noise_gets_the_gradient_of_both_terms():
    s, _ = make("kalman", backbone="identity", mc_samples=0, learn_noise=True, noise_lr=0.5, learn_gamma=False,
                learn_beta=False)
    h = s.model.head
    s.train_step(*batch(0))
    x, y = batch(1)
    c = copy.deepcopy(h)
    phi, Y = c.phi(s.model.features(x)), c.one_hot(y)
    c.observe(y)
    mu, var = c.latent(phi, gamma=c.gamma.detach())
    loss = -c.gaussian_log_predictive(phi, Y, gamma=c.gamma.detach()) / len(y) \
        - c.class_log_probs(mu, var).gather(1, y[:, None]).mean()
    gs2, gsw2 = torch.autograd.grad(loss, [c.log_s2, c.log_sw2])
    s2, sw2 = h.log_s2.detach().clone(), h.log_sw2.detach().clone()
    s.train_step(x, y)
    assert torch.allclose(h.log_s2.grad, gs2, atol=1e-12) and torch.allclose(h.log_sw2.grad, gsw2, atol=1e-12)
    assert torch.allclose(h.log_s2.detach(), s2 - 0.5 * gs2) and torch.allclose(h.log_sw2.detach(), sw2 - 0.5 * gsw2)


def test_the_step_runs_in_full_precision_and_returns_the_gaussian_nll_per_sample():
    s, _ = make("kalman", mc_samples=0)  # an MLP backbone: under CPU autocast its output would be bfloat16
    x, y = batch(3)
    h = copy.deepcopy(s.model.head)
    with torch.no_grad():
        phi = h.phi(s.model.features(x).float())
        expect = -h.gaussian_log_predictive(phi, h.one_hot(y)) / len(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = s.train_step(x, y)
    assert out.item() == pytest.approx(expect.item(), rel=1e-6)


def test_gamma_trajectory_every_n_steps_and_per_experience():
    s, _ = make("kalman", backbone="identity", gamma_log_every=2, mc_samples=0)
    gammas = []
    for i in range(5):
        s.train_step(*batch(i))
        gammas.append(s.model.head.gamma.item())
        if i == 2:
            s.after_experience(None)
    s.after_experience(None)
    m = s.extra_metrics()
    assert m["gamma_trajectory"] == pytest.approx([gammas[1], gammas[3]])  # after steps 2 and 4
    assert m["gamma_per_exp"] == pytest.approx([gammas[2], gammas[4]])
    assert m["gamma_initial"] == 0.999 and m["gamma_final"] == pytest.approx(gammas[4]) and m["gamma_log_every"] == 2
    assert m["beta_final"] == pytest.approx(s.model.head.beta.item()) and m["beta_final"] != 1.0
    assert len({round(g, 12) for g in gammas}) == 5  # gamma moved at every step
    off, _ = make("kalman", backbone="identity", gamma_log_every=0, mc_samples=0)
    for i in range(3):
        off.train_step(*batch(i))
    assert off.extra_metrics()["gamma_trajectory"] == [] and off._steps == 3
    with pytest.raises(ConfigError, match="gamma_log_every=-2 is out of range: valid values are >= 0"):
        make("kalman", backbone="identity", gamma_log_every=-2)


def test_state_round_trip_continues_identically():
    kw = dict(backbone="identity", gamma_log_every=1, mc_samples=0)
    s, _ = make("kalman", **kw)
    for i in range(3):
        s.train_step(*batch(i))
    s.after_experience(None)
    st = s.extra_state()
    assert set(st) == {"gamma_log", "gamma_per_exp", "steps", "gamma_opt"} and st["steps"] == 3
    assert all(type(g) is float for g in st["gamma_log"]) and len(st["gamma_log"]) == 3
    assert st["gamma_opt"]["state"]  # Adam's moments of psi
    r, _ = make("kalman", **kw)
    r.model.load_state_dict(s.model.state_dict())
    r.load_extra_state(copy.deepcopy(st))
    assert r._steps == 3 and [float(g) for g in r._gamma_log] == st["gamma_log"]
    assert [float(g) for g in r._gamma_per_exp] == [float(g) for g in s._gamma_per_exp]
    x, y = batch(7)
    s.train_step(x, y)
    r.train_step(x, y)
    assert torch.equal(r.model.head.psi, s.model.head.psi) and torch.equal(r.model.head.M, s.model.head.M)
    assert r.extra_metrics() == s.extra_metrics()
    fixed, _ = make("kalman", backbone="identity", learn_gamma=False)
    assert "gamma_opt" not in fixed.extra_state() and "hyper" not in fixed.extra_state()
    fixed.load_extra_state({})
    assert (fixed._gamma_log, fixed._gamma_per_exp, fixed._steps) == ([], [], 0)
    learning, _ = make("kalman", backbone="identity")
    learning.load_extra_state({})  # a checkpoint without the gamma optimiser's state: nothing to load, no error
    assert learning.gamma_optimizer is not None and not learning.gamma_optimizer.state


def test_kalman_ft_state_holds_the_hyper_optimiser():
    s, _ = make("kalman-ft", hyper_optimizer="adam", mc_samples=0)
    for i in range(2):
        s.train_step(*batch(i))
    st = s.extra_state()
    assert "hyper" in st and st["hyper"]["state"]
    r, _ = make("kalman-ft", hyper_optimizer="adam", mc_samples=0)
    r.load_extra_state(copy.deepcopy(st))
    assert r.hyper_optimizer.state_dict()["state"][0]["exp_avg"].equal(st["hyper"]["state"][0]["exp_avg"])


@pytest.mark.parametrize("loss", ["gaussian", "mc"])
def test_kalman_ft_backbone_gradient_is_the_chosen_log_predictive_with_the_filter_fixed(loss):
    s, _ = make("kalman-ft", mc_samples=0, finetune_loss=loss, lr=0.1, optimizer="sgd", momentum=0.0,
                learn_gamma=False, learn_beta=False)
    assert s.optimizer is not s.hyper_optimizer
    assert {id(p) for g in s.optimizer.param_groups for p in g["params"]} == {id(p) for p in s.model.backbone.parameters()}
    s.train_step(*batch(0))
    x, y = batch(1)
    m = copy.deepcopy(s.model)
    h = m.head
    phi = h.phi(m.features(x).float())
    h.observe(y)
    if loss == "mc":
        mu, var = h.latent(phi, gamma=h.gamma.detach())
        obj = -h.class_log_probs(mu, var, beta=h.beta.detach()).gather(1, y[:, None]).mean()
    else:
        obj = -h.gaussian_log_predictive(phi, h.one_hot(y), gamma=h.gamma.detach()) / len(y)
    grads = torch.autograd.grad(obj, list(m.backbone.parameters()))
    s.train_step(x, y)
    for p, g in zip(s.model.backbone.parameters(), grads):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-5)
    # the filter update used the features computed before the backbone step
    ref = copy.deepcopy(m.head)
    ref.seen.copy_(s.model.head.seen)
    with torch.no_grad():
        ref.update(ref.phi(m.features(x).float()), ref.one_hot(y))
    assert torch.allclose(s.model.head.M, ref.M, atol=1e-10)
