"""Tests written from the mutation run of strategies/linear_probe.py (issue 19): the defaults, the
normalised-and-scaled features, the current experience's class mask (L2P's train_mask) in the loss against
the plain CE over the seen classes, the augmentation, and the optimiser reset per experience."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.streams import Experience
from strategies.linear_probe import LinearProbe, LinearProbeConfig, _Normalize

from test_strategies_er_family import make


def _exp(classes):
    x = torch.randn(len(classes), 16)
    y = torch.tensor(classes)
    return Experience(x, y, x, y, sorted(set(classes)), 0, 0)


def test_defaults():
    c = LinearProbeConfig()
    assert (c.lr, c.momentum, c.normalize, c.scale, c.class_mask, c.reset_optimizer) == (0.05, 0.9, True, 10.0, False, False)
    assert LinearProbe.frozen_features is True and LinearProbe.transient_attrs == ("current",)


class _Fixed(nn.Module):
    out_dim = 2

    def forward(self, x):
        return x[:, :2].double()


def test_features_are_l2_normalised_then_scaled():
    n = _Normalize(_Fixed(), 10.0)
    assert n.out_dim == 2 and n.scale == 10.0
    out = n(torch.tensor([[3.0, 4.0, 7.0], [0.0, -2.0, 1.0]]))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[6.0, 8.0], [0.0, -10.0]]))
    s, _ = make("linear-probe", backbone="identity", scale=2.0)
    assert isinstance(s.model.backbone, _Normalize) and s.model.backbone.scale == 2.0
    x = torch.randn(3, 16)
    assert torch.allclose(s.model.features(x), 2 * F.normalize(x, dim=-1))
    s, _ = make("linear-probe", backbone="identity", normalize=False)
    assert not isinstance(s.model.backbone, _Normalize)
    assert torch.equal(s.model.features(x), x)


def test_the_current_experiences_classes_and_the_optimiser_reset():
    s, _ = make("linear-probe", backbone="identity")
    assert s.current.dtype == torch.bool and s.current.shape == (10,) and not s.current.any()
    opt = s.optimizer
    s.before_experience(_exp([2, 5, 5]))
    assert s.current.tolist() == [c in (2, 5) for c in range(10)]
    s.before_experience(_exp([1]))
    assert s.current.tolist() == [c == 1 for c in range(10)]  # the previous experience's classes cleared
    assert s.optimizer is opt
    r, _ = make("linear-probe", backbone="identity", reset_optimizer=True, optimizer="adam", lr=0.01)
    e = _exp([0, 1])
    r.before_experience(e)
    r.train_step(e.train_x, e.train_y)
    opt = r.optimizer
    assert opt.state
    r.before_experience(_exp([2, 3]))
    assert r.optimizer is not opt and not r.optimizer.state


def test_class_mask_restricts_the_ce_to_the_current_experience():
    torch.manual_seed(0)
    for mask in (False, True):
        s, _ = make("linear-probe", backbone="identity", class_mask=mask)
        s.model.observe(torch.tensor([0, 1, 2, 3]))  # classes 0, 1 seen earlier
        s.before_experience(_exp([2, 3]))
        x, y = torch.randn(4, 16), torch.tensor([2, 3, 3, 2])
        raw = s.model.head.raw(s.model.features(x)).float()
        keep = torch.tensor([False, False, True, True] + [False] * 6) if mask else torch.tensor([True] * 4 + [False] * 6)
        expect = F.cross_entropy(raw.masked_fill(~keep, float("-inf")), y)
        assert torch.allclose(s.loss(x, y), expect, atol=1e-6), mask
        s.augment = lambda v: -v  # the augmented batch is the one scored
        expect = F.cross_entropy(s.model.head.raw(s.model.features(-x)).float().masked_fill(~keep, float("-inf")), y)
        assert torch.allclose(s.loss(x, y), expect, atol=1e-6), mask
