"""ER-ACE: experience replay with asymmetric cross-entropy (Caccia et al., ICLR 2022; methods.md section 1).

Incoming batch: CE over logits where the classes seen before this batch but absent
from it are masked out (they get no gradient from the incoming batch); replay
batch: ordinary CE over all logits.  ``L = CE_masked(B_t) + CE_full(R)``.

The set of seen classes is explicit (a device mask updated after each step), so
class indices need not arrive in order (the original code's ``>= max(seen)``
shortcut assumes they do).  The mask applies from the first batch (task-free AML
version).  Classes never seen so far are already outside the softmax in this
platform (heads give them -inf logits), in both ER and ER-ACE.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strategies.er import ER, ERConfig
from cl.core.strategy import register


@dataclass
class ERACEConfig(ERConfig):
    pass


@register("er-ace", ERACEConfig)
class ERACE(ER):
    """ER with asymmetric cross-entropy: incoming batch masked to present + unseen classes."""

    def setup(self):
        super().setup()
        self.seen = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)

    def incoming_loss(self, x, y):
        x = self.augment(x) if self.augment is not None else x
        logits = self.model(x).float()
        present = torch.zeros_like(self.seen)
        present[y] = True
        return F.cross_entropy(logits.masked_fill(self.seen & ~present, float("-inf")), y)

    def loss(self, x, y, t=None):
        loss = self.incoming_loss(x, y)
        mem = self.buffer.sample(self.cfg.replay_batch_size)
        if mem:
            loss = loss + super(ER, self).loss(mem["x"], mem["y"], t)
        return loss

    def after_step(self, x, y, t=None):
        super().after_step(x, y, t)
        self.seen[y] = True

    def extra_state(self):
        return {**super().extra_state(), "seen": self.seen.cpu()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        if "seen" in state:
            self.seen = state["seen"].to(self.device)
