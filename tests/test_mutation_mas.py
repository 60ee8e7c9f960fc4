"""Tests written from the mutation run of strategies/mas.py (issue 19): the defaults, the importance of one
sample and of none, importances summed over experiences with the anchor at the latest weights, the penalty's
weight lambda, the curvature the stiffness warning reports, and the state a checkpoint restores."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from strategies.mas import MASConfig, mas_importance

from test_baselines_reg import exp_of, make

pytestmark = pytest.mark.usefixtures("restore_registry")

XM = torch.tensor([[1.0, 0.5], [-1.0, -0.5], [0.2, -2.0]])


def hand_importance(W, b, x):
    """mean over samples of |d ||W x + b||^2 / d(W, b)| = |2 f x^T|, |2 f|."""
    gw, gb = torch.zeros_like(W), torch.zeros_like(b)
    for xi in x:
        f = W @ xi + b
        gw += (2 * torch.outer(f, xi)).abs()
        gb += (2 * f).abs()
    return gw / len(x), gb / len(x)


def _wb(s):
    return s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()


def test_defaults():
    """lambda 0.1 (the paper's 1 diverged here, see the docstring); 64 per-sample gradients at a time."""
    c = MASConfig()
    assert (c.mas_lambda, c.importance_chunk) == (0.1, 64)


def test_importance_of_one_sample_and_of_none():
    s = make("mas")
    W, b = _wb(s)
    one = mas_importance(s.model, XM[:1], s.preprocess)
    gw, gb = hand_importance(W, b, XM[:1])
    assert torch.allclose(one["head.fc.weight"], gw, atol=1e-5) and torch.allclose(one["head.fc.bias"], gb, atol=1e-5)
    none = mas_importance(s.model, XM[:0], s.preprocess)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in none.values())
    chunked = mas_importance(s.model, XM, s.preprocess, chunk=2)  # chunks of 2 and 1: the same mean
    assert torch.allclose(chunked["head.fc.weight"], hand_importance(W, b, XM)[0], atol=1e-5)


def test_importances_add_up_over_experiences_and_the_penalty_is_lambda_weighted():
    s = make("mas", mas_lambda=0.3)
    assert s.loss(XM, torch.tensor([0, 1, 2])).item() == pytest.approx(
        F.cross_entropy(s.model(XM), torch.tensor([0, 1, 2])).item())  # no importance yet: CE only
    W1, b1 = _wb(s)
    s.after_experience(exp_of(XM, torch.tensor([0, 1, 2])))
    i1 = hand_importance(W1, b1, XM)
    with torch.no_grad():
        s.model.head.fc.weight.mul_(-0.5)
        s.model.head.fc.bias.add_(0.2)
    W2, b2 = _wb(s)
    X2 = XM.flip(0) * 1.5
    s.after_experience(exp_of(X2, torch.tensor([2, 1, 0]), index=1))
    i2 = hand_importance(W2, b2, X2)
    assert torch.allclose(s.importance["head.fc.weight"], i1[0] + i2[0], atol=1e-5)
    assert torch.allclose(s.importance["head.fc.bias"], i1[1] + i2[1], atol=1e-5)
    assert torch.equal(s.anchor["head.fc.weight"], W2) and torch.equal(s.anchor["head.fc.bias"], b2)
    with torch.no_grad():
        s.model.head.fc.weight.add_(torch.tensor([[0.5, 0.0], [0.0, -1.0], [1.0, 0.5]]))
    dW = torch.tensor([[0.5, 0.0], [0.0, -1.0], [1.0, 0.5]])
    y = torch.tensor([0, 1, 2])
    want = F.cross_entropy(s.model(XM), y) + 0.3 * ((i1[0] + i2[0]) * dW ** 2).sum()
    assert s.loss(XM, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_the_warning_reports_twice_lambda_times_the_largest_importance():
    s = make("mas", mas_lambda=20.0, lr=0.2)
    W, b = _wb(s)
    gw, gb = hand_importance(W, b, XM)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s.after_experience(exp_of(XM, torch.tensor([0, 1, 2])))
    msg = [str(w.message) for w in rec if "mas: lr * max penalty curvature" in str(w.message)]
    want = 0.2 * 2 * 20.0 * max(gw.max().item(), gb.max().item())
    assert want > 2 and msg and f"= {want:.3g} > 2" in msg[0]


def test_extra_state_restores_importance_and_anchor():
    s = make("mas", mas_lambda=1.0)
    s.after_experience(exp_of(XM, torch.tensor([0, 1, 2])))
    with torch.no_grad():
        s.model.head.fc.bias.add_(0.5)
    t = make("mas", mas_lambda=1.0)
    t.model.load_state_dict(s.model.state_dict())
    t.load_extra_state(s.extra_state())
    for k in ("importance", "anchor"):
        for n in ("head.fc.weight", "head.fc.bias"):
            assert torch.equal(getattr(t, k)[n], getattr(s, k)[n]), (k, n)
    y = torch.tensor([0, 1, 2])
    assert t.loss(XM, y).item() == pytest.approx(s.loss(XM, y).item())
    assert s.loss(XM, y).item() > F.cross_entropy(s.model(XM), y).item() + 0.1


def test_importance_goes_64_samples_at_a_time_by_default():
    s = make("mas")
    sizes = []
    x = torch.randn(130, 2, generator=torch.Generator().manual_seed(0))
    imp = mas_importance(s.model, x, lambda v: sizes.append(len(v)) or v)
    assert sizes == [64, 64, 2]
    W, b = _wb(s)
    assert torch.allclose(imp["head.fc.bias"], hand_importance(W, b, x)[1], atol=1e-4)
    sizes.clear()
    s = make("mas", importance_chunk=50)
    s.preprocess = lambda v: sizes.append(len(v)) or v
    s.after_experience(exp_of(x, torch.arange(130) % 3))
    assert sizes == [50, 50, 30]  # the configured chunk


def test_validation_bounds():
    make("mas", mas_lambda=0.0, importance_chunk=1)  # the bounds themselves are valid
    for bad in ({"mas_lambda": -1e-6}, {"importance_chunk": 0}, {"mas_lambda": -1.0, "importance_chunk": 0}):
        with pytest.raises(ConfigError, match=r"mas_lambda must be >= 0 and importance_chunk >= 1, got .*"
                                              + str(list(bad.values())[-1])):
            make("mas", **bad)
