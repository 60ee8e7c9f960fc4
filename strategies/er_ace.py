"""ER-ACE: experience replay with asymmetric cross-entropy (Caccia et al., ICLR 2022; methods.md section 1).

Incoming batch: CE over logits where the classes seen before this batch but absent
from it are masked out (they get no gradient from the incoming batch); replay
batch: ordinary CE over all logits.  ``L = CE_masked(B_t) + CE_full(R)``.

The set of seen classes is explicit (a device mask updated after each step), so
class indices need not arrive in order (the original code's ``>= max(seen)``
shortcut assumes they do).  The mask applies from the first batch (task-free AML
version).

Future classes (``future_classes``).  The heads of this platform give -inf to classes never seen so far, for
every strategy, so by default those classes are outside the incoming softmax in ER and ER-ACE alike.  AML's
code keeps them in it (its incoming mask only removes the seen classes that are absent from the batch, and
the logits of classes not yet seen stay), so the incoming CE also pushes the future classes' logits down.
``future_classes=true`` does that: the incoming loss uses the head's unmasked logits, minus the seen
classes absent from the batch.  Default ``false``: the ER baseline here also excludes future classes, so the
default isolates the asymmetric part of the loss (the one the paper ablates) and keeps the recorded ER-ACE
numbers comparable with ER; set it to true to reproduce the authors' code.  The replay term and
prediction are unchanged (unseen classes stay at -inf at test time).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strategies.er import ER, ERConfig
from cl.core.strategy import register


@dataclass
class ERACEConfig(ERConfig):
    future_classes: bool = False  # keep never-seen classes in the incoming softmax (AML's code)


@register("er-ace", ERACEConfig)
class ERACE(ER):
    """ER with asymmetric cross-entropy: incoming batch masked to present + unseen classes."""

    def setup(self):
        super().setup()
        self.seen = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)

    def incoming_loss(self, x, y):
        x = self.augmented(x)
        logits = (self._all_class_logits(x) if self.cfg.future_classes else self.model(x)).float()
        present = torch.zeros_like(self.seen)
        present[y] = True
        return F.cross_entropy(logits.masked_fill(self.seen & ~present, float("-inf")), y)

    def _all_class_logits(self, x):
        """The model's logits with the head's seen-class mask lifted (every class scored)."""
        head = self.model.head
        saved = head.seen.clone()
        head.seen.fill_(True)
        try:
            return self.model(x)
        finally:
            head.seen.copy_(saved)

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
