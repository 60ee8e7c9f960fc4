"""A classifier = backbone + head, and the batch transform a model's input goes through."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from cl.core.registry import unknown
from cl.models.heads import HEADS


class Model(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.head(self.backbone(x))

    def raw_logits(self, x):
        """Logits before the unseen-class mask (all classes finite); ``forward`` masks them.
        Heads without ``raw`` have no mask, so their output is returned."""
        h = self.backbone(x)
        return self.head.raw(h) if hasattr(self.head, "raw") else self.head(h)

    def observe(self, y: torch.Tensor) -> None:
        self.head.observe(y)


def build_head(kind: str, in_dim: int, n_classes: int, **kw) -> nn.Module:
    if kind not in HEADS:
        raise unknown("head", kind, HEADS)
    return HEADS[kind](in_dim, n_classes, **kw)


def head_of(cfg, in_dim: int, n_classes: int) -> nn.Module:
    """The head a strategy config asks for: ``cfg.head`` (linear | cosine) and, for the cosine head, its
    temperature ``cfg.head_tau`` (None: the head's default), and whether it masks the classes not seen yet
    (``cfg.mask_unseen``)."""
    kind, tau = getattr(cfg, "head", "linear"), getattr(cfg, "head_tau", None)
    head = _head_with_tau(kind, tau, in_dim, n_classes)
    head.mask_unseen = bool(getattr(cfg, "mask_unseen", True))
    return head


def check_mask_unseen(model: nn.Module, cfg, strategy: str) -> None:
    """``strategy.mask_unseen: false`` must reach the head that scores the classes (one built by ``head_of``);
    a strategy whose own head ignores it gets an error instead of silently masked logits."""
    from cl.core.registry import ConfigError

    if getattr(cfg, "mask_unseen", True):
        return
    head = getattr(model, "head", None)
    if head is None or head.__dict__.get("mask_unseen", True) is not False:
        raise ConfigError(f"strategy.mask_unseen=false: strategy {strategy!r} scores classes with its own head, which "
                          f"always masks the classes not seen yet; use it with a strategy built on the linear or "
                          f"cosine head (strategy.head), or leave mask_unseen at true")


def _head_with_tau(kind, tau, in_dim, n_classes):
    from cl.core.registry import ConfigError

    if tau is None:
        return build_head(kind, in_dim, n_classes)
    if kind != "cosine":
        raise ConfigError(f"strategy.head_tau={tau!r} is the temperature of the cosine head: set strategy.head=cosine "
                          f"or leave head_tau unset (strategy.head is {kind!r})")
    if not tau > 0:
        raise ConfigError(f"strategy.head_tau must be > 0 (logits are cos / tau); got {tau!r}")
    return build_head(kind, in_dim, n_classes, tau=float(tau))


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def preprocess_factory(backbone: nn.Module, scenario) -> Callable:
    """``device -> batch transform`` for this backbone on this scenario: a pretrained backbone's own
    (``make_preprocess``: resize, its normalisation) or else the scenario's (uint8 -> float, its normalisation)."""
    make = getattr(backbone, "make_preprocess", None)  # optional part of the backbone interface
    if make is not None:
        return lambda device, _make=make, _s=scenario: _make(_s, device)
    return lambda device, _f=scenario.preprocess_fn: _f(device)  # a plain function: copies never copy the scenario


def attach_preprocess(model: nn.Module, factory: Callable) -> None:
    """Make ``factory`` the model's input preprocessing (read back with :func:`model_preprocess`).

    Stored outside the module's registries, so a deep copy of the model never copies the scenario's data."""
    object.__setattr__(model, "_preprocess_factory", factory)


def model_preprocess(model: nn.Module, device) -> Callable:
    """The model's batch transform on ``device`` (uint8 -> float [0, 1] when none was attached)."""
    f = getattr(model, "_preprocess_factory", None)
    if f is not None:
        return f(device)
    from cl.core.streams import default_preprocess

    return default_preprocess
