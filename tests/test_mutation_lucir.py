"""Tests written from the mutation run of strategies/lucir.py (issue 19): the defaults, the cosine head (its
initial weights, sigma, the mask), the per-class memory (fixed or a total budget), the adaptive lambda, the loss
terms at other settings (K hardest new classes, the margin's hinge, lambda_mr, the average over (sample, k)
pairs), the frozen old weights, NME classification and the state a checkpoint restores."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from strategies.lucir import LUCIR, LUCIRConfig, ScaledCosineHead

from test_baselines_reg import exp_of, make_lucir

pytestmark = pytest.mark.usefixtures("restore_registry")


def test_lucir_defaults_are_the_papers():
    c = LUCIRConfig()
    assert (c.lambda_base, c.margin, c.k_mr, c.lambda_mr, c.sigma_init) == (5.0, 0.5, 2, 1.0, 1.0)
    assert (c.exemplars_per_class, c.buffer_size, c.momentum, c.weight_decay, c.nme) == (20, 0, 0.9, 5e-4, False)


def test_scaled_cosine_head_init_is_kaiming_uniform_bound_one_over_sqrt_fan_in_and_masks_unseen():
    torch.manual_seed(0)
    head = ScaledCosineHead(4, 500, sigma=3.0)
    w = head.weight.detach()
    assert w.abs().max() <= 0.5 and w.abs().max() > 0.495  # bound gain(a=sqrt 5) * sqrt(3 / 4) = 1 / sqrt(4)
    assert head.sigma.item() == 3.0 and head.sigma.requires_grad
    assert ScaledCosineHead(4, 3).sigma.item() == 1.0  # the authors' CosineLinear starts at sigma = 1
    head.observe(torch.tensor([1, 3]))
    h = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    cos = F.normalize(h, dim=1) @ F.normalize(w[[1, 3]], dim=1).t()
    out = head(h)
    assert torch.isinf(out[0, 0]) and out[0, 0] < 0 and torch.isinf(out[0, 2])
    assert torch.allclose(out[0, [1, 3]], 3.0 * cos[0], atol=1e-5)
    assert torch.allclose(head.cosine(h)[0, [1, 3]], cos[0], atol=1e-5)


def test_lucir_build_model_uses_sigma_init():
    bb = nn.Linear(2, 3)
    bb.out_dim = 3
    sc = SimpleNamespace(n_classes=4, preprocess_fn=lambda dev: (lambda x: x.float()))
    model = LUCIR.build_model(LUCIRConfig(sigma_init=2.5), bb, sc)
    assert model.head.sigma.item() == 2.5 and model.head.weight.shape == (4, 3)
    assert LUCIR.build_model(LUCIRConfig(), bb, sc).head.sigma.item() == 1.0


def _fresh(**cfg):
    torch.manual_seed(0)
    bb = nn.Linear(2, 3)
    bb.out_dim = 3
    sc = SimpleNamespace(n_classes=6, preprocess_fn=lambda dev: (lambda x: x.float()))
    c = LUCIRConfig(momentum=0.0, weight_decay=0.0, lr=0.1, **cfg)
    s = LUCIR(c, LUCIR.build_model(c, bb, sc), RunInfo(6, (2,), torch.device("cpu"), 0))
    s.setup()
    return s


def test_lucir_per_class_is_fixed_or_a_total_budget_over_the_seen_classes():
    assert _fresh().per_class(3) == 20 and _fresh(exemplars_per_class=7).per_class(5) == 7
    s = _fresh(buffer_size=10)
    assert (s.per_class(3), s.per_class(1), s.per_class(0)) == (3, 10, 10)
    assert _fresh(buffer_size=1).per_class(1) == 1  # a budget of 1 is a budget (not the fixed count)


def test_lucir_memory_follows_the_budget_and_classifies_by_nme_when_asked():
    for nme in (False, True):
        s = _fresh(buffer_size=3, nme=nme)
        x0 = torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, 0.4], [-0.2, 1.1], [0.5, 0.5]])
        e0 = exp_of(x0, torch.zeros(5, dtype=torch.long))
        s.model.observe(e0.train_y)
        s.before_experience(e0)
        q = torch.tensor([[0.3, -0.8], [1.0, 1.0]])
        assert torch.equal(s.predict(q), s.model(q))  # no means before the first boundary: the cosine classifier
        s.after_experience(e0)
        assert len(s.memory) == 3  # one class seen: all K
        if nme:
            from cl.models.herding import class_means, nme_logits

            means = class_means(s.model.features(s.memory.x), s.memory.y, 6)
            assert torch.equal(s.means.nan_to_num(), means.nan_to_num())
            assert torch.equal(s.predict(q), nme_logits(s.model.features(q), s.means))
        else:
            assert s.means is None and torch.equal(s.predict(q), s.model(q))
        x1 = torch.tensor([[-1.0, -0.3], [0.5, -1.0], [-0.8, -0.1]])
        e1 = exp_of(x1, torch.tensor([1, 1, 1]), index=1)
        s.before_experience(e1)
        s.model.observe(e1.train_y)
        tx, ty = s.train_data(e1)
        assert torch.equal(tx, torch.cat([x1, s.memory.x])) and torch.equal(ty, torch.cat([e1.train_y, s.memory.y]))
        s.after_experience(e1)
        assert sorted(s.memory.y.tolist()) == [0, 1]  # 3 // 2 = 1 per class


def test_lucir_lambda_adapts_to_old_over_new_classes_and_imprints_only_present_new_classes():
    s = _fresh(lambda_base=3.0)
    x0 = torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, 0.4], [-0.2, 1.1], [0.4, 0.4], [1.0, -1.0]])
    e0 = exp_of(x0, torch.tensor([0, 1, 2, 0, 1, 2]))
    s.model.observe(e0.train_y)
    s.before_experience(e0)
    assert s.lam == 0.0  # no old class: no less-forget term
    tx, ty = s.train_data(e0)
    assert torch.equal(tx, x0)
    s.after_experience(e0)
    w = s.model.head.weight.detach().clone()
    x1 = torch.tensor([[-1.0, -0.3], [0.5, -1.0]])
    e1 = exp_of(x1, torch.tensor([3, 4]), classes=[3, 4], index=1)
    s.before_experience(e1)
    assert s.lam == pytest.approx(3.0 * math.sqrt(3 / 2))
    assert s._new_idx.tolist() == [3, 4]
    assert torch.equal(s.model.head.weight.detach()[5], w[5])  # not a class of this experience: left as it was
    s.before_experience(exp_of(x1, torch.tensor([3, 4]), classes=[3, 4, 5], index=1))  # class 5 has no sample
    assert s.lam == pytest.approx(3.0 * math.sqrt(3 / 3))
    assert torch.equal(s.model.head.weight.detach()[5], w[5])  # nothing to imprint it from: left as it was
    f = F.normalize(s.model.features(x1[1:]), dim=1)
    assert torch.allclose(s.model.head.weight.detach()[4], F.normalize(f.mean(0), dim=0) * w[:3].norm(dim=1).mean(),
                          atol=1e-6)


def test_lucir_margin_ranking_takes_the_k_hardest_new_classes_with_its_weight_and_hinge():
    s, x1, _, _ = make_lucir(margin=0.3, k_mr=5, lambda_mr=2.0, lambda_base=0.0)  # k = min(5, 2 new) = 2
    x = torch.cat([x1, torch.tensor([[1.0, 0.3], [0.0, 1.0], [0.7, 0.7]])])
    y = torch.tensor([2, 3, 2, 3, 0, 1, 0])
    cos = F.normalize(s.model.features(x), dim=1) @ F.normalize(s.model.head.weight, dim=1).t()
    terms = [max(0.0, 0.3 - cos[i, y[i]].item() + cos[i, c].item()) for i in (4, 5, 6) for c in (2, 3)]
    want = F.cross_entropy(s.model(x), y).item() + 2.0 * sum(terms) / 6
    assert sum(terms) > 0 and min(terms) == 0.0  # some pairs are past the margin: the hinge acts
    assert s.loss(x, y).item() == pytest.approx(want, rel=1e-5)
    # one old sample, k = 2: the mean over its 2 pairs
    xo, yo = x[4:5], y[4:5]
    want1 = F.cross_entropy(s.model(xo), yo).item() + 2.0 * sum(terms[:2]) / 2
    assert s.loss(xo, yo).item() == pytest.approx(want1, rel=1e-5)
    s1, x1, _, _ = make_lucir(margin=1.5, k_mr=1, lambda_base=0.0)  # one old sample, k = 1: divided by 1
    xo = torch.tensor([[1.0, 0.3]])
    cos1 = F.normalize(s1.model.features(xo), dim=1) @ F.normalize(s1.model.head.weight, dim=1).t()
    term = max(0.0, 1.5 - cos1[0, 0].item() + cos1[0, 2:].max().item())
    assert term > 0
    want = F.cross_entropy(s1.model(xo), torch.tensor([0])).item() + term
    assert s1.loss(xo, torch.tensor([0])).item() == pytest.approx(want, rel=1e-5)


def test_lucir_loss_without_old_samples_is_finite_and_with_no_new_class_is_ce():
    s, x1, e1, _ = make_lucir(lambda_base=0.0)
    y = e1.train_y
    assert s.loss(x1, y).item() == pytest.approx(F.cross_entropy(s.model(x1), y).item(), abs=1e-6)
    lam = s.lam
    w = s.model.head.weight.detach().clone()
    s.before_experience(exp_of(x1, torch.tensor([0, 1, 0, 1]), index=2))  # old classes only: nothing new
    assert s._new_idx.numel() == 0 and s.lam == lam and torch.equal(s.model.head.weight.detach(), w)
    with torch.no_grad():
        s.model.backbone.weight.add_(0.3)
    x, yo = torch.tensor([[1.0, 0.3], [0.0, 1.0]]), torch.tensor([0, 1])
    assert s.loss(x, yo).item() == pytest.approx(F.cross_entropy(s.model(x), yo).item(), abs=1e-6)


def test_lucir_first_experience_loss_is_ce_of_sigma_cosine():
    s = _fresh(sigma_init=2.0)
    x0 = torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, 0.4]])
    e0 = exp_of(x0, torch.tensor([0, 1, 0]))
    s.model.observe(e0.train_y)
    s.before_experience(e0)
    cos = F.normalize(s.model.features(x0), dim=1) @ F.normalize(s.model.head.weight[:2], dim=1).t()
    want = F.cross_entropy(2.0 * cos, e0.train_y)
    assert s.loss(x0, e0.train_y).item() == pytest.approx(want.item(), rel=1e-5)
    w = s.model.head.weight.detach().clone()
    s.train_step(x0, e0.train_y)
    assert not torch.equal(s.model.head.weight.detach()[:2], w[:2])  # no old class: nothing frozen


def test_lucir_old_rows_are_frozen_at_the_first_step_of_the_experience():
    s, x1, e1, w_old = make_lucir()
    x = torch.cat([x1, torch.tensor([[1.0, 0.3], [0.0, 1.0]])])
    y = torch.tensor([2, 3, 2, 3, 0, 1])
    s.train_step(x, y)
    s.train_step(x, y)  # a second step restores the rows of the first, not its own start
    assert torch.equal(s.model.head.weight.detach()[:2], w_old)
    s.after_experience(e1)
    assert s._frozen_rows is None


def test_lucir_state_restores_lambda_memory_and_means():
    s, x1, e1, _ = make_lucir(nme=True)
    s.after_experience(e1)
    st = s.extra_state()
    t, *_ = make_lucir(nme=True)
    t.load_extra_state(st)
    assert t.lam == s.lam and t.lam > 0
    assert torch.equal(t.means.nan_to_num(), s.means.nan_to_num())
    assert torch.equal(t.memory.x, s.memory.x)
    u, *_ = make_lucir()
    st0 = u.extra_state()
    assert st0["means"] is None
    u.means = torch.zeros(4, 3)
    u.load_extra_state(st0)
    assert u.means is None


def test_lucir_validation_bounds():
    _fresh(buffer_size=0, exemplars_per_class=1, k_mr=1)  # the bounds themselves are valid
    for bad in ({"buffer_size": -1}, {"exemplars_per_class": 0}, {"k_mr": 0}, {"k_mr": -2}):
        want = {"buffer_size": 0, "exemplars_per_class": 20, "k_mr": 2, **bad}
        with pytest.raises(ConfigError, match=rf"lucir: buffer_size must be >= 0 .*got buffer_size={want['buffer_size']}, "
                                              rf"exemplars_per_class={want['exemplars_per_class']}, k_mr={want['k_mr']}"):
            _fresh(**bad)
