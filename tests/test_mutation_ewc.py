"""Tests written from the mutation run of strategies/ewc.py (issue 19): the defaults, the validation bounds,
the Fisher of a subset, of one sample and of none, the curvature the stiffness warning reports (the sum of
every term's Fisher offline, the running one online), and the state a checkpoint restores."""
from __future__ import annotations

import warnings

import pytest
import torch

from cl.core.registry import ConfigError
from strategies.ewc import EWC, EWCConfig, fisher_diag

from test_baselines_reg import X, Y, exp_of, hand_fisher, make

pytestmark = pytest.mark.usefixtures("restore_registry")


def test_defaults():
    """lambda 1e-3 (the docstring's bound for the CNN's empirical Fisher), offline EWC, Mammoth's gamma = 1,
    the Fisher over every sample, 64 per-sample gradients at a time."""
    c = EWCConfig()
    assert (c.ewc_lambda, c.online, c.gamma, c.fisher_samples, c.fisher_chunk) == (1e-3, False, 1.0, 0, 64)


def test_validation_bounds():
    for ok in ({"ewc_lambda": 0.0, "gamma": 0.0, "fisher_samples": 0, "fisher_chunk": 1},
               {"ewc_lambda": 5.0, "gamma": 1.0}, {"gamma": 0.5}):
        make("ewc", **ok)  # the bounds themselves are valid
    for bad in ({"ewc_lambda": -1e-6}, {"gamma": -0.01}, {"gamma": 1.01}, {"ewc_lambda": -1.0, "gamma": 2.0},
                {"fisher_samples": -1}, {"fisher_chunk": 0}):
        with pytest.raises(ConfigError, match=r"ewc_lambda must be >= 0, gamma in \[0, 1\], fisher_samples >= 0 and "
                                              r"fisher_chunk >= 1, got .*" + str(list(bad.values())[-1])):
            make("ewc", **bad)


def _fisher(s):
    return s.terms[-1]["fisher"]["head.fc.weight"], s.terms[-1]["fisher"]["head.fc.bias"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fisher_samples_takes_a_random_subset_and_all_samples_otherwise(k):
    s = make("ewc", fisher_samples=k)
    W0, b0 = s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    torch.manual_seed(3)
    idx = torch.randperm(4)[:k]
    torch.manual_seed(3)
    s.after_experience(exp_of(X, Y))
    fw, fb = hand_fisher(W0, b0, X[idx], Y[idx])
    assert torch.allclose(_fisher(s)[0], fw, atol=1e-6) and torch.allclose(_fisher(s)[1], fb, atol=1e-6)
    assert not torch.allclose(fw, hand_fisher(W0, b0, X, Y)[0], atol=1e-3)  # the subset's Fisher differs
    for n in (4, 5, 0):  # as many samples as the experience has, more, or 0: every sample, no draw
        s = make("ewc", fisher_samples=n)
        torch.manual_seed(7)
        s.after_experience(exp_of(X, Y))
        after = torch.rand(1)
        torch.manual_seed(7)
        assert torch.equal(after, torch.rand(1)), n  # the global generator was not drawn from
        fw, fb = hand_fisher(W0, b0, X, Y)
        assert torch.allclose(_fisher(s)[0], fw, atol=1e-6) and torch.allclose(_fisher(s)[1], fb, atol=1e-6)


def test_fisher_of_one_sample_and_of_none():
    s = make("ewc")
    W0, b0 = s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    one = fisher_diag(s.model, X[:1], Y[:1], s.preprocess, 64)
    fw, fb = hand_fisher(W0, b0, X[:1], Y[:1])
    assert torch.allclose(one["head.fc.weight"], fw, atol=1e-6) and torch.allclose(one["head.fc.bias"], fb, atol=1e-6)
    none = fisher_diag(s.model, X[:0], Y[:0], s.preprocess, 64)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in none.values())
    chunked = fisher_diag(s.model, X, Y, s.preprocess, 3)  # chunks of 3 and 1: the same mean
    assert torch.allclose(chunked["head.fc.weight"], hand_fisher(W0, b0, X, Y)[0], atol=1e-6)


def _warned_curvature(s, exp):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s.after_experience(exp)
    msgs = [str(w.message) for w in rec if "ewc: lr * max penalty curvature" in str(w.message)]
    return msgs[0] if msgs else None


@pytest.mark.parametrize("online", [False, True])
def test_the_warning_reports_lr_lambda_and_the_largest_total_fisher(online):
    lam, lr, gamma = 200.0, 0.5, 0.5
    s = make("ewc", ewc_lambda=lam, lr=lr, online=online, gamma=gamma)
    W1, b1 = s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    f1 = hand_fisher(W1, b1, X, Y)
    msg = _warned_curvature(s, exp_of(X, Y))
    want = lr * lam * max(f1[0].max().item(), f1[1].max().item())
    assert msg is not None and f"= {want:.3g} > 2" in msg
    with torch.no_grad():
        s.model.head.fc.weight.mul_(-1.5)
    W2 = s.model.head.fc.weight.detach().clone()
    X2, Y2 = X.flip(0), torch.tensor([1, 0, 0, 2])
    f2 = hand_fisher(W2, b1, X2, Y2)
    msg = _warned_curvature(s, exp_of(X2, Y2, index=1))
    k = gamma if online else 1.0  # online: the running gamma F1 + F2; offline: F1 + F2 over both terms
    want = lr * lam * max((k * f1[0] + f2[0]).max().item(), (k * f1[1] + f2[1]).max().item())
    assert msg is not None and f"= {want:.3g} > 2" in msg


@pytest.mark.parametrize("online", [False, True])
def test_extra_state_restores_every_term(online):
    s = make("ewc", ewc_lambda=2.0, online=online, gamma=0.5)
    s.after_experience(exp_of(X, Y))
    with torch.no_grad():
        s.model.head.fc.weight.add_(0.4)
    s.after_experience(exp_of(X.flip(0), Y, index=1))
    with torch.no_grad():
        s.model.head.fc.bias.add_(-0.3)
    want = s.penalty().item()
    assert want > 0
    t = make("ewc", ewc_lambda=2.0, online=online, gamma=0.5)
    t.model.load_state_dict(s.model.state_dict())
    t.load_extra_state(s.extra_state())
    assert len(t.terms) == len(s.terms) == (1 if online else 2)
    assert t.penalty().item() == pytest.approx(want, rel=1e-6)
    assert t.loss(X, Y).item() == pytest.approx(s.loss(X, Y).item(), rel=1e-6)
    empty = make("ewc")
    empty.load_extra_state({})
    assert empty.terms == [] and empty.loss(X, Y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(empty.model(X), Y).item())
    assert isinstance(s, EWC)


def test_fisher_diag_goes_64_samples_at_a_time_by_default():
    s = make("ewc")
    sizes = []
    x, y = torch.randn(130, 2, generator=torch.Generator().manual_seed(0)), torch.arange(130) % 3
    f = fisher_diag(s.model, x, y, lambda v: sizes.append(len(v)) or v)
    assert sizes == [64, 64, 2]
    W0, b0 = s.model.head.fc.weight.detach(), s.model.head.fc.bias.detach()
    assert torch.allclose(f["head.fc.weight"], hand_fisher(W0, b0, x, y)[0], atol=1e-6)
    sizes.clear()
    s = make("ewc", fisher_chunk=50)
    s.preprocess = lambda v: sizes.append(len(v)) or v
    s.after_experience(exp_of(x, y))
    assert sizes == [50, 50, 30]  # the configured chunk
