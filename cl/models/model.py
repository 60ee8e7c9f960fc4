"""A classifier = backbone + head."""
from __future__ import annotations

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


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
