"""Linear probe: a linear head trained with SGD on frozen (cached) backbone features.

The strategy-independent way to run a frozen pretrained backbone: ``frozen_features = True`` makes
the engine encode the scenario once through the feature cache (``cl.models.features``), and this strategy
learns only a growing linear head (cross-entropy, optionally on L2-normalised features), offline or
online.  Example: ``cl run -s linear-probe -d split-cifar10 -b efficientnet-lite0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from cl.models.model import Model, build_head
from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class LinearProbeConfig(StrategyConfig):
    lr: float = 0.05
    momentum: float = 0.9
    normalize: bool = True  # L2-normalise the features (scale-free learning rate across backbones)
    scale: float = 10.0  # multiply normalised features by this (keeps logits in a useful range)


class _Normalize(nn.Module):
    def __init__(self, backbone: nn.Module, scale: float):
        super().__init__()
        self.backbone, self.scale = backbone, scale
        self.out_dim = backbone.out_dim

    def forward(self, x):
        return F.normalize(self.backbone(x).float(), dim=-1) * self.scale


@register("linear-probe", LinearProbeConfig)
class LinearProbe(Strategy):
    """Linear head trained by SGD on frozen, cached backbone features."""

    frozen_features = True

    @classmethod
    def build_model(cls, cfg: LinearProbeConfig, backbone, scenario):
        body = _Normalize(backbone, cfg.scale) if cfg.normalize else backbone
        return Model(body, build_head(cfg.head, body.out_dim, scenario.n_classes))
