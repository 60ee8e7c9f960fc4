"""iCaRL: incremental classifier and representation learning (Rebuffi, Kolesnikov, Sperl, Lampert, CVPR 2017).

* Memory: a fixed total budget K (``buffer_size``) shared by the classes seen so far, m = K // n_seen per
  class. At the end of each experience the old classes' exemplar sets are cut to their first m (Alg. 5) and
  each new class gets m exemplars by herding on L2-normalised features (Alg. 4, ``cl.models.herding``).
* Representation learning (Alg. 3): train on the experience's data together with every exemplar; one sigmoid
  per seen class; targets are one-hot on the new classes and the frozen previous model's sigmoid outputs on
  the old ones (``strategies.lwf_mc.icarl_bce``; averaged over the seen classes, see there).
* Classification (Alg. 1): nearest mean of exemplars, means of normalised features, renormalised, computed
  at the end of each experience (``cl.models.herding.nme_logits``). Before the first boundary the network's
  own outputs are used.

Choices: weight decay 1e-5 (the paper's, as in Mammoth's ``opt_wd``); features for herding and means are
computed in eval mode without augmentation; Mammoth and the authors' code also average each exemplar's mean
with its horizontally flipped copy, which we do not (it is an augmentation choice). The extra feature passes
run at the boundary, not during the training steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, register
from cl.models.herding import class_means, nme_logits
from cl.models.task_keys import model_preprocess
from strategies._exemplars import ExemplarMemory
from strategies._reg import batched_apply, in_eval
from strategies.lwf import DistillBase
from strategies.lwf_mc import icarl_bce


@dataclass
class ICaRLConfig(StrategyConfig):
    buffer_size: int = 2000  # total exemplars K
    weight_decay: float = 1e-5
    nme: bool = True  # classify with the nearest mean of exemplars (false: the network's sigmoid outputs)


@register("icarl", ICaRLConfig, "iCaRL: herding exemplars, sigmoid distillation, nearest-mean-of-exemplars")
class ICaRL(DistillBase):
    def setup(self):
        super().setup()
        if self.cfg.buffer_size < 1:
            raise ConfigError(f"icarl: buffer_size must be >= 1, got {self.cfg.buffer_size}")
        self.preprocess = model_preprocess(self.model, self.device)
        self.memory = ExemplarMemory(self.device)
        self.means = None

    def train_data(self, exp):
        if not len(self.memory):
            return exp.train_x, exp.train_y
        return torch.cat([exp.train_x, self.memory.x.to(exp.train_x.device)]), \
            torch.cat([exp.train_y, self.memory.y.to(exp.train_y.device)])

    def loss(self, x, y, t=None):
        xa = self.augmented(x)
        logits = self.model(xa)
        teacher = self.teacher(xa) if self.teacher and self.old_classes else None
        return icarl_bce(logits, y, teacher, self.seen_idx(), self.old_idx() if teacher is not None else self.seen_idx()[:0])

    def features(self, x):
        with in_eval(self.model):
            return batched_apply(self.model.features, x, self.preprocess)

    def after_experience(self, exp):
        super().after_experience(exp)
        m = self.cfg.buffer_size // max(1, len(self.old_classes))
        self.memory.reduce(m)
        new = ~torch.isin(exp.train_y, torch.tensor(self.memory.classes(), dtype=torch.long, device=exp.train_y.device))
        x, y = exp.train_x[new], exp.train_y[new]
        if len(y):
            self.memory.add(x, y, self.features(x), m)
        self.means = class_means(self.features(self.memory.x), self.memory.y, self.info.n_classes)

    def predict(self, x, t=None):
        if self.means is None or not self.cfg.nme:
            return self.model(x)
        return nme_logits(self.model.features(x), self.means)

    def extra_state(self):
        return {**super().extra_state(), "memory": self.memory.state_dict(),
                "means": None if self.means is None else self.means.cpu()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.memory.load_state_dict(state["memory"])
        self.means = None if state["means"] is None else state["means"].to(self.device)
