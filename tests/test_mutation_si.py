"""Tests written from the mutation run of strategies/si.py (issue 19): the defaults, the path integral of a
step that moves against the task gradient, Omega's accumulation over two experiences with the damping xi,
the curvature the stiffness warning reports, and the state a checkpoint restores."""
from __future__ import annotations

import warnings

import pytest
import torch

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from strategies.si import SI, SIConfig

from test_baselines_reg import Quad


def test_defaults_are_mammoths_seq_cifar10_best_args():
    c = SIConfig()
    assert (c.si_c, c.xi) == (0.5, 1.0)


class _Lin(SI):
    """Task loss g . theta: a constant task gradient g."""
    g = torch.tensor([1.0, -2.0])

    def task_loss(self, x, y, t=None):
        return (self.g * self.model.theta).sum()


def _si(**cfg):
    s = _Lin(SIConfig(**{"lr": 0.1, **cfg}), Quad(), RunInfo(1, (1,), torch.device("cpu"), 0))
    s.setup()
    return s


def test_path_integral_is_minus_task_gradient_times_the_steps_change():
    s = _si()
    assert not s.has_penalty and all(torch.equal(v, torch.zeros(2)) for v in (s.omega["theta"], s.big_omega["theta"]))
    s.train_step(None, None)  # SGD: dtheta = -0.1 g, omega = -g * dtheta = 0.1 g^2
    assert torch.allclose(s.model.theta.detach(), torch.tensor([0.9, -1.8]))
    assert torch.allclose(s.omega["theta"], torch.tensor([0.1, 0.4]))
    assert not s.omega["theta"].requires_grad  # plain numbers, no autograd graph kept from step to step
    with torch.no_grad():  # a step the optimiser did not make away from the gradient: after_step reads the change
        s.record_step_start()
        s.model.theta.add_(torch.tensor([0.5, 0.5]))
        s.after_step(None, None)
    # omega -= g * (+0.5): [0.1 - 0.5, 0.4 + 1.0]
    assert torch.allclose(s.omega["theta"], torch.tensor([-0.4, 1.4]))


def test_big_omega_accumulates_over_experiences_with_damping_and_the_anchor_moves():
    s = _si(si_c=0.5, xi=0.5)
    th0 = s.model.theta.detach().clone()
    s.train_step(None, None)
    s.train_step(None, None)
    th1 = s.model.theta.detach().clone()  # th0 - 0.2 g
    om = torch.tensor([0.2, 0.8])  # two steps of 0.1 g^2
    assert torch.allclose(s.omega["theta"], om)
    s.after_experience(None)
    O1 = om / ((th1 - th0) ** 2 + 0.5)
    assert torch.allclose(s.big_omega["theta"], O1) and s.has_penalty
    assert not s.big_omega["theta"].requires_grad and not s.anchor["theta"].requires_grad
    assert torch.equal(s.anchor["theta"], th1) and torch.equal(s.omega["theta"], torch.zeros(2))
    assert s._g == {} and s._before == {}
    # second experience: one step by hand-set change, then the boundary adds the new ratio to O1
    with torch.no_grad():
        s.model.theta.grad = torch.zeros(2)  # task gradient = 0 - 2 c O1 (th - anchor) = 0 at the anchor
        s.record_step_start()
        assert torch.allclose(s._g["theta"], torch.zeros(2))
        s.model.theta.grad = None
    s.omega["theta"] = torch.tensor([0.3, -0.1])
    with torch.no_grad():
        s.model.theta.add_(torch.tensor([1.0, 2.0]))
    s.after_experience(None)
    O2 = O1 + torch.tensor([0.3, -0.1]) / (torch.tensor([1.0, 4.0]) + 0.5)
    assert torch.allclose(s.big_omega["theta"], O2)


def test_the_warning_reports_twice_c_times_the_largest_omega():
    s = _si(si_c=40.0, xi=0.1, lr=0.1)
    s.omega["theta"] = torch.tensor([3.0, 1.0])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s.after_experience(None)  # theta did not move: Omega = omega / xi = [30, 10]
    msg = [str(w.message) for w in rec if "si: lr * max penalty curvature" in str(w.message)]
    assert msg and "= 240 > 2" in msg[0]  # 0.1 * 2 * 40 * 30
    s = _si(si_c=1.0, xi=1.0, lr=0.1)
    s.omega["theta"] = torch.tensor([9.0, 1.0])  # 0.1 * 2 * 1 * 9 = 1.8: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.after_experience(None)


def test_extra_state_restores_omegas_anchor_and_the_penalty_flag():
    s = _si(si_c=2.0)
    s.train_step(None, None)
    s.after_experience(None)
    s.train_step(None, None)
    t = _si(si_c=2.0)
    t.model.load_state_dict(s.model.state_dict())
    t.load_extra_state(s.extra_state())
    assert t.has_penalty is True
    for k in ("omega", "big_omega", "anchor"):
        assert torch.equal(getattr(t, k)["theta"], getattr(s, k)["theta"]), k
    assert t.loss(None, None).item() == pytest.approx(s.loss(None, None).item())
    assert s.loss(None, None).item() != pytest.approx(s.task_loss(None, None).item())


def test_validation_bounds():
    _si(si_c=0.0, xi=1e-9)  # the bounds: c = 0 is valid, xi must be positive
    for bad in ({"si_c": -1e-6}, {"xi": 0.0}, {"xi": -1.0}, {"si_c": -1.0, "xi": 0.0}):
        with pytest.raises(ConfigError, match=r"si_c must be >= 0 and xi > 0, got .*" + str(list(bad.values())[-1])):
            _si(**bad)
