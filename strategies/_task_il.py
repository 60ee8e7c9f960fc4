"""The task-incremental base shared by PNN, PackNet, HAT, RMN and HNET (see :mod:`cl.models.multihead`).

It checks that the run has task ids, keeps the current task's class mask and task index, trains on logits
restricted to the current task's classes (multi-head), builds a fresh optimiser at every boundary (no
momentum or Adam moments carried from one task's parameters into the next task; the optimiser's state
is empty at a boundary, so a checkpoint taken there resumes exactly), and predicts with the task id."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.core.strategy import Strategy
from cl.models.multihead import class_mask, require_task_ids, restrict, task_index


class TaskILStrategy(Strategy):
    transient_attrs = ('task_mask',)  # recomputed by before_experience
    name = "task-il"

    def setup(self):
        require_task_ids(self.info, self.name)
        self.task = 0
        self.task_mask = torch.ones(self.info.n_classes, dtype=torch.bool, device=self.device)

    def before_experience(self, exp):
        self.task = task_index(exp.task_id)
        self.task_mask = class_mask(exp.classes, self.info.n_classes, self.device)
        self.optimizer = self.make_optimizer()

    def logits(self, x, t):
        """Logits of task ``t`` (an int) -- each strategy's task-conditioned forward."""
        raise NotImplementedError

    def loss(self, x, y, t=None):
        x = self.augmented(x)
        return F.cross_entropy(restrict(self.logits(x, task_index(t)).float(), self.task_mask), y)

    def predict(self, x, t=None):
        return self.logits(x, task_index(t))
