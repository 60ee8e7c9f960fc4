"""RMN: Relevance Mapping Networks (Kaushik, Shivappriya, et al., "Understanding Catastrophic Forgetting and
Remembering in Continual Learning with Optimal Relevance Mapping", arXiv 2102.11343), task-incremental.

Every Conv2d / Linear weight ``W`` of the backbone is shared by all tasks; each task ``t`` learns its own
relevance map ``M_t`` of the same shape, and task ``t`` runs with ``W * M_t``.  The maps are binary in the
forward pass (``M_t = 1[S_t > threshold]`` of real-valued scores ``S_t``) and trained through a
straight-through estimator (the gradient of ``M_t`` is passed to ``S_t``), with an L1 penalty
``sparsity * ||S_t||_1`` that drives the maps towards few relevant weights, so tasks overlap only where it
helps (the paper's "optimal overlap").  After task ``t`` its map is fixed, and the weights relevant to it
(``M_t = 1``) are frozen for every later task; weights no earlier map uses stay free.  A later task may
reuse (read) frozen weights through its own map.  At test time task ``k`` uses ``W * M_k``: its relevant
weights never change afterwards and every other weight is multiplied by an exact zero, so its outputs
stay bitwise unchanged.

No code from the authors was available to read; this follows the paper's description and these choices,
which are ours: binary maps with a straight-through estimator and Piggyback's scale (scores initialised at
``map_init = 0.01``, ``threshold = 0.005``; Mallya et al. 2018); the L1 weight ``sparsity = 1e-4`` per score (with SGD the scores move by ``lr * sparsity`` a step, so at short
budgets the maps stay dense and later tasks mostly reuse frozen weights: ``weights_used`` in the metrics
shows how much of each layer the maps took);
biases and BatchNorm trained on the first task only (as PackNet); frozen weights restored after every
optimiser step (exact with momentum / weight decay); multi-head classifier by logit restriction; the
paper's unsupervised task detection (catastrophic remembering) is not implemented -- task ids are given
(``setting=task``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, register
from cl.models.model import Model, head_of
from cl.models.multihead import drop_shared_grads, freeze_batchnorm, restrict
from strategies._task_il import TaskILStrategy
from strategies.packnet import prunable_layers


@dataclass
class RMNConfig(StrategyConfig):
    map_init: float = 0.01
    threshold: float = 0.005
    sparsity: float = 1e-4  # L1 weight on the current task's scores


class RMNModel(nn.Module):
    def __init__(self, net: Model, n_tasks: int, map_init: float):
        super().__init__()
        self.net = net
        self.layers = prunable_layers(net)
        params = dict(net.named_parameters())
        self.scores = nn.ModuleList(
            nn.ParameterList(nn.Parameter(torch.full_like(params[n], map_init)) for n in self.layers)
            for _ in range(n_tasks))

    def observe(self, y):
        self.net.observe(y)

    def maps(self, t: int, threshold: float, ste: bool) -> list[torch.Tensor]:
        out = []
        for s in self.scores[t]:
            m = (s > threshold).to(s.dtype)
            out.append(m + s - s.detach() if ste else m)  # value: exactly m; gradient: to s
        return out

    def forward(self, x, t: int, threshold: float, ste: bool = False):
        params = dict(self.net.named_parameters())
        for n, m in zip(self.layers, self.maps(t, threshold, ste)):
            params[n] = params[n] * m
        return functional_call(self.net, params, (x,))


@register("rmn", RMNConfig)
class RMN(TaskILStrategy):
    """Per-task binary relevance maps over shared weights; weights relevant to earlier tasks frozen."""
    transient_attrs = ('snapshot',)  # recomputed by before_experience

    name = "rmn"

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        net = Model(backbone, head_of(cfg, backbone.out_dim, scenario.n_classes))
        return RMNModel(net, len(scenario), cfg.map_init)

    def setup(self):
        super().setup()
        if self.cfg.sparsity < 0:
            raise ConfigError(f"rmn: sparsity must be >= 0 (an L1 weight), got sparsity={self.cfg.sparsity}")
        params = dict(self.model.net.named_parameters())
        self.used = {n: torch.zeros_like(params[n], dtype=torch.bool) for n in self.model.layers}  # union of maps

    def before_experience(self, exp):
        super().before_experience(exp)
        params = dict(self.model.net.named_parameters())
        self.snapshot = {n: params[n].detach().clone() for n in self.model.layers}

    def logits(self, x, t):
        return self.model(x, t, self.cfg.threshold)

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        self.model.train()
        if self.task > 0:
            freeze_batchnorm(self.model.net)
        self.optimizer.zero_grad(set_to_none=True)
        x = self.augmented(x)
        logits = self.model(x, self.task, self.cfg.threshold, ste=True)
        ce = nn.functional.cross_entropy(restrict(logits.float(), self.task_mask), y)
        loss = ce + self.cfg.sparsity * sum(s.abs().sum() for s in self.model.scores[self.task])
        loss.backward()
        params = dict(self.model.net.named_parameters())
        if self.task > 0:
            drop_shared_grads(self.model.net.backbone)
            for n in self.model.layers:
                if params[n].grad is not None:
                    params[n].grad.masked_fill_(self.used[n], 0.0)
        self.optimizer.step()
        if self.task > 0:
            with torch.no_grad():
                for n in self.model.layers:
                    params[n].copy_(torch.where(self.used[n], self.snapshot[n], params[n]))
        self.after_step(x, y, t)
        return loss.detach()

    @torch.no_grad()
    def after_experience(self, exp):
        for n, m in zip(self.model.layers, self.model.maps(self.task, self.cfg.threshold, ste=False)):
            self.used[n] |= m.bool()

    def extra_metrics(self) -> dict:
        """Fraction of each layer's weights relevant to some task (frozen), after the last task."""
        return {"weights_used": [round(float(u.float().mean()), 4) for u in self.used.values()]}

    def extra_state(self):
        return {"used": dict(self.used)}

    def load_extra_state(self, state):
        self.used = {n: v.to(self.device) for n, v in state["used"].items()}
