"""Tests written from the mutation run of strategies/rwalk.py (issue 19): the defaults, one step of the
running Fisher and of the normalised path score on hand-set values (a step against the task gradient gives a
negative score, which the boundary clips to 0), the average with the previous score, the penalty's weight
F* + s, the curvature the stiffness warning reports, and the state a checkpoint restores."""
from __future__ import annotations

import warnings

import pytest
import torch

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from strategies.rwalk import RWalk, RWalkConfig

from test_baselines_reg import Quad


def test_defaults():
    """lambda 1 and eps 0.1 (FACIL's default and damping), alpha 0.9 on the new batch estimate."""
    c = RWalkConfig()
    assert (c.rwalk_lambda, c.fisher_alpha, c.eps) == (1.0, 0.9, 0.1)


class _Lin(RWalk):
    g = torch.tensor([1.0, -2.0])

    def task_loss(self, x, y, t=None):
        return (self.g * self.model.theta).sum()


def _rw(**cfg):
    s = _Lin(RWalkConfig(**{"lr": 0.1, **cfg}), Quad(), RunInfo(1, (1,), torch.device("cpu"), 0))
    s.setup()
    return s


def test_one_step_of_the_running_fisher_and_the_normalised_path_score():
    s = _rw(fisher_alpha=0.75, eps=0.5)
    assert not s.has_penalty
    assert all(torch.equal(getattr(s, k)["theta"], torch.zeros(2)) for k in ("fisher", "path", "score", "fisher_star"))
    s.fisher["theta"] = torch.tensor([4.0, 8.0])
    s.train_step(None, None)  # g = [1, -2]: F = 0.75 g^2 + 0.25 F = [0.75 + 1, 3 + 2]; d = -0.1 g
    Fr = torch.tensor([1.75, 5.0])
    assert torch.allclose(s.fisher["theta"], Fr)
    d = torch.tensor([-0.1, 0.2])
    want = -torch.tensor([1.0, -2.0]) * d / (0.5 * Fr * d ** 2 + 0.5)
    assert torch.allclose(s.path["theta"], want)
    assert not s.path["theta"].requires_grad and not s.fisher["theta"].requires_grad  # no graph kept across steps
    # a change against the task gradient (set by hand after the step): a negative contribution
    with torch.no_grad():
        s.model.theta.grad = torch.tensor([1.0, -2.0])
        s.before_optimizer_step(None, None)
        Fr = 0.75 * torch.tensor([1.0, 4.0]) + 0.25 * Fr
        s.model.theta.add_(torch.tensor([0.4, 0.0]))
        s.after_step(None, None)
    d2 = torch.tensor([0.4, 0.0])
    want = want - torch.tensor([1.0, -2.0]) * d2 / (0.5 * Fr * d2 ** 2 + 0.5)
    assert torch.allclose(s.path["theta"], want)
    assert want[0] < 0 < want[1]


def test_the_boundary_clips_negative_scores_averages_with_the_last_and_sets_the_penalty_weight():
    s = _rw(rwalk_lambda=0.5)
    s.path["theta"] = torch.tensor([-1.0, 2.0])
    s.fisher["theta"] = torch.tensor([0.5, 0.25])
    with torch.no_grad():
        s.model.theta.add_(1.0)
    th1 = s.model.theta.detach().clone()
    s.after_experience(None)
    assert torch.equal(s.score["theta"], torch.tensor([0.0, 2.0])) and s.has_penalty  # clipped at 0, no average yet
    assert not any(getattr(s, k)["theta"].requires_grad for k in ("score", "fisher_star", "anchor"))
    assert torch.equal(s.fisher_star["theta"], torch.tensor([0.5, 0.25]))
    assert torch.equal(s.anchor["theta"], th1) and torch.equal(s.path["theta"], torch.zeros(2))
    assert s._g == {} and s._before == {}
    s.fisher["theta"].mul_(2)  # F* is a copy of the running Fisher, not the same tensor
    assert torch.equal(s.fisher_star["theta"], torch.tensor([0.5, 0.25]))
    assert torch.equal(s.penalty_weight()["theta"], torch.tensor([0.5, 2.25]))
    with torch.no_grad():
        s.model.theta.add_(torch.tensor([2.0, -1.0]))
    # task loss g . theta + 0.5 * ((0.5) 2^2 + (2.25) 1^2)
    want = (s.g * s.model.theta).sum().item() + 0.5 * (0.5 * 4 + 2.25)
    assert s.loss(None, None).item() == pytest.approx(want)
    s.path["theta"] = torch.tensor([3.0, -4.0])
    s.after_experience(None)
    assert torch.equal(s.score["theta"], torch.tensor([1.5, 1.0]))  # ([0, 2] + [3, 0]) / 2
    assert torch.equal(s.fisher_star["theta"], torch.tensor([1.0, 0.5]))


def test_the_warning_reports_twice_lambda_times_the_largest_penalty_weight():
    s = _rw(rwalk_lambda=4.0, lr=0.5)
    s.path["theta"] = torch.tensor([1.0, 0.5])
    s.fisher["theta"] = torch.tensor([0.25, 2.0])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s.after_experience(None)
    msg = [str(w.message) for w in rec if "rwalk: lr * max penalty curvature" in str(w.message)]
    assert msg and "= 10 > 2" in msg[0]  # 0.5 * 2 * 4 * max(1.25, 2.5)


def test_extra_state_restores_every_accumulator_and_the_penalty_flag():
    s = _rw(rwalk_lambda=1.0)
    s.train_step(None, None)
    s.after_experience(None)
    s.train_step(None, None)
    t = _rw(rwalk_lambda=1.0)
    t.model.load_state_dict(s.model.state_dict())
    t.load_extra_state(s.extra_state())
    assert t.has_penalty is True
    for k in ("fisher", "path", "score", "fisher_star", "anchor"):
        assert torch.equal(getattr(t, k)["theta"], getattr(s, k)["theta"]), k
    assert t.loss(None, None).item() == pytest.approx(s.loss(None, None).item())
    assert s.loss(None, None).item() != pytest.approx(s.task_loss(None, None).item())


def test_validation_bounds():
    for ok in ({"rwalk_lambda": 0.0, "fisher_alpha": 0.0, "eps": 1e-9}, {"fisher_alpha": 1.0}):
        _rw(**ok)  # the bounds themselves are valid (eps must be positive)
    for bad in ({"rwalk_lambda": -1e-6}, {"fisher_alpha": -0.01}, {"fisher_alpha": 1.01}, {"eps": 0.0},
                {"eps": -1.0}, {"rwalk_lambda": -1.0, "fisher_alpha": 2.0}):
        with pytest.raises(ConfigError, match=r"rwalk_lambda must be >= 0, fisher_alpha in \[0, 1\] and eps > 0, got .*"
                                              + str(list(bad.values())[-1])):
            _rw(**bad)
