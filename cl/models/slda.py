"""Streaming linear discriminant analysis head (Hayes & Kanan, CVPR-W 2020, "Lifelong Machine Learning with
Deep Streaming Linear Discriminant Analysis"; methods in strategies/slda.py).

State (float64 buffers): per-class counts ``n_k`` and means ``mu_k``, the pooled within-class scatter
``S = sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` and the number of samples ``N``.  The shared covariance is
``Sigma = S / N`` (the maximum-likelihood pooled estimate, as sklearn's ``LinearDiscriminantAnalysis``
computes it); prediction uses the precision of the shrunk covariance ``(1 - s) Sigma + s I``::

    score_k(x) = x^T Lambda mu_k - 1/2 mu_k^T Lambda mu_k,   Lambda = ((1 - s) Sigma + s I)^{-1}

(no log-prior term, as in the authors' code).  Classes with no sample yet get -inf.

Two covariance updates:

* ``exact`` (default): a batch with ``m_k`` samples of class k (batch mean ``b_k``) adds its own
  within-class scatter plus ``n_k m_k / (n_k + m_k) (b_k - mu_k)(b_k - mu_k)^T`` for each class (the
  pooled form of Chan et al.'s parallel variance update).  Whatever the batching and order, ``S`` equals
  the batch within-class scatter of all samples seen: the streaming estimate is the batch estimate.
  Per sample this is ``S += n_y / (n_y + 1) (x - mu_y)(x - mu_y)^T``.
* ``paper``: the per-sample recursion of the paper and its code (tyler-hayes/Deep_SLDA ``SLDA_Model.py``
  ``fit``; Avalanche's ``StreamingLDA.fit`` is the same): ``Sigma <- (t Sigma + t / (t + 1) (x - mu_y)
  (x - mu_y)^T) / (t + 1)`` with ``t`` the number of samples seen so far (all classes) and ``mu_y`` the
  class mean before the sample (zero for a class not seen yet), i.e. ``S += t / (t + 1) (...)``.  It
  differs from ``exact`` in the weight (``t`` instead of ``n_y``), so the first sample of every class adds
  ``t / (t + 1) x x^T`` around the origin; the two agree as every class count grows.

The precision solve (``torch.linalg.solve`` on the d x d matrix, ``pinv`` when ``s = 0``) runs at the first
prediction after an update and is cached until the next update.
"""
from __future__ import annotations

import torch

from cl.models.heads import MaskedHead

COVARIANCE_UPDATES = ("exact", "paper")


class StreamingLDAHead(MaskedHead):
    def __init__(self, in_dim: int, n_classes: int, shrinkage: float = 1e-4, covariance: str = "exact"):
        super().__init__(n_classes)
        if covariance not in COVARIANCE_UPDATES:
            from cl.core.registry import unknown

            raise unknown("strategy.covariance", covariance, COVARIANCE_UPDATES)
        if not 0.0 <= shrinkage <= 1.0:
            from cl.core.registry import ConfigError

            raise ConfigError(f"strategy.shrinkage must be in [0, 1], got {shrinkage}")
        self.in_dim, self.shrinkage, self.covariance = in_dim, float(shrinkage), covariance
        f64 = torch.float64
        self.register_buffer("counts", torch.zeros(n_classes, dtype=f64))
        self.register_buffer("means", torch.zeros(n_classes, in_dim, dtype=f64))
        self.register_buffer("scatter", torch.zeros(in_dim, in_dim, dtype=f64))
        self.register_buffer("n", torch.zeros((), dtype=f64))
        self._stale = True  # the cached readout (_w, _c) is out of date
        self._w = self._c = None

    # -- learning -------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of features ``h`` (any shape, flattened) of classes ``y``; no host synchronisation."""
        h = h.flatten(1).double()
        if self.covariance == "exact":
            self._update_exact(h, y)
        else:
            self._update_paper(h, y)
        self.n += len(y)
        self.observe(y)
        self._stale = True

    def _update_exact(self, h, y):
        K = self.counts.shape[0]
        m = torch.zeros(K, dtype=h.dtype, device=h.device).index_add_(0, y, torch.ones_like(y, dtype=h.dtype))
        s = torch.zeros_like(self.means).index_add_(0, y, h)
        bmean = s / m.clamp_min(1)[:, None]
        hc = h - bmean[y]
        total = self.counts + m
        w = self.counts * m / total.clamp_min(1)  # n_k m_k / (n_k + m_k); 0 for a class absent from the batch
        d = (bmean - self.means)[y]  # per sample: its class's batch mean minus the class's running mean
        per = (w / m.clamp_min(1))[y]  # spread each class's between term over its m_k samples
        self.scatter += hc.t() @ hc + (d * per[:, None]).t() @ d
        self.means += (s - m[:, None] * self.means) / total.clamp_min(1)[:, None]
        self.counts.copy_(total)

    def _update_paper(self, h, y):
        t = self.n.clone()
        for i in range(len(y)):
            c = y[i]
            d = h[i] - self.means[c]
            self.scatter += (t / (t + 1)) * torch.outer(d, d)
            self.means[c] += d / (self.counts[c] + 1)
            self.counts[c] += 1
            t += 1

    # -- the estimate and the readout -----------------------------------------------------------
    @property
    def sigma(self) -> torch.Tensor:
        """The shared covariance ``S / N`` (float64)."""
        return self.scatter / self.n.clamp_min(1)

    def shrunk(self) -> torch.Tensor:
        eye = torch.eye(self.in_dim, dtype=self.scatter.dtype, device=self.scatter.device)
        return (1 - self.shrinkage) * self.sigma + self.shrinkage * eye

    def readout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W = Lambda M^T`` (d x K) and ``c_k = 1/2 mu_k^T Lambda mu_k``, cached until the next update."""
        if self._stale or self._w is None:
            A, mt = self.shrunk(), self.means.t()
            w = torch.linalg.solve(A, mt) if self.shrinkage > 0 else torch.linalg.pinv(A, hermitian=True) @ mt
            self._w, self._c = w, 0.5 * (mt * w).sum(0)
            self._stale = False
        return self._w, self._c

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            w, c = self.readout()
            return self.mask((h.flatten(1).double() @ w - c).float())

    def _load_from_state_dict(self, *args, **kw):
        self._stale, self._w, self._c = True, None, None
        return super()._load_from_state_dict(*args, **kw)
