"""The strategy plugin protocol.

A strategy is a class registered with ``@register("name")`` and a typed config
(a dataclass of hyperparameters with defaults, ``Config``).  The engine calls a
small set of hooks; the defaults implement plain fine-tuning, so a strategy
overrides only what differs::

    setup()                      once, after model and optimiser exist
    before_experience(exp)       at each experience boundary (visible ones)
    train_data(exp)              (x, y) the engine iterates for this experience
    train_step(x, y, t)          one optimisation step; returns the loss tensor (no .item())
    loss(x, y, t)                the objective of the default train_step
    after_step(x, y, t)          after the optimiser step (buffer updates go here)
    after_experience(exp)
    predict(x, t)                logits used for evaluation and online accuracy
    state_dict() / load_state_dict()   everything needed to resume

Shared pieces (buffers, heads, adapters) are plain objects from ``cl/`` that a
strategy holds.  Nothing here synchronises with the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import strategies, unknown


@dataclass
class StrategyConfig:
    """Optimiser settings every strategy has."""

    lr: float = 0.1
    optimizer: str = "sgd"  # sgd | adam | adamw
    momentum: float = 0.0
    weight_decay: float = 0.0
    head: str = "linear"  # linear | cosine
    frozen_backbone: bool = False  # train on cached features of the frozen backbone (any strategy)


def uses_frozen_features(strategy_cls, cfg) -> bool:
    """Does this run train on cached features of a frozen backbone? Strategies built for it say so
    (``frozen_features = True``); any other strategy can be run that way with ``frozen_backbone=True``."""
    return bool(getattr(strategy_cls, "frozen_features", False) or getattr(cfg, "frozen_backbone", False))


def register(name: str, config=None, description: str | None = None):
    """Register a strategy class under ``name`` (usable from user files too)."""
    return strategies.register(name, config, description)


OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(params, cfg: StrategyConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise unknown("optimizer", cfg.optimizer, OPTIMIZERS)


@dataclass
class RunInfo:
    """What a strategy may know about the run."""

    n_classes: int
    input_shape: tuple
    device: torch.device
    seed: int
    setting: str = "class"
    boundaries: str = "visible"
    protocol: str = "offline"
    n_experiences: int = 1


class Strategy:
    """Fine-tuning with cross-entropy: the base every strategy extends."""

    Config = StrategyConfig
    #: a strategy that keeps the backbone frozen sets this; the engine then feeds cached features
    frozen_features: bool = False

    def __init__(self, cfg: StrategyConfig, model: nn.Module, info: RunInfo):
        self.cfg, self.model, self.info = cfg, model, info
        self.device = info.device
        self.augment = None  # optional on-device augmentation callable, set by the engine
        self.optimizer = self.make_optimizer()

    # -- construction -------------------------------------------------------------------------
    def make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model.parameters(), self.cfg)

    def setup(self) -> None:
        pass

    # -- hooks -------------------------------------------------------------------------------
    def before_experience(self, exp) -> None:
        pass

    def train_data(self, exp):
        return exp.train_x, exp.train_y

    def loss(self, x, y, t=None) -> torch.Tensor:
        x = self.augment(x) if self.augment is not None else x
        return F.cross_entropy(self.model(x).float(), y)

    def train_step(self, x, y, t=None) -> torch.Tensor:
        self.model.observe(y)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y, t)
        loss.backward()
        self.before_optimizer_step(x, y, t)
        self.optimizer.step()
        self.after_step(x, y, t)
        return loss.detach()

    def after_step(self, x, y, t=None) -> None:
        pass

    def before_optimizer_step(self, x, y, t=None) -> None:
        """After backward, before the optimiser step: gradients are in ``p.grad`` (projection, importance)."""

    def after_experience(self, exp) -> None:
        pass

    def predict(self, x, t=None) -> torch.Tensor:
        return self.model(x)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
