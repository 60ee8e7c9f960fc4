"""Closed-form pieces for classifiers on (frozen) features: RanPAC, FeCAM, SLCA (and SSIAT-style alignment).

* Random projection + ridge (RanPAC, McDonnell et al. 2023; code RanPAC/RanPAC ``RanPAC.py``):
  :func:`random_projection` (W_rand, d x M, N(0, 1) entries), :func:`ridge_solve`
  (W = (G + lambda I)^-1 Q through a Cholesky factorisation) and :func:`select_ridge` (lambda from a grid by
  the MSE on a held-out 20 % of the current task's features, as the official ``optimise_ridge_parameter``).
  The grid search solves the small n x n dual system (push-through identity
  (H^T H + l I)^-1 H^T = H^T (H H^T + l I)^-1) from one eigendecomposition instead of 17 M x M solves: the same
  weights, a fraction of the cost when n < M.
* Shrunk, normalised covariances and the Mahalanobis distance (FeCAM, Goswami et al. 2023; code
  dipamgoswami/FeCAM ``models/base.py``): :func:`shrink_cov`, :func:`correlation`, :func:`tukey`,
  :func:`mahalanobis`.
* Class-wise Gaussian statistics and sampling (SLCA, Zhang et al. 2023, code GengDavid/SLCA
  ``models/base.py``, ``models/slca.py``): :func:`class_gaussian` (mean, covariance + eps I) and
  :func:`sample_gaussian` (from a Cholesky factor).  SSIAT (``strategies/ssiat.py``) keeps its own inline
  version (diagonal option, per-session mean scaling); it is not a move-only refactor, so it stays there.

Everything here is plain tensor algebra (no state); callers keep the tensors they need.
"""
from __future__ import annotations

import torch


# -- random projection and ridge regression ---------------------------------------------------------
def random_projection(in_dim: int, m: int, seed: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """W_rand (in_dim x m) with N(0, 1) entries from a generator seeded with ``seed`` (RanPAC: torch.randn)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(in_dim, m, generator=g, dtype=dtype).to(device)


def project(h: torch.Tensor, w_rand: torch.Tensor | None, activation: str = "relu") -> torch.Tensor:
    """phi(h W_rand) (RanPAC's h); ``w_rand=None``: the features themselves (RanPAC with M = 0)."""
    if w_rand is None:
        return h.to(torch.float32) if not h.is_floating_point() else h
    z = h.to(w_rand.dtype) @ w_rand
    if activation == "relu":
        return torch.relu(z)
    if activation == "none":
        return z
    raise ValueError(f"unknown activation {activation!r}; valid: relu, none")


def ridge_solve(G: torch.Tensor, Q: torch.Tensor, lam: float) -> torch.Tensor:
    """(G + lam I)^-1 Q, G symmetric positive semi-definite (M x M), Q (M x C), lam > 0: Cholesky solve,
    falling back to a general solve if the factorisation fails in low precision."""
    A = G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(Q.to(A.dtype), L)
    return torch.linalg.solve(A, Q.to(A.dtype))


RIDGE_GRID = tuple(10.0 ** k for k in range(-8, 9))  # RanPAC: 10 ** np.arange(-8, 9)


def select_ridge(H: torch.Tensor, Y: torch.Tensor, grid=RIDGE_GRID, fit_fraction: float = 0.8) -> tuple[float, list]:
    """lambda of ``grid`` with the smallest MSE on the last (1 - fit_fraction) of the rows of (H, Y), the
    ridge fitted on the first rows (RanPAC's ``optimise_ridge_parameter``; shuffle the rows beforehand, the
    official loader does).  Returns (lambda, [mse per grid value]); ties go to the first (smallest) lambda."""
    n = int(H.shape[0] * fit_fraction)
    if n < 1 or n >= H.shape[0]:
        raise ValueError(f"select_ridge needs rows on both sides of the split, got {H.shape[0]} rows")
    H64, Y64 = H.double(), Y.double()
    Hf, Yf, Hv, Yv = H64[:n], Y64[:n], H64[n:], Y64[n:]
    losses = []
    if n < Hf.shape[1]:  # dual: W^T = Hf^T (Hf Hf^T + l I)^-1 Yf; Hv W^T = (Hv Hf^T) V diag(1/(e+l)) V^T Yf
        e, V = torch.linalg.eigh(Hf @ Hf.t())
        K, VtY = Hv @ Hf.t() @ V, V.t() @ Yf
        for lam in grid:
            pred = K @ (VtY / (e.clamp_min(0) + lam)[:, None])
            losses.append(float(((pred - Yv) ** 2).mean()))
    else:  # primal, one eigendecomposition of the M x M Gram matrix
        e, V = torch.linalg.eigh(Hf.t() @ Hf)
        HvV, VtQ = Hv @ V, V.t() @ (Hf.t() @ Yf)
        for lam in grid:
            pred = HvV @ (VtQ / (e.clamp_min(0) + lam)[:, None])
            losses.append(float(((pred - Yv) ** 2).mean()))
    best = min(range(len(grid)), key=lambda i: losses[i])
    return float(grid[best]), losses


# -- covariances and Mahalanobis distance (FeCAM) ------------------------------------------------------
def shrink_cov(cov: torch.Tensor, gamma1: float = 1.0, gamma2: float = 1.0) -> torch.Tensor:
    """FeCAM's shrinkage: cov + gamma1 * V1 * I + gamma2 * V2 * (1 - I), V1 the mean of the diagonal, V2 the
    mean of the non-zero off-diagonal entries."""
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    v1 = torch.diagonal(cov).mean()
    off = cov * (1 - eye)
    nz = off != 0
    v2 = off.sum() / nz.sum().clamp_min(1)
    return cov + gamma1 * v1 * eye + gamma2 * v2 * (1 - eye)


def correlation(cov: torch.Tensor) -> torch.Tensor:
    """cov / (sd sd^T), sd = sqrt(diag(cov)) (FeCAM's ``normalize_cov``).  A feature of zero variance is
    constant: its correlation is 0 with every other feature and 1 with itself (not 0 / 0)."""
    sd = torch.diagonal(cov).clamp_min(0).sqrt()
    const = sd == 0
    sd = torch.where(const, 1.0, sd)
    out = cov / (sd[:, None] * sd[None, :])
    out = out.masked_fill(const[:, None] | const[None, :], 0.0)
    return out + torch.diag(const.to(cov.dtype))


def tukey(x: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Tukey's ladder of powers: x ** beta (log x for beta = 0); defined for non-negative features."""
    return torch.log(x) if beta == 0 else torch.pow(x, beta)


def mahalanobis(x: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(x - mu) P (x - mu)^T per row: x (B, d), mu (d,), P (d, d) -> (B,)."""
    diff = x - mu
    return ((diff @ precision) * diff).sum(-1)


# -- class-wise Gaussians (SLCA / SSIAT classifier alignment) -----------------------------------------
def class_gaussian(f: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (unbiased, + eps I) of a class's features f (n, d), in float64 (SLCA's
    ``torch.cov(...) + eye * 1e-4``).  A single sample gives a covariance of eps I."""
    f = f.double()
    d = f.shape[1]
    eye = torch.eye(d, dtype=f.dtype, device=f.device)
    cov = torch.cov(f.t()) if len(f) > 1 else torch.zeros(d, d, dtype=f.dtype, device=f.device)
    return f.mean(0), cov.reshape(d, d) + eps * eye


def cholesky_factor(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of an SPD covariance (adds jitter until it factorises)."""
    jitter = 0.0
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            return L
        jitter = max(jitter * 10, 1e-6 * float(torch.diagonal(cov).mean().abs()) or 1e-6)
    raise ValueError("covariance is not positive definite even with jitter")


def sample_gaussian(mu: torch.Tensor, L: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples of N(mu, L L^T) (float32): mu + z L^T, z ~ N(0, I)."""
    z = torch.randn(n, mu.shape[0], generator=generator, device=mu.device if generator is None else "cpu")
    z = z.to(mu.device)
    return (mu.float() + z @ L.float().t())


# -- feature extraction ---------------------------------------------------------------------------------
@torch.no_grad()
def eval_features(model: torch.nn.Module, fn, x: torch.Tensor, batch_size: int = 256, preprocess=None) -> torch.Tensor:
    """``fn`` (e.g. ``model.backbone``) over ``x`` in batches, with ``model`` in eval mode (restored after);
    token-id inputs run by length, trimmed of padding (``cl.models.task_keys.by_length``)."""
    from cl.models.task_keys import batched, by_length

    was = model.training
    model.eval()
    try:
        return batched(lambda xb: by_length(fn, xb), x, batch_size, preprocess)
    finally:
        model.train(was)
