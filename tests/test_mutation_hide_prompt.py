"""Tests written from the mutation run of strategies/hide_prompt.py (issue 19): defaults, validation bounds, the
TII MLP and the prompt ensemble by hand, the cluster statistics, the optimiser's groups, the loss and the clipping by
hand, what after_experience stores and aligns, and the alignment's samples, labels, steps and schedule.
Tiny ViTs (16 x 16 images, 4 patches)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from strategies import hide_prompt
from strategies.hide_prompt import HiDePromptConfig, MlpMapping, cluster_stats

from test_strategies2_mechanism import make_strategy
from tiny_prompt_models import SHAPE, scaled, scenario, vit


def strategy(depth=2, n_tasks=2, **kw):
    return make_strategy("hide-prompt", vit(depth), scenario(n_tasks), **kw)


def test_defaults_are_the_official_configs():
    c = HiDePromptConfig()
    assert c.lr == pytest.approx(0.0028125) and (c.optimizer, c.head_lr_scale, c.tii_lr) == ("adam", 0.1, 0.0005)
    assert (c.tii_hidden, c.length, c.layers, c.prompt_momentum, c.reg, c.temperature) == (2, 5, None, 0.01, 0.1, 0.8)
    assert (c.class_mask, c.n_centroids, c.ca_epochs, c.ca_lr, c.ca_batch, c.tii_ca_batch) == (True, 10, 30, 0.005, 120, 24)
    assert (c.clip_grad, c.readout, c.feature_batch) == (1.0, "auto", 128)
    s = make_strategy("hide-prompt", vit(depth=6), scenario())
    m = s.model
    assert m.layers == [0, 1, 2, 3, 4] and len(m.e) == 2 and m.e[0].shape == (5, 2, 5, 16)
    assert m.tii_mlp.fc1.weight.shape == (32, 16) and m.tii_mlp.fc2.weight.shape == (16, 32)
    assert m.task_of_class.tolist() == [-1, -1, -1, -1] and m.momentum == 0.01 and m.readout == "cls"
    assert s.task == -1 and s.inst_mean.shape == (4, 10, 16) and s.uninst_var.shape == (4, 10, 16)
    assert not s.inst_valid.any() and not s.uninst_valid.any() and s.inst_valid.shape == (4, 10)


def test_prompts_start_uniform_in_minus_one_one():
    e = torch.stack(list(strategy().model.e)).detach()
    assert float(e.min()) >= -1 and float(e.max()) <= 1 and float(e.min()) < -0.8 and float(e.max()) > 0.8


def test_validation_bounds():
    strategy(length=1, n_centroids=1, tii_hidden=1, ca_batch=1, tii_ca_batch=1, prompt_momentum=0.0)
    strategy(prompt_momentum=0.999)
    for f in ("length", "n_centroids", "tii_hidden", "ca_batch", "tii_ca_batch"):
        with pytest.raises(ConfigError, match=rf"hide-prompt {f}=0: valid values are >= 1"):
            strategy(**{f: 0})
    for bad in (1.0, -0.01):
        with pytest.raises(ConfigError, match=rf"hide-prompt prompt_momentum={bad}: valid range \[0, 1\)"):
            strategy(prompt_momentum=bad)


def test_tii_mlp_is_residual_gelu_mlp_then_layernorm():
    torch.manual_seed(1)
    mlp = MlpMapping(4, 3)
    assert mlp.fc1.weight.shape == (12, 4) and mlp.fc2.weight.shape == (4, 12)
    x = torch.randn(5, 4)
    h = x + mlp.fc2(0.5 * mlp.fc1(x) * (1 + torch.erf(mlp.fc1(x) / math.sqrt(2))))
    want = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(mlp(x), want, atol=1e-5)


def test_prompt_ensemble_while_training_by_hand():
    s = strategy(n_tasks=3, prompt_momentum=0.2)
    m = s.model
    e = [p.detach().clone() for p in m.e]
    assert torch.allclose(m.prompt(2, train=True), 0.8 * e[2] + 0.2 * (e[0] + e[1]) / 2, atol=1e-6)
    assert torch.allclose(m.prompt(1, train=True), 0.8 * e[1] + 0.2 * e[0], atol=1e-6)
    assert torch.equal(m.prompt(0, train=True), e[0]) and torch.equal(m.prompt(2), e[2])
    m.prompt(2, train=True).sum().backward()
    assert m.e[0].grad is None and m.e[1].grad is None  # earlier prompts detached
    assert torch.allclose(m.e[2].grad, torch.full_like(e[2], 0.8))
    m.momentum = 0.0
    assert torch.equal(m.prompt(2, train=True), e[2])


def test_instructed_features_use_the_tasks_prompt_at_every_layer():
    m = strategy().model.eval()
    x = torch.rand(2, *SHAPE) * 2 - 1
    with torch.no_grad():
        E = m.e[1].unsqueeze(0).expand(2, -1, -1, -1, -1)
        per = m.per_layer(E)
        assert sorted(per) == [0, 1] and torch.equal(per[1][0][0], m.e[1][1, 0]) and torch.equal(per[0][1][1], m.e[1][0, 1])
        assert torch.allclose(m.instructed(x, 1), m.features(x, per), atol=1e-6)
        assert not torch.allclose(m.instructed(x, 0), m.features(x, per), atol=1e-4)
        one = strategy(n_tasks=1).model.eval()  # a one-task stream: a single prompt
        assert torch.allclose(one.instructed(x, 0), one.features(x, one.per_layer(one.e[0].expand(2, -1, -1, -1, -1))),
                              atol=1e-6)


def test_cluster_stats_means_population_variances_and_valid_clusters():
    f = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 10.0], [10.0, 12.0]])
    means, var, valid = cluster_stats(f, 2, seed=0)
    order = means[:, 0].argsort()
    assert torch.allclose(means[order], torch.tensor([[0.0, 1.0], [10.0, 11.0]]))
    assert torch.allclose(var[order], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # population variance
    assert valid.tolist() == [True, True]
    f3 = torch.tensor([[0.0, 0.0], [0.0, 1.0], [20.0, 0.0], [20.0, 1.0], [0.0, 40.0], [1.0, 40.0]])
    means, var, valid = cluster_stats(f3, 3, seed=0)  # more clusters than feature dimensions: every one kept
    assert valid.tolist() == [True, True, True]
    order = means[:, 0].argsort()
    assert torch.allclose(means[order], torch.tensor([[0.0, 0.5], [0.5, 40.0], [20.0, 0.5]]))
    means, var, valid = cluster_stats(f[:2], 3, seed=0)  # fewer samples than clusters: one cluster per sample
    assert valid.tolist() == [True, True, False] and means.shape == (3, 2)
    assert sorted(means[:2, 1].tolist()) == [0.0, 2.0] and torch.equal(var, torch.zeros(3, 2))
    assert torch.equal(means[2], torch.zeros(2))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimiser_groups_prompt_head_and_tii_at_their_rates(name):
    s = strategy(optimizer=name, lr=0.2, head_lr_scale=0.5, tii_lr=0.03, weight_decay=0.01, momentum=0.7)
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    m = s.model
    exps = list(scenario())
    for t in (0, 1):
        s.before_experience(exps[t])
        opt = s.optimizer
        assert type(opt) is kind
        g = opt.param_groups
        assert [x["lr"] for x in g] == [0.2, 0.1, 0.03] and all(x["weight_decay"] == 0.01 for x in g)
        assert [id(p) for p in g[0]["params"]] == [id(m.e[t])]
        assert [id(p) for p in g[1]["params"]] == [id(p) for p in m.head.parameters()]
        assert [id(p) for p in g[2]["params"]] == [id(p) for p in [*m.tii_mlp.parameters(), *m.tii_head.parameters()]]
        if name == "sgd":
            assert all(x["momentum"] == 0.7 for x in g)
    s.cfg.optimizer = "rmsprop"
    with pytest.raises(ConfigError, match="rmsprop.*adam, adamw, sgd"):
        s.make_optimizer()


def test_the_first_optimiser_is_task_zeros():
    s = strategy()
    assert [id(p) for p in s.optimizer.param_groups[0]["params"]] == [id(s.model.e[0])]


@pytest.mark.parametrize("class_mask, reg", [(True, 0.3), (False, 0.3), (True, 0.0)])
def test_loss_is_wtp_ce_plus_tii_ce_plus_reg_times_the_contrastive_term(class_mask, reg):
    s = strategy(class_mask=class_mask, reg=reg, prompt_momentum=0.25, temperature=0.5)
    m = s.model
    exps = list(scenario())
    s.before_experience(exps[0])
    s.before_experience(exps[1])
    assert m.task_of_class.tolist() == [0, 0, 1, 1] and s.current.tolist() == [False, False, True, True]
    m.observe(torch.arange(4))
    with torch.no_grad():
        m.e[1].add_(0.5 * torch.randn_like(m.e[1]))  # e_1 no longer the copy of e_0: the ensemble differs from e_1
    s.inst_mean[0, 0] = torch.ones(16)
    s.inst_valid[0, 0] = True
    x, y = scaled(exps[1])[:4], exps[1].train_y[:4]
    m.eval()
    with torch.no_grad():
        f = m.features(x, m.per_layer(m.prompt(1, train=True).unsqueeze(0).expand(4, -1, -1, -1, -1)))
        logits, tii = m.head(f), m.tii_head(m.tii_mlp(m.query(x)))
        if class_mask:
            logits, tii = logits.clone(), tii.clone()
            logits[:, :2] = tii[:, :2] = float("-inf")
        M = torch.cat([torch.ones(1, 16), f])
        con = F.cross_entropy(M @ M.t() / 0.5, torch.arange(5))
        want = F.cross_entropy(logits, y) + F.cross_entropy(tii, y) + reg * con
        assert float(s.loss(x, y)) == pytest.approx(float(want), rel=1e-5)


def test_both_gradient_groups_are_clipped_to_clip_grad_apart():
    exp = list(scenario())[0]
    for clip in (0.001, 0.0):
        s = strategy(clip_grad=clip)
        s.before_experience(exp)
        m = s.model
        x, y = scaled(exp), exp.train_y
        m.observe(y)
        s.loss(x, y).backward()
        groups = [[m.e[0], *m.head.parameters()], [*m.tii_mlp.parameters(), *m.tii_head.parameters()]]
        before = [torch.cat([p.grad.flatten() for p in g]) for g in groups]
        assert all(float(b.norm()) > 10 * clip + 1e-3 for b in before), [float(b.norm()) for b in before]
        s.before_optimizer_step(x, y)
        for g, b in zip(groups, before):
            after = torch.cat([p.grad.flatten() for p in g])
            if clip:
                assert float(after.norm()) == pytest.approx(clip, rel=1e-4)
                assert torch.allclose(after, b * (clip / b.norm()), atol=1e-9)
            else:
                assert torch.equal(after, b)


def test_after_experience_stores_each_class_statistics_and_aligns_after_the_first_task(monkeypatch):
    s = strategy(n_centroids=8, ca_epochs=1, ca_batch=3, tii_ca_batch=2, feature_batch=5)
    m = s.model
    calls = []
    monkeypatch.setattr(s, "align", lambda fn, params, mean, var, valid, seen, per, steps, g: calls.append(
        (fn, [id(p) for p in params], mean, valid, seen.tolist(), per, steps)))
    exps = list(scenario())
    for t, exp in enumerate(exps):
        s.before_experience(exp)
        m.observe(exp.train_y)
        m.train()
        s.after_experience(exp)
        assert m.training  # the features were taken in eval mode, and the mode is restored
        assert not s.inst_mean.requires_grad and not s.uninst_mean.requires_grad  # no autograd graph kept
        m.eval()
        with torch.no_grad():
            for c in exp.classes:  # 6 samples a class, 8 clusters: every sample is its own cluster
                sel = exp.train_y == c
                for stored, valid, want in ((s.inst_mean, s.inst_valid, m.instructed(scaled(exp)[sel], t)),
                                            (s.uninst_mean, s.uninst_valid, m.query(scaled(exp)[sel]))):
                    assert valid[c].sum() == 6
                    got = stored[c][valid[c]]
                    assert torch.allclose(got[got[:, 0].argsort()], want[want[:, 0].argsort()], atol=1e-5)
                assert torch.equal(s.inst_var[c], torch.zeros(8, 16))
        assert len(calls) == (0 if t == 0 else 2)
    (f1, p1, mean1, valid1, seen1, per1, n1), (f2, p2, mean2, valid2, seen2, per2, n2) = calls
    assert f1 is m.head and p1 == [id(p) for p in m.head.parameters()] and mean1 is s.inst_mean and valid1 is s.inst_valid
    assert p2 == [id(p) for p in [*m.tii_mlp.parameters(), *m.tii_head.parameters()]] and mean2 is s.uninst_mean
    assert valid2 is s.uninst_valid
    x = torch.randn(3, 16)
    assert torch.equal(f2(x), m.tii_head(m.tii_mlp(x)))
    assert seen1 == seen2 == [True] * 4 and (per1, per2) == (3, 2) and n1 == n2 == 2  # steps: classes of earlier tasks
    calls.clear()
    s.cfg.ca_epochs = 0
    s.after_experience(exps[1])
    assert calls == []


def test_align_samples_the_clusters_with_their_labels_and_follows_a_cosine_schedule(monkeypatch):
    s = strategy(ca_epochs=4, ca_lr=0.2)
    head = torch.nn.Linear(2, 3)
    mean = torch.zeros(3, 2, 2)
    var = torch.zeros(3, 2, 2)
    valid = torch.zeros(3, 2, dtype=torch.bool)
    mean[0, 0], mean[0, 1], mean[1, 0], mean[2, 0] = torch.tensor([10.0, 0]), torch.tensor([0, 10.0]), \
        torch.tensor([-10.0, 0]), torch.tensor([0, -10.0])
    var[1, 0] = torch.tensor([4.0, 0.0])
    valid[0, 0] = valid[0, 1] = valid[1, 0] = valid[2, 0] = True
    seen = torch.tensor([True, True, False])  # class 2 is not seen: its cluster is left out
    made, seen_ce = [], []
    real_sgd, real_ce = torch.optim.SGD, F.cross_entropy

    def sgd(params, **kw):
        made.append(real_sgd(params, **kw))
        made.append(kw)
        return made[0]

    def ce(logits, y, *a, **k):
        seen_ce.append((logits.detach().clone(), y.clone(), made[0].param_groups[0]["lr"]))
        return real_ce(logits, y, *a, **k)

    monkeypatch.setattr(torch.optim, "SGD", sgd)
    monkeypatch.setattr(hide_prompt.F, "cross_entropy", ce)
    inputs = []
    fn = lambda h: (inputs.append(h.detach().clone()), head(h))[1]
    s.model.eval()
    s.align(fn, list(head.parameters()), mean, var, valid, seen, 200, 2, torch.Generator().manual_seed(0))
    assert not s.model.training
    assert made[1] == {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4}
    assert len(inputs) == 4 * 2 and all(len(h) == 200 for h in inputs)  # 2 steps of 200 a epoch (of 600 samples)
    lrs = [lr for _, _, lr in seen_ce]
    want = [0.1 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]  # cosine over ca_epochs, stepped per epoch
    assert lrs == pytest.approx([w for w in want for _ in range(2)])
    assert made[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    X, Y = torch.cat(inputs), torch.cat([y for _, y, _ in seen_ce])
    assert set(Y.tolist()) <= {0, 1}
    centres = torch.stack([mean[0, 0], mean[0, 1], mean[1, 0]])
    near = torch.cdist(X, centres).argmin(1)
    assert torch.equal(Y, torch.tensor([0, 0, 1])[near])  # each sample has its cluster's class
    assert all(bool(torch.isinf(lg[:, 2]).all()) and bool(torch.isfinite(lg[:, :2]).all()) for lg, _, _ in seen_ce)
    for k in range(3):
        d = X[near == k] - centres[k]
        sd = d.std(0)
        if k == 2:  # variance (4, 0) + 1e-4: sd (2, 0.01)
            assert sd[0] == pytest.approx(2.0, rel=0.15) and sd[1] == pytest.approx(0.01, rel=0.15)
        else:
            assert sd == pytest.approx(torch.full((2,), 0.01), rel=0.15)
    inputs.clear()
    made.clear()
    s.model.train()
    s.align(fn, list(head.parameters()), mean, var, valid, seen, 100, 50, torch.Generator().manual_seed(0))
    assert s.model.training and len(inputs) == 4 * 3  # at most ceil(300 / 100) steps a epoch


def test_each_task_prompt_starts_from_the_previous_one_and_the_first_as_drawn():
    s = strategy(n_tasks=3)
    m = s.model
    e = [p.detach().clone() for p in m.e]
    exps = list(scenario(3))
    s.before_experience(exps[0])
    assert torch.equal(m.e[0], e[0]) and m.task_of_class.tolist() == [0, 0, -1, -1, -1, -1]
    s.before_experience(exps[1])
    assert torch.equal(m.e[1], e[0]) and torch.equal(m.e[2], e[2])
    with torch.no_grad():
        m.e[1].add_(1.0)
    s.before_experience(exps[2])
    assert torch.equal(m.e[2], e[0] + 1.0) and m.task_of_class.tolist() == [0, 0, 1, 1, 2, 2]
