"""LwF.MC: iCaRL's multi-class LwF (Rebuffi et al., CVPR 2017, section 4; Mammoth's ``lwf_mc``).

iCaRL's representation-learning loss without exemplars and with the network's own classifier: one sigmoid
per class seen so far; targets are one-hot for the new classes' samples on the new classes and the frozen
model's sigmoid outputs on the old classes (``cl.models.distill``: BCE with logits, mean reduction).

Choices: the BCE is averaged over the classes seen so far (the paper sums over them; Mammoth averages over
every class of the dataset, unseen ones included, whose targets are 0); the frozen copy is taken at each
boundary (``cl.models.frozen.FrozenCopy``) and sees the same augmented batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.strategy import StrategyConfig, register
from strategies.lwf import DistillBase


@dataclass
class LwFMCConfig(StrategyConfig):
    pass


def icarl_bce(logits, y, teacher_logits, seen_idx, old_idx):
    """BCE over the seen classes: one-hot targets, with the old classes' targets replaced by sigmoid(teacher)."""
    z = logits[:, seen_idx].float()
    target = (y[:, None] == seen_idx[None]).float()
    if teacher_logits is not None and len(old_idx):
        is_old = (seen_idx[:, None] == old_idx[None]).any(1)
        t_all = torch.sigmoid(teacher_logits.float()).masked_fill(~torch.isfinite(teacher_logits), 0.0)
        soft = t_all[:, seen_idx]
        target = torch.where(is_old[None], soft, target)
    return F.binary_cross_entropy_with_logits(z, target)


@register("lwf-mc", LwFMCConfig, "LwF.MC: iCaRL's sigmoid distillation without exemplars")
class LwFMC(DistillBase):
    def loss(self, x, y, t=None):
        xa = self.augmented(x)
        logits = self.model(xa)
        seen = self.seen_idx()
        teacher = self.teacher(xa) if self.teacher and self.old_classes else None
        return icarl_bce(logits, y, teacher, seen, self.old_idx() if teacher is not None else seen[:0])
