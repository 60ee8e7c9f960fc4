"""Tests written from the mutation run of strategies/gem.py (issue 19): GEM's defaults and the rule that the
gradient is projected only when some past constraint is violated (g . g_k < 0), with the memory gradients
fixed by hand so that g . g_k takes the boundary values."""
from __future__ import annotations

import pytest
import torch

import strategies.gem as gem_module
from cl.models.projection import flat_grad, gem_project, set_flat_grad
from strategies.gem import GEMConfig

from test_baselines_replay import build


def test_defaults_are_gems_memory_strength_and_quadprog_eps():
    c = GEMConfig()
    assert (c.margin, c.eps, c.lr) == (0.5, 1e-3, 0.03)


def _step_with(monkeypatch, dots):
    """GEM's before_optimizer_step with an incoming gradient g and memory gradients G (one row per past
    experience) chosen so that G @ g == dots; returns (g, G, the gradient left for the optimiser)."""
    s = build("gem", buffer_size=8, n_exp=3)
    params = s.params()
    n = sum(p.numel() for p in params)
    g = torch.zeros(n)
    g[0] = 1.0
    G = torch.zeros(len(dots), n)
    for k, d in enumerate(dots):
        G[k, 0] = d  # G[k] . g = d
        G[k, 1 + k] = 1.0  # and G's rows differ elsewhere (a well-posed dual)
    s.mem_x, s.mem_y = torch.randn(2 * len(dots), 3), torch.zeros(2 * len(dots), dtype=torch.long)
    s.mem_t = torch.arange(len(dots)).repeat_interleave(2)
    rows = iter(G)
    monkeypatch.setattr(gem_module, "grads_of", lambda loss, ps: next(rows))
    set_flat_grad(params, g.clone())
    s.before_optimizer_step(None, None)
    assert torch.allclose(G @ g, torch.tensor(dots))
    return g, G, flat_grad(params)


@pytest.mark.parametrize("dots", [[0.5, 2.0], [0.0, 1.0], [0.0, 0.0]])
def test_no_projection_when_no_constraint_is_violated(monkeypatch, dots):
    """g . g_k >= 0 for every k (0 included): the step keeps g as it is, though a projection with the
    margin would move it."""
    g, G, left = _step_with(monkeypatch, dots)
    assert torch.equal(left, g)
    assert not torch.allclose(gem_project(g, G, 0.5, 1e-3), g)  # so projecting would have shown


def test_a_violated_constraint_projects_with_the_configured_margin_and_eps(monkeypatch):
    g, G, left = _step_with(monkeypatch, [-1.0, 2.0])
    assert torch.allclose(left, gem_project(g, G, 0.5, 1e-3), atol=1e-6)
    assert not torch.allclose(left, gem_project(g, G, 0.0, 1e-3), atol=1e-4)
    assert (G @ left >= -2e-3).all()  # feasible up to the eps on the dual's diagonal
