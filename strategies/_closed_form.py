"""Small pieces the issue-16 strategies of ptm3 share (RanPAC, FeCAM, SLCA, InfLoRA, LAE)."""
from __future__ import annotations

import torch
import torch.nn as nn



def inert_optimizer(strategy) -> torch.optim.Optimizer:
    """Nothing is trained: an optimiser over one dummy parameter keeps the checkpoint format of every strategy."""
    strategy._dummy = nn.Parameter(torch.zeros(()))
    return torch.optim.SGD([strategy._dummy], lr=0.0)
