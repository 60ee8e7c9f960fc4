"""PackNet (Mallya & Lazebnik, CVPR 2018, arXiv 1711.05769): iterative pruning packs tasks into one network.

Task ``t`` trains the weights that no earlier task owns (the others are used but frozen).  After its
epochs, in every Conv2d / Linear layer of the backbone, the ``prune_ratio`` smallest-magnitude of the
weights task ``t`` trained are set to zero and released; the rest become task ``t``'s (owner ``t+1``) and
are retrained alone for ``retrain_epochs`` at ``lr * retrain_lr_factor`` (released weights stay zero).
Released weights are the next task's free weights (trained from zero, as in the authors' code).  At test
time task ``k`` uses the weights owned by tasks ``0..k`` and zeros the others, so training later tasks
leaves its outputs bitwise unchanged.

Following the authors' code (``src/prune.py``, ``scripts/run_sequence.sh``): pruning per layer by
magnitude; biases and BatchNorm (affine and statistics) trained on the first task only; the last task is
not pruned by default (``prune_last``); retraining is half of training there (10 of 20 epochs at a tenth
of the learning rate) -- here ``retrain_epochs`` is absolute (default 1) because the strategy does not
see the protocol's epochs.  The classifier is multi-head: one shared ``IncrementalLinear`` trained on
logits restricted to the task's classes, so other tasks' rows get no gradient; it is not pruned.
Frozen weights get zero gradient and are restored after every optimiser step (exact even with weight
decay or momentum).  Needs task ids (``setting=task``).  The retraining pass runs inside
``after_experience`` over the experience's training data with the scenario's preprocessing (kept on the
model by ``build_model``) and the run's augmentation, at the largest batch size seen in the experience.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, make_optimizer, register
from cl.models.model import Model, head_of
from cl.models.multihead import drop_shared_grads, freeze_batchnorm
from strategies._task_il import TaskILStrategy


@dataclass
class PackNetConfig(StrategyConfig):
    prune_ratio: float = 0.5  # fraction of a task's trained weights released per layer (paper: 0.5 / 0.75)
    retrain_epochs: int = 1  # retraining after pruning (authors: 10 after 20 epochs of training)
    retrain_lr_factor: float = 0.1
    prune_last: bool = False  # the authors do not prune the last task of a sequence


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the weight tensors of the backbone's Conv2d / Linear layers (the packed ones)."""
    return [f"backbone.{n}.weight" if n else "backbone.weight" for n, m in model.backbone.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


@register("packnet", PackNetConfig)
class PackNet(TaskILStrategy):
    """Iterative magnitude pruning and retraining; per-task weight ownership; task-IL."""
    transient_attrs = ('batch_size', 'snapshot', 'trainable')  # recomputed by before_experience

    name = "packnet"

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        model = Model(backbone, head_of(cfg, backbone.out_dim, scenario.n_classes))
        model.preprocess_fn = scenario.preprocess_fn  # for the retraining pass in after_experience
        return model

    def setup(self):
        super().setup()
        if not 0.0 <= self.cfg.prune_ratio < 1.0:
            raise ConfigError(f"strategy.prune_ratio={self.cfg.prune_ratio}: must be in [0, 1)")
        if self.cfg.retrain_epochs < 0 or self.cfg.retrain_lr_factor <= 0:
            raise ConfigError(f"packnet: retrain_epochs must be >= 0 and retrain_lr_factor > 0, got retrain_epochs="
                              f"{self.cfg.retrain_epochs}, retrain_lr_factor={self.cfg.retrain_lr_factor}")
        params = dict(self.model.named_parameters())
        self.layers = prunable_layers(self.model)
        self.owner = {n: torch.zeros_like(params[n], dtype=torch.int16) for n in self.layers}  # 0 = free
        self.packed = False  # has the current task been pruned and given its weights?
        self.batch_size = 1

    # -- parameters each phase may change ---------------------------------------------------------
    def _begin_phase(self, trainable: dict) -> None:
        params = dict(self.model.named_parameters())
        self.trainable = trainable
        self.snapshot = {n: params[n].detach().clone() for n in self.layers}

    def before_experience(self, exp):
        super().before_experience(exp)
        self.packed = False
        self.batch_size = 1
        self._begin_phase({n: o == 0 for n, o in self.owner.items()})

    def _step(self, x, y, t):
        self.model.train()
        if self.task > 0:
            freeze_batchnorm(self.model.backbone)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y, t)
        loss.backward()
        params = dict(self.model.named_parameters())
        if self.task > 0:  # biases and BatchNorm: first task only
            drop_shared_grads(self.model.backbone)
        for n in self.layers:
            if params[n].grad is not None:
                params[n].grad.mul_(self.trainable[n])
        self.optimizer.step()
        with torch.no_grad():
            for n in self.layers:
                params[n].copy_(torch.where(self.trainable[n], params[n], self.snapshot[n]))
        return loss.detach()

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        self.batch_size = max(self.batch_size, len(y))
        loss = self._step(x, y, t)
        self.after_step(x, y, t)
        return loss

    # -- pruning and retraining ------------------------------------------------------------------
    @torch.no_grad()
    def prune(self) -> None:
        """Release the ``prune_ratio`` smallest-magnitude weights of the current task in every layer."""
        params = dict(self.model.named_parameters())
        last = self.task + 1 >= self.info.n_experiences
        ratio = 0.0 if last and not self.cfg.prune_last else self.cfg.prune_ratio
        for n in self.layers:
            w, mine = params[n], self.owner[n] == 0
            k = round(ratio * int(mine.sum()))
            keep = mine.clone()
            if k > 0:
                cutoff = w[mine].abs().kthvalue(k).values
                keep &= w.abs() > cutoff
                w[mine & ~keep] = 0.0
            self.owner[n][keep] = self.task + 1

    def after_experience(self, exp):
        self.prune()
        self.packed = True
        if self.cfg.retrain_epochs > 0:
            self._begin_phase({n: o == self.task + 1 for n, o in self.owner.items()})
            self.optimizer = make_optimizer(self.model.parameters(),
                                            dataclasses.replace(self.cfg, lr=self.cfg.lr * self.cfg.retrain_lr_factor))
            preprocess = self.model.preprocess_fn(self.device)
            x_all, y_all = self.train_data(exp)
            n, bs = len(y_all), self.batch_size
            for _ in range(self.cfg.retrain_epochs):
                perm = torch.randperm(n, device=y_all.device)
                for s in range(0, n, bs):
                    idx = perm[s:s + bs]
                    self._step(preprocess(x_all[idx]), y_all[idx], exp.task_id)

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x, t):
        if t == self.task and not self.packed:  # the current task, still training: every weight
            return self.model(x)
        params = dict(self.model.named_parameters())
        for n in self.layers:
            o = self.owner[n]
            params[n] = params[n] * ((o >= 1) & (o <= t + 1))
        return functional_call(self.model, params, (x,))

    def extra_metrics(self) -> dict:
        """Fraction of each layer's weights owned by some task after the last one."""
        return {"weights_used": [round(float((o > 0).float().mean()), 4) for o in self.owner.values()]}

    def extra_state(self):
        return {"owner": dict(self.owner), "packed": self.packed, "task": self.task}

    def load_extra_state(self, state):
        self.owner = {n: v.to(self.device) for n, v in state["owner"].items()}
        self.packed, self.task = state["packed"], state["task"]
