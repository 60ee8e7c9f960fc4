"""Memory Aware Synapses (Aljundi, Babiloni, Elhoseiny, Rohrbach, Tuytelaars, ECCV 2018).

Importance Omega = mean over the experience's training samples of |d ||f(x)||_2^2 / d theta| (eq. 4-5:
the gradient of the squared L2 norm of the output, per sample, in absolute value, averaged). Loss on later
experiences: CE + lambda * sum Omega (theta - theta*)^2 (eq. 6; no 1/2). Importances accumulate over
experiences (Omega <- Omega + Omega_t; the authors' code accumulates them), theta* = the latest weights.

Choices: f(x) = the logits of the classes seen so far (the head's -inf for unseen classes count as 0);
per-sample gradients (the paper's definition; the authors' code takes |batch gradient| / n, which is
smaller when samples disagree); model in eval mode, no augmentation. lambda = 0.1, not the paper's 1: plain SGD
on the penalty diverges where 2 lr lambda Omega > 2, and Omega reached ~27 (MLP, split MNIST, 3 experiences) and
~38 (small CNN, split CIFAR-10) here, so lambda = 1 at lr 0.05 gave non-finite losses on both (measured).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.task_keys import model_preprocess
from strategies._reg import (
    build_model,
    finite_logits,
    per_sample_grads,
    quad_penalty,
    trainable,
    warn_if_stiff,
)


@dataclass
class MASConfig(StrategyConfig):
    mas_lambda: float = 0.1  # the paper's 1 diverged here (see the docstring)
    importance_chunk: int = 64


def mas_importance(model, x, preprocess, chunk=64) -> dict:
    acc = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
    y = torch.zeros(len(x), dtype=torch.long, device=x.device)  # unused by the loss
    for g in per_sample_grads(model, x, y, lambda out, t: finite_logits(out).pow(2).sum(), preprocess, chunk):
        for n, v in g.items():
            acc[n] += v.abs().sum(0)
    return {n: v / max(1, len(x)) for n, v in acc.items()}


@register("mas", MASConfig, "Memory aware synapses (output-sensitivity importance)")
class MAS(Strategy):
    build_model = classmethod(lambda cls, cfg, backbone, scenario: build_model(cfg, backbone, scenario))

    def setup(self):
        if self.cfg.mas_lambda < 0 or self.cfg.importance_chunk < 1:
            raise ConfigError(f"mas: mas_lambda must be >= 0 and importance_chunk >= 1, got mas_lambda={self.cfg.mas_lambda}, "
                              f"importance_chunk={self.cfg.importance_chunk}")
        self.preprocess = model_preprocess(self.model, self.device)
        self.importance: dict = {}
        self.anchor: dict = {}

    def loss(self, x, y, t=None):
        loss = super().loss(x, y, t)
        if not self.importance:
            return loss
        return loss + self.cfg.mas_lambda * quad_penalty(trainable(self.model), self.importance, self.anchor)

    def after_experience(self, exp):
        imp = mas_importance(self.model, exp.train_x, self.preprocess, self.cfg.importance_chunk)
        self.importance = {n: self.importance.get(n, 0) + v for n, v in imp.items()}
        self.anchor = {n: p.detach().clone() for n, p in trainable(self.model).items()}
        warn_if_stiff("mas", self.cfg.lr, 2 * self.cfg.mas_lambda * max(float(v.max()) for v in self.importance.values()))

    def extra_state(self):
        return {"importance": {n: v.cpu() for n, v in self.importance.items()},
                "anchor": {n: v.cpu() for n, v in self.anchor.items()}}

    def load_extra_state(self, state):
        self.importance = {n: v.to(self.device) for n, v in state["importance"].items()}
        self.anchor = {n: v.to(self.device) for n, v in state["anchor"].items()}
