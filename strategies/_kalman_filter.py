"""Kalman-filter classification head (Titsias et al., ICLR 2024; methods.md section 3).

Model over the last-layer weights, one weight vector per class with the same
prior, drift and noise for every class::

    w_0 ~ N(0, sw2 I)
    w_n | w_{n-1} ~ N(gamma w_{n-1}, (1 - gamma^2) sw2 I)        (drift; marginal variance stays sw2)
    Y_n = Phi_n W_n + eps,  eps ~ N(0, s2 I)                        (one-hot targets, Gaussian surrogate)

Because the covariance recursion does not depend on the targets, all classes
share ONE covariance ``A`` (m x m) and the state is ``(M, A)`` with the mean
matrix ``M`` (m x K).  Per batch of B features:

    predict:  M- = gamma M,   A- = gamma^2 A + (1 - gamma^2) sw2 I
    update:   S = Phi A- Phi^T + s2 I  (Cholesky),  M = M- + A- Phi^T S^-1 (Y - Phi M-),
              A = A- - A- Phi^T S^-1 Phi A-   (then symmetrised)

``gamma`` is applied once per batch (not once per sample).  Class probabilities
are Monte Carlo estimates ``mean_s softmax(beta (mu + s * eps_s))`` with the latent
logits ``f ~ N(mu, s^2 I_K)``, ``mu = M-^T phi``, ``s^2 = phi^T A- phi`` computed from
the PRIOR quantities (the state after the previous batch, drifted once), so a
test-then-train prediction never sees its label.

Parametrisation of gamma (``gamma_param``): ``"log1m"`` (default) stores ``psi = log(1 - gamma)``, so that a
step of size delta in psi multiplies the gap ``1 - gamma`` by ``exp(delta)``: gamma can move by orders of
magnitude near 1 (0.999 -> 0.99 is delta = 2.3).  ``"logit"`` is ``gamma = sigmoid(psi)`` (before issue 13);
with plain SGD its step in gamma is ``gamma (1 - gamma)`` times smaller than the gradient, about 1e-3 at
gamma = 0.999, so gamma barely moved from its initial value.  The parametrisation alone does not fix the
scale (``d gamma / d psi = -(1 - gamma)`` in both); the strategy therefore steps psi with its own Adam
optimiser (scale-free steps; see strategies/kalman.py).  ``gamma`` (and optionally the
noise variances) are learned online by gradient steps on the one-step Gaussian log
predictive ``log N(Y_n | Phi gamma M, S(gamma))`` before the update; the
calibration ``beta`` by gradient steps on the Monte Carlo class log predictive.
The gradient of the Gaussian term only needs the B x B matrices
``Phi A Phi^T``, ``Phi Phi^T`` and the B x K matrix ``Phi M``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.heads import MaskedHead

LOG2PI = math.log(2 * math.pi)


def _log1m(p: float) -> float:
    """log(1 - p) with log1m(1) = -inf (exact gamma = 1 is static regression, not learnable there)."""
    if p >= 1:
        return -math.inf
    return math.log1p(-p)


def _logit(p: float) -> float:
    """logit with logit(1) = inf and logit(0) = -inf (exact gamma = 1 or 0, not learnable there)."""
    if p >= 1:
        return math.inf
    if p <= 0:
        return -math.inf
    return math.log(p) - math.log1p(-p)


class KalmanHead(MaskedHead):
    """Linear head whose weights are tracked by a Kalman filter (mean matrix + one shared covariance).

    ``forward(h)`` returns log predictive class probabilities (masked to the seen classes),
    computed with the prior quantities.  ``update(h, y)`` runs predict + update in place.
    Learnable scalars (``psi`` with gamma = 1 - exp(psi), or sigmoid(psi) with ``gamma_param="logit"``;
    ``log_beta``, ``log_s2``, ``log_sw2``) are ``nn.Parameter``s that the owner steps with its own optimiser.
    """

    GAMMA_PARAMS = ("log1m", "logit")

    def __init__(self, in_dim: int, n_classes: int, sigma_w2: float = 1.0, sigma2: float = 1.0,
                 gamma: float = 0.999, beta: float = 1.0, bias: bool = True, mc_samples: int = 32,
                 predictive_noise: bool = False, dtype: torch.dtype = torch.float64, gamma_param: str = "log1m"):
        super().__init__(n_classes)
        if gamma_param not in self.GAMMA_PARAMS:
            raise ValueError(f"gamma_param must be one of {self.GAMMA_PARAMS}, got {gamma_param!r}")
        self.gamma_param = gamma_param
        self.bias, self.mc_samples, self.predictive_noise, self.dtype = bias, mc_samples, predictive_noise, dtype
        m = in_dim + int(bias)
        self.dim = m
        self.register_buffer("M", torch.zeros(m, n_classes, dtype=dtype))
        self.register_buffer("A", torch.eye(m, dtype=dtype) * sigma_w2)
        psi = _log1m(gamma) if gamma_param == "log1m" else _logit(gamma)
        self.psi = nn.Parameter(torch.tensor(psi, dtype=dtype))
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta), dtype=dtype))
        self.log_s2 = nn.Parameter(torch.tensor(math.log(sigma2), dtype=dtype))
        self.log_sw2 = nn.Parameter(torch.tensor(math.log(sigma_w2), dtype=dtype))

    # -- scalars ---------------------------------------------------------------------------------
    @property
    def gamma(self) -> torch.Tensor:
        if self.gamma_param == "logit":
            return torch.sigmoid(self.psi)
        return 1 - torch.exp(self.psi.clamp(max=0.0))  # psi <= 0 keeps gamma in [0, 1]

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    @property
    def sigma2(self) -> torch.Tensor:
        return self.log_s2.exp()

    @property
    def sigma_w2(self) -> torch.Tensor:
        return self.log_sw2.exp()

    # -- pieces ----------------------------------------------------------------------------------
    def phi(self, h: torch.Tensor) -> torch.Tensor:
        """Features in the filter's dtype, with a constant 1 appended for the bias."""
        h = h.flatten(1).to(self.dtype)
        if self.bias:
            h = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], 1)
        return h

    def prior(self, gamma: torch.Tensor | None = None):
        """Kalman predict step: (M-, A-) from the stored posterior (the state is not changed)."""
        g = self.gamma.detach() if gamma is None else gamma
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.A.device)
        return g * self.M, g * g * self.A + (1 - g * g) * self.sigma_w2.detach() * eye

    def latent(self, phi: torch.Tensor, gamma: torch.Tensor | None = None):
        """Mean (B, K) and variance (B,) of the latent logits under the PRIOR (M-, A-), in O(B m^2)."""
        g = self.gamma if gamma is None else gamma
        mu = g * (phi @ self.M)
        var = g * g * ((phi @ self.A) * phi).sum(1) + (1 - g * g) * self.sigma_w2 * (phi * phi).sum(1)
        if self.predictive_noise:
            var = var + self.sigma2
        return mu, var.clamp_min(0)

    def class_log_probs(self, mu: torch.Tensor, var: torch.Tensor, n_samples: int | None = None,
                        beta: torch.Tensor | None = None) -> torch.Tensor:
        """log of the Monte Carlo predictive ``mean_s softmax(beta * (mu + sqrt(var) eps_s))``, masked."""
        beta = self.beta if beta is None else beta
        s = self.mc_samples if n_samples is None else n_samples
        mask = self.seen | ~self.seen.any()  # nothing seen yet: uniform over all classes
        if s <= 0:  # deterministic: softmax of the mean logits
            return torch.log_softmax((beta * mu).masked_fill(~mask, float("-inf")), -1)
        eps = torch.randn((s,) + tuple(mu.shape), dtype=mu.dtype, device=mu.device)
        f = beta * (mu + var.sqrt()[:, None] * eps)
        # a finite fill keeps the logsumexp over samples differentiable; -inf is put back at the end
        lp = torch.log_softmax(f.masked_fill(~mask, -1e30), -1)
        return (torch.logsumexp(lp, 0) - math.log(s)).masked_fill(~mask, float("-inf"))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):  # the filter runs in its own dtype
            mu, var = self.latent(self.phi(h.float()))
            return self.class_log_probs(mu, var).float()

    def gaussian_log_predictive(self, phi: torch.Tensor, Y: torch.Tensor, gamma=None, sigma2=None,
                                sigma_w2=None) -> torch.Tensor:
        """log N(Y | Phi M-, Phi A- Phi^T + s2 I) summed over the K classes (columns of Y).

        Differentiable in gamma, the noise variances and ``phi``; the state (M, A) is held fixed.
        """
        g = self.gamma if gamma is None else gamma
        s2 = self.sigma2 if sigma2 is None else sigma2
        sw2 = self.sigma_w2 if sigma_w2 is None else sigma_w2
        B, K = Y.shape
        P = phi @ self.A @ phi.t()
        G = phi @ phi.t()
        S = g * g * P + (1 - g * g) * sw2 * G + s2 * torch.eye(B, dtype=phi.dtype, device=phi.device)
        S = 0.5 * (S + S.t())
        L = torch.linalg.cholesky(S)
        R = Y.to(phi.dtype) - g * (phi @ self.M)
        alpha = torch.linalg.solve_triangular(L, R, upper=False)
        return -0.5 * (alpha * alpha).sum() - K * torch.log(torch.diagonal(L)).sum() - 0.5 * B * K * LOG2PI

    # -- the filter --------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, phi: torch.Tensor, Y: torch.Tensor, joseph: bool = False) -> None:
        """Predict (drift with the current gamma) then condition on the batch (phi, Y)."""
        Mp, Ap = self.prior()
        s2 = self.sigma2.detach()
        B = len(phi)
        S = phi @ Ap @ phi.t() + s2 * torch.eye(B, dtype=phi.dtype, device=phi.device)
        L = torch.linalg.cholesky(0.5 * (S + S.t()))
        APt = Ap @ phi.t()  # (m, B)
        KT = torch.cholesky_solve(APt.t(), L)  # S^-1 Phi A-  (B, m) = K^T
        self.M.copy_(Mp + KT.t() @ (Y.to(phi.dtype) - phi @ Mp))
        if joseph:  # (I - K Phi) A- (I - K Phi)^T + s2 K K^T: O(m^3), better conditioned
            I_KP = torch.eye(self.dim, dtype=phi.dtype, device=phi.device) - KT.t() @ phi
            A = I_KP @ Ap @ I_KP.t() + s2 * KT.t() @ KT
        else:
            A = Ap - APt @ KT
        self.A.copy_(0.5 * (A + A.t()))

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.n_classes).to(self.dtype)
