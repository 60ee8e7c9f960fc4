"""Nearest-class-mean head on (frozen) features (Janson et al. 2022; SimpleCIL; methods.md section 7).

Class means are kept as running sums and counts (float64), so they are exact
incremental means whatever the batching, across experiences and across sessions
of the same class (domain-incremental).  Two scoring rules:

* ``euclidean`` (Janson et al.): ``-||phi(x) - mu_c||`` where, with ``normalize=True``,
  the features are L2-normalised before averaging and before scoring; the means
  themselves are not re-normalised.
* ``cosine`` (SimpleCIL): ``cos(phi(x), mu_c)`` with prototypes = means of the raw features
  (``normalize=False``).

Logits of classes with no sample yet are -inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.models.heads import MaskedHead, cosine_logits

METRICS = ("euclidean", "cosine")


class PrototypeHead(MaskedHead):
    def __init__(self, in_dim: int, n_classes: int, metric: str = "euclidean", normalize: bool = True,
                 scale: float = 1.0):
        super().__init__(n_classes)
        if metric not in METRICS:
            from cl.core.registry import unknown

            raise unknown("prototype metric", metric, METRICS)
        self.metric, self.normalize, self.scale = metric, normalize, scale
        self.register_buffer("sums", torch.zeros(n_classes, in_dim, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n_classes, dtype=torch.float64))

    def _prep(self, h: torch.Tensor) -> torch.Tensor:
        h = h.flatten(1).float()
        return F.normalize(h, dim=1) if self.normalize else h

    @torch.no_grad()
    def update(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of features of classes y to the running means (no host sync)."""
        self.sums.index_add_(0, y, self._prep(h).double())
        self.counts.index_add_(0, y, torch.ones(len(y), dtype=torch.float64, device=y.device))
        self.observe(y)

    @property
    def means(self) -> torch.Tensor:
        return (self.sums / self.counts.clamp_min(1)[:, None]).float()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            h, mu = self._prep(h), self.means
            if self.metric == "cosine":
                logits = cosine_logits(h, mu)
            else:
                logits = -torch.cdist(h, mu)
            return self.mask(self.scale * logits)
