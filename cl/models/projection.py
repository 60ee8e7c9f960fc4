"""Gradient projection for replay constraints (A-GEM, GEM) and flat-gradient helpers.

* :func:`agem_project` -- A-GEM (Chaudhry et al., ICLR 2019): if ``g . g_ref < 0`` return
  ``g - (g . g_ref / g_ref . g_ref) g_ref`` (then ``g~ . g_ref = 0``), else ``g`` unchanged. No host
  synchronisation: the coefficient is ``min(g . g_ref, 0) / g_ref . g_ref``, exactly 0 when no projection.
* :func:`gem_project` -- GEM (Lopez-Paz & Ranzato, NeurIPS 2017): the gradient closest to ``g`` in L2
  with ``G g~ >= 0`` for every row ``g_k`` of ``G`` (one per past task), through the dual
  ``min_v 1/2 v^T (G G^T + eps I) v + (G g)^T v`` s.t. ``v >= margin``, ``g~ = g + G^T v``.
  GEM's code (and mammoth's ``project2cone2``) passes the same dual to quadprog, with ``margin`` =
  memory strength 0.5 and ``eps`` = 1e-3. Solver: quadprog is not installed, so the dual (t variables,
  t = number of past tasks) is rewritten as a non-negative least-squares problem: with ``v = margin + w``
  and ``P = G G^T + eps I = L L^T`` (Cholesky), the objective is ``1/2 ||L^T w + L^-1 (P margin + G g)||^2``
  + const, solved exactly (finite active-set method) by ``scipy.optimize.nnls``. In float64 on the host.
  With ``margin = 0`` and ``eps -> 0`` this is the exact Euclidean projection onto the cone; with
  ``margin > 0`` (GEM's "memory strength") every past task's gradient is added with weight at least
  ``margin``, satisfied constraints included; constraints then hold up to ``eps``.
"""
from __future__ import annotations

import numpy as np
import torch


def flat_grad(params) -> torch.Tensor:
    """All ``p.grad`` concatenated (zeros for parameters without a gradient)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def grads_of(loss: torch.Tensor, params) -> torch.Tensor:
    """The flat gradient of ``loss`` w.r.t. ``params``, without touching ``p.grad``."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params)])


@torch.no_grad()
def set_flat_grad(params, flat: torch.Tensor) -> None:
    i = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(flat[i:i + n].view_as(p))
        i += n


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    dot = torch.dot(g, g_ref)
    coef = dot.clamp(max=0) / torch.dot(g_ref, g_ref).clamp_min(1e-30)
    return g - coef * g_ref


def gem_project(g: torch.Tensor, G: torch.Tensor, margin: float = 0.5, eps: float = 1e-3) -> torch.Tensor:
    """``g`` (p,), ``G`` (t, p): GEM's projected gradient (see the module docstring)."""
    from scipy.linalg import cholesky, solve_triangular
    from scipy.optimize import nnls

    Gn = G.detach().double().cpu().numpy()
    gn = g.detach().double().cpu().numpy()
    t = Gn.shape[0]
    P = Gn @ Gn.T
    P = 0.5 * (P + P.T) + eps * np.eye(t)
    m = np.full(t, float(margin))
    c = P @ m + Gn @ gn
    L = cholesky(P, lower=True)
    w, _ = nnls(L.T, -solve_triangular(L, c, lower=True))
    v = m + w
    return torch.from_numpy(gn + Gn.T @ v).to(g.device, g.dtype)
