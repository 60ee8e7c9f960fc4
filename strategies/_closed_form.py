"""Small pieces the issue-16 strategies of ptm3 share (RanPAC, FeCAM, SLCA, InfLoRA, LAE)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.task_keys import trim_padding



def inert_optimizer(strategy) -> torch.optim.Optimizer:
    """Nothing is trained: an optimiser over one dummy parameter keeps the checkpoint format of every strategy."""
    strategy._dummy = nn.Parameter(torch.zeros(()))
    return torch.optim.SGD([strategy._dummy], lr=0.0)


def current_task_ce(strategy, x, y) -> torch.Tensor:
    """Local cross-entropy over the current task's classes (``strategy.current``, a bool mask): the augmented
    batch (text: padding trimmed) through the backbone and the unmasked head (SLCA's and InfLoRA's step)."""
    model = strategy.model
    x = trim_padding(strategy.augmented(x))
    logits = model.head.raw(model.backbone(x)).float().masked_fill(~strategy.current, float("-inf"))
    return F.cross_entropy(logits, y)
