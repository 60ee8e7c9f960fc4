"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017), class-incremental multi-class form.

Loss on experience t > 0: CE over the classes seen so far + alpha * KD(old classes' logits), where KD is
KL(softmax(z_old / T) || softmax(z / T)) against the model frozen at the end of the previous experience
(``cl.models.frozen.FrozenCopy``), T = 2 (the paper's temperature), on the same augmented batch.
``cl.models.distill.kd_loss`` documents the KD form (KL = the paper's soft cross-entropy minus a constant).

Choices: alpha = 1 (the paper's lambda_o; Mammoth's best seq-CIFAR-10 and PyCIL use 3); the CE runs over
every seen class (the class-incremental form Mammoth's ``lwf`` uses; PyCIL's CE covers the new classes only);
"old classes" = the classes the frozen model had seen. Deviation: no warm-up of the new head before joint
training (the paper's and Mammoth's optional first stage).

Boundaries: the teacher is taken at the end of each experience, so LwF (and every strategy built on
``DistillBase``: LwF.MC, iCaRL, BiC, LUCIR) needs visible boundaries; on a task-free stream it raises a
ConfigError naming ``scenario.boundaries``. Under ``protocol=online`` with visible boundaries it runs as is:
the single pass over an experience trains against the teacher of the previous one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.distill import kd_loss
from cl.models.frozen import FrozenCopy
from strategies._boundaries import require_boundaries
from strategies._reg import build_model


@dataclass
class LwFConfig(StrategyConfig):
    alpha: float = 1.0  # weight of the distillation term
    temperature: float = 2.0


class DistillBase(Strategy):
    """A frozen copy taken at each boundary and the list of classes it had seen (shared by LwF, LwF.MC, iCaRL)."""
    #: recomputed by before_experience before they are read (per-experience working values, not state)
    transient_attrs = ("seen_classes", "_seen_idx", "_old_idx")

    build_model = classmethod(lambda cls, cfg, backbone, scenario: build_model(cfg, backbone, scenario))

    def setup(self):
        require_boundaries(self, "the teacher is the model frozen at the end of "
                           "the previous experience")
        self.teacher = FrozenCopy()
        self.old_classes: list[int] = []

    def before_experience(self, exp):
        self.seen_classes = sorted(set(self.old_classes) | {int(c) for c in exp.classes})
        self._seen_idx = None

    def seen_idx(self):
        """The classes seen so far, including this experience's (an index tensor, no host read per step)."""
        if getattr(self, "_seen_idx", None) is None:
            self._seen_idx = torch.tensor(self.seen_classes, dtype=torch.long, device=self.device)
        return self._seen_idx

    def after_experience(self, exp):
        self.teacher.take(self.model)
        self.old_classes = self.model.head.seen.nonzero().flatten().tolist()
        self._old_idx = None

    def old_idx(self):
        if getattr(self, "_old_idx", None) is None:
            self._old_idx = torch.tensor(self.old_classes, dtype=torch.long, device=self.device)
        return self._old_idx

    def extra_state(self):
        return {"teacher": self.teacher.state_dict(), "old_classes": list(self.old_classes)}

    def load_extra_state(self, state):
        self.teacher = FrozenCopy()
        self.teacher.load_state_dict(state["teacher"], like=self.model)
        self.old_classes = list(state["old_classes"])
        self._old_idx = None


@register("lwf", LwFConfig, "Learning without forgetting (KD on old classes' logits, T=2)")
class LwF(DistillBase):
    def setup(self):
        if self.cfg.alpha < 0 or not self.cfg.temperature > 0:  # T = 0 divides the logits by 0
            raise ConfigError(f"lwf: alpha must be >= 0 and temperature > 0, got alpha={self.cfg.alpha}, "
                              f"temperature={self.cfg.temperature}")
        super().setup()

    def loss(self, x, y, t=None):
        xa = self.augmented(x)
        logits = self.model(xa).float()
        loss = F.cross_entropy(logits, y)
        if self.teacher and self.old_classes:
            idx = self.old_idx()
            loss = loss + self.cfg.alpha * kd_loss(logits[:, idx], self.teacher(xa)[:, idx], self.cfg.temperature)
        return loss
