"""Linear probe: a linear head trained with SGD on frozen (cached) backbone features.

The strategy-independent way to run a frozen pretrained backbone: ``frozen_features = True`` makes
the engine encode the scenario once through the feature cache (``cl.models.features``), and this strategy
learns only a growing linear head (cross-entropy, optionally on L2-normalised features), offline or
online.  Example: ``cl run -s linear-probe -d split-cifar10 -b efficientnet-lite0``.

``class_mask=true``: the CE of an experience runs over that experience's classes only (L2P's ``train_mask``),
so this is L2P's head without prompts -- the "no-prompt, class-masked probe" that issue 13 compares L2P
with (use ``normalize=false`` for L2P's unnormalised features, and L2P's optimiser settings).
``reset_optimizer=true`` re-initialises the optimiser at every experience, as L2P does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.multihead import class_mask
from cl.models.model import Model, head_of
from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class LinearProbeConfig(StrategyConfig):
    lr: float = 0.05
    momentum: float = 0.9
    normalize: bool = True  # L2-normalise the features (scale-free learning rate across backbones)
    scale: float = 10.0  # multiply normalised features by this (keeps logits in a useful range)
    class_mask: bool = False  # CE over the current experience's classes only (L2P's train_mask)
    reset_optimizer: bool = False  # re-initialise the optimiser at every experience (as L2P)


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
    transient_attrs = ("current",)  # the current experience's classes: set by before_experience

    frozen_features = True

    @classmethod
    def build_model(cls, cfg: LinearProbeConfig, backbone, scenario):
        body = _Normalize(backbone, cfg.scale) if cfg.normalize else backbone
        return Model(body, head_of(cfg, body.out_dim, scenario.n_classes))

    def setup(self):
        self.current = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)

    def before_experience(self, exp):
        self.current.copy_(class_mask(exp.classes, self.info.n_classes, self.device))
        if self.cfg.reset_optimizer:
            self.optimizer = self.make_optimizer()

    def loss(self, x, y, t=None):
        if not self.cfg.class_mask:
            return super().loss(x, y, t)
        x = self.augmented(x)
        logits = self.model(x).float().masked_fill(~self.current, float("-inf"))
        return F.cross_entropy(logits, y)
