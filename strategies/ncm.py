"""Nearest-class-mean classifier on frozen features (Janson et al. 2022; SimpleCIL; methods.md section 7).

Exemplar-free and task-free: every incoming batch adds its features to running
class sums (``cl.models.prototypes.PrototypeHead``); nothing is trained.  Defaults follow
Janson et al. (L2-normalised features, Euclidean distance to the means);
``metric=cosine normalize=false`` gives SimpleCIL's raw-mean prototypes with cosine logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cl.models.model import Model
from cl.models.prototypes import PrototypeHead
from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class NCMConfig(StrategyConfig):
    metric: str = "euclidean"  # euclidean (Janson) | cosine (SimpleCIL)
    normalize: bool = True  # L2-normalise features before averaging and scoring


@register("ncm", NCMConfig)
class NCM(Strategy):
    """Nearest class mean on frozen features (incremental means; cosine or Euclidean)."""

    frozen_features = True

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        for p in backbone.parameters():
            p.requires_grad_(False)
        return Model(backbone, cls.make_head(cfg, backbone.out_dim, scenario.n_classes))

    @classmethod
    def make_head(cls, cfg, in_dim: int, n_classes: int):
        """The streaming head on the frozen features (SLDA's subclass gives its own)."""
        return PrototypeHead(in_dim, n_classes, cfg.metric, cfg.normalize)

    def make_optimizer(self):
        # nothing is trained; an inert optimiser keeps the checkpoint format of every strategy
        self._dummy = nn.Parameter(torch.zeros(()))
        return torch.optim.SGD([self._dummy], lr=0.0)

    def train_step(self, x, y, t=None):
        with torch.no_grad():
            self.model.head.update(self.model.features(x), y)
        return torch.zeros((), device=y.device)
