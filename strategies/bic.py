"""BiC: Large Scale Incremental Learning (Wu, Chen, Wang, Ye, Liu, Guo, Fu, CVPR 2019).

* Memory: herding exemplars under a total budget K (``buffer_size``), K // n_seen per class
  (``strategies._exemplars``). One exemplar in ``val_every`` (by herding rank: ranks val_every-1, 2*val_every-1, ...;
  a prefix-stable split, so cutting the memory keeps the split) is held out as validation; the rest is trained on.
* Stage 1, on experience t > 0 (eq. 1-3): the new data, minus a held-out validation part of as many samples per
  new class as each old class has in validation (the paper's balanced validation set), plus the training
  exemplars; loss (1 - lambda) CE(all seen classes) + lambda KD(old classes, T = 2) against the frozen previous
  model with its own bias correction applied (Mammoth's ``distill_after_bic``), lambda = n_old / (n_old + n_new)
  (the paper; Mammoth uses 1 / (t + 1)). KD is ``cl.models.distill.kd_loss`` times T^2 (Mammoth's form).
* Stage 2 (eq. 4-5): with the model frozen, a bias layer q = alpha * o + beta on the NEW classes' logits only
  (old classes' logits pass through) is fit by CE on the held-out validation set: Adam, lr 1e-3, ``bic_epochs``
  passes (Mammoth: 250) in batches of 32 over the logits computed once. Only the latest bias layer is kept and
  applied at test time (as Mammoth does); no correction after the first experience.

Deviations: the validation samples of new classes are drawn uniformly at random (the torch RNG of the run,
checkpointed), not by herding; ``setting=task`` runs the same procedure (the per-task mask makes stage 2 moot there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, register
from cl.models.distill import kd_loss
from cl.models.task_keys import model_preprocess
from strategies._exemplars import ExemplarMemory
from strategies._reg import batched_apply, in_eval
from strategies.lwf import DistillBase


@dataclass
class BiCConfig(StrategyConfig):
    buffer_size: int = 2000
    temperature: float = 2.0
    val_every: int = 10  # one exemplar in val_every is validation (the paper's 9:1 split)
    bic_epochs: int = 250
    bic_lr: float = 1e-3


def bias_correct(logits, new_idx, alpha, beta):
    """alpha * o + beta on the new classes' logits, the others unchanged."""
    if new_idx is None or not len(new_idx):
        return logits
    cols = logits[:, new_idx] * alpha + beta
    return logits.index_copy(1, new_idx, cols)


@register("bic", BiCConfig, "BiC: distillation + bias correction layer trained on held-out exemplars")
class BiC(DistillBase):
    # the current experience's new classes, held-out validation split and kept indices: recomputed by
    # before_experience before they are read
    transient_attrs = DistillBase.transient_attrs + ("cur_new", "_cur_new_idx", "val_x", "val_y", "_keep")

    def setup(self):
        super().setup()
        if self.cfg.val_every < 2 or self.cfg.buffer_size < 1:
            raise ConfigError(f"bic: val_every must be >= 2 and buffer_size >= 1, got val_every={self.cfg.val_every}, "
                              f"buffer_size={self.cfg.buffer_size}")
        self.preprocess = model_preprocess(self.model, self.device)
        self.memory = ExemplarMemory(self.device)
        self.alpha, self.beta = 1.0, 0.0  # the latest bias layer (plain floats)
        self.new_classes: list[int] = []  # the classes it corrects
        self.teacher_bias = (1.0, 0.0, [])

    def _is_val(self):
        return (self.memory.rank % self.cfg.val_every) == self.cfg.val_every - 1

    def before_experience(self, exp):
        super().before_experience(exp)
        self.teacher_bias = (self.alpha, self.beta, list(self.new_classes))
        self.cur_new = [c for c in self.seen_classes if c not in self.old_classes]
        self._cur_new_idx = torch.tensor(self.cur_new, dtype=torch.long, device=self.device)
        self.val_x = self.val_y = None
        keep = torch.ones(len(exp.train_y), dtype=torch.bool, device=exp.train_y.device)
        if len(self.memory) and self.old_classes:
            v = int(self._is_val().sum()) // max(1, len(self.memory.classes()))  # validation exemplars per old class
            vx, vy = [self.memory.x[self._is_val()]], [self.memory.y[self._is_val()]]
            for c in self.cur_new:
                idx = (exp.train_y == c).nonzero().flatten()
                held = idx[torch.randperm(len(idx), device=idx.device)[:v]]
                keep[held] = False
                vx.append(exp.train_x[held])
                vy.append(exp.train_y[held])
            self.val_x, self.val_y = torch.cat(vx), torch.cat(vy)
        self._keep = keep

    def train_data(self, exp):
        x, y = exp.train_x[self._keep], exp.train_y[self._keep]
        if not len(self.memory):
            return x, y
        tr = ~self._is_val()
        return torch.cat([x, self.memory.x[tr]]), torch.cat([y, self.memory.y[tr]])

    def teacher_logits(self, x):
        a, b, cls = self.teacher_bias
        z = self.teacher(x)
        return bias_correct(z, torch.tensor(cls, dtype=torch.long, device=z.device) if cls else None, a, b)

    def loss(self, x, y, t=None):
        xa = self.augmented(x)
        logits = self.model(xa).float()
        ce = F.cross_entropy(logits, y)
        if not (self.teacher and self.old_classes):
            return ce
        lam = len(self.old_classes) / len(self.seen_classes)
        idx = self.old_idx()
        T = self.cfg.temperature
        kd = kd_loss(logits[:, idx], self.teacher_logits(xa)[:, idx], T, scale_t2=True)
        return (1 - lam) * ce + lam * kd

    def fit_bias(self, logits, y, new_idx):
        """Stage 2: alpha, beta on the new classes' logits by CE on the validation logits (model frozen)."""
        ab = torch.tensor([1.0, 0.0], device=logits.device, requires_grad=True)
        opt = torch.optim.Adam([ab], lr=self.cfg.bic_lr)
        for _ in range(self.cfg.bic_epochs):
            for i in range(0, len(y), 32):
                opt.zero_grad()
                out = bias_correct(logits[i:i + 32], new_idx, ab[0], ab[1])
                F.cross_entropy(out, y[i:i + 32]).backward()
                opt.step()
        return float(ab[0].detach()), float(ab[1].detach())

    def after_experience(self, exp):
        if self.val_y is not None and len(self.val_y):
            with in_eval(self.model):
                z = batched_apply(self.model, self.val_x, self.preprocess).float()
            self.alpha, self.beta = self.fit_bias(z, self.val_y, self._cur_new_idx)
            self.new_classes = list(self.cur_new)
        super().after_experience(exp)
        m = self.cfg.buffer_size // max(1, len(self.old_classes))
        self.memory.reduce(m)
        new = ~torch.isin(exp.train_y, torch.tensor(self.memory.classes(), dtype=torch.long, device=exp.train_y.device))
        if new.any():
            with in_eval(self.model):
                f = batched_apply(self.model.features, exp.train_x[new], self.preprocess)
            self.memory.add(exp.train_x[new], exp.train_y[new], f, m)
        self.val_x = self.val_y = None

    def predict(self, x, t=None):
        z = self.model(x)
        if not self.new_classes:
            return z
        idx = torch.tensor(self.new_classes, dtype=torch.long, device=z.device)
        return bias_correct(z, idx, self.alpha, self.beta)

    def extra_state(self):
        return {**super().extra_state(), "memory": self.memory.state_dict(), "alpha": self.alpha, "beta": self.beta,
                "new_classes": list(self.new_classes)}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.memory.load_state_dict(state["memory"])
        self.alpha, self.beta, self.new_classes = state["alpha"], state["beta"], list(state["new_classes"])
