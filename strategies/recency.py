"""Recency baseline for online accuracy on non-i.i.d. streams (no paper; issue 13's control for the Kalman head).

It ignores the input: the score of class c is the log of an exponentially decayed count of the labels seen
so far, ``n_c <- decay * n_c + #{c in the incoming batch}`` after each batch, and every test sample is
predicted as the class with the largest count (ties: the lowest class index; before any label: uniform).
On a class-ordered stream this "predict the recent labels" rule already earns a high test-then-train
accuracy, because consecutive batches share labels (methods.md section 11b).  A method's online accuracy
is only evidence of learning from the features to the extent that it beats this baseline.

``decay`` (default 0.9 per batch) sets how quickly old labels are forgotten; 0 predicts the previous
batch's majority class.  Runs on cached frozen features (``frozen_features = True``): nothing is learned
from them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class RecencyConfig(StrategyConfig):
    decay: float = 0.9  # per-batch decay of the label counts


class RecencyModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("counts", torch.zeros(n_classes, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def forward(self, x):
        n = len(x)
        c = self.counts.float()
        # log counts; a tiny decreasing offset breaks ties by class index; -inf where the count is zero
        scores = torch.log(c) - 1e-6 * torch.arange(len(c), device=c.device)
        if not bool(self.seen.any()):
            scores = torch.zeros_like(c)
        return scores.unsqueeze(0).expand(n, -1)

    @torch.no_grad()
    def observe(self, y):
        self.seen[y] = True


@register("recency", RecencyConfig)
class Recency(Strategy):
    """Predict the most frequent recent label (decayed label counts); ignores the input."""

    frozen_features = True

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        for p in backbone.parameters():
            p.requires_grad_(False)
        return RecencyModel(backbone, scenario.n_classes)

    def make_optimizer(self):
        return torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=0.0)  # nothing to learn

    def train_step(self, x, y, t=None):
        m = self.model
        m.observe(y)
        with torch.no_grad():
            m.counts.mul_(self.cfg.decay)
            m.counts.index_add_(0, y, torch.ones(len(y), dtype=m.counts.dtype, device=m.counts.device))
        return torch.zeros((), device=y.device)
