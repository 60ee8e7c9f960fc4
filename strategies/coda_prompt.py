"""CODA-Prompt: COntinual Decomposed Attention-based Prompting (Smith et al., CVPR 2023).

Official code: GT-RIPL/CODA-Prompt (``models/zoo.py`` ``CodaPrompt``, ``learners/prompt.py``, ``configs/*.yaml``,
``experiments/*.sh``), read for this file.

A frozen pretrained backbone, a linear classifier over all classes, and at each prefix layer ``l`` in ``layers``
(default 0-4) a set of ``pool_size`` (M = 100) prompt components ``P_m`` (``length`` = 8 tokens each) with keys
``K_m`` and attention vectors ``A_m`` (both of the query's size).  For a query ``q`` (the frozen backbone's own
feature of the un-prompted input, class token on ViTs)::

    alpha_m = cos(q * A_m, K_m)            (element-wise product, then cosine)
    p       = sum_m alpha_m P_m            -> [length, D]
    prefix  = first length/2 tokens as keys, last length/2 as values   (official ``Ek = P_[:, :i]``)

Every task owns M / n_tasks consecutive components.  While task t trains, the components of tasks < t take part
but are **frozen** (the official code detaches them; here they are separate parameters that the optimiser is not
given, so neither gradients nor weight decay nor momentum can move them) and the components of later tasks are
not used; at test time all components of the tasks seen so far are used.  The new task's ``P``, ``K`` and ``A``
are re-initialised at its start by Gram-Schmidt, orthogonal to the span of the earlier tasks' components
(:func:`cl.models.prompts.gram_schmidt_rows`; the official code's "spirit of continual learning" variant).

Loss: CE over the current task's classes (logits of other classes at -inf, the official ``logits[:, :last_valid]
= -inf`` restricted to seen outputs) + ``ortho_coef`` * sum over layers of the orthogonality penalty
``mean((X X^T - I)^2)`` for ``X`` = K, A and the flattened P of the components in use (earlier ones detached,
as in the official code).  ``ortho_coef`` defaults to 0.0: the official release scripts run ``--prompt_param
100 8 0.0`` and its README says the Gram-Schmidt initialisation makes the penalty unnecessary; set it > 0 to
use the regulariser.

Defaults (official ``configs/cifar-100_prompt.yaml``): Adam (betas 0.9, 0.999), lr 0.001, batch 128, 20 epochs
(ImageNet-R config: 50); components initialised as above, no gradient clipping.

Deviations: no cosine learning-rate schedule (the engine has no scheduler hook); Gram-Schmidt against a QR
basis of the earlier components (the official code projects on each earlier component in turn -- equal while
they are orthogonal); if the components outnumber a vector's dimension (a tiny test model), the rows that cannot
be orthogonal are plain random unit vectors.  Readout: class token on ViTs (official ``out[:, 0, :]``), the mean
of the real tokens on MiniLM (``readout=auto``; a deviation on text backbones).

Backbones: timm ViTs and MiniLM (others raise a ConfigError).  ``layers=None`` takes the paper's 0-4 that the
backbone has; explicit indices beyond its depth are a ConfigError.  Needs task boundaries.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.heads import IncrementalLinear
from cl.models.prompts import (PrefixModel, check_layers, default_layers, depth, gram_schmidt_rows, ortho_penalty,
                               resolve_readout)
from cl.models.task_keys import by_length, trim_padding
from cl.models.multihead import class_mask
from strategies._boundaries import require_boundaries

LAYERS = (0, 1, 2, 3, 4)


@dataclass
class CodaPromptConfig(StrategyConfig):
    lr: float = 0.001
    optimizer: str = "adam"
    pool_size: int = 100  # M components per layer, split evenly over the tasks
    length: int = 8  # tokens per component: length/2 key + length/2 value prefix tokens
    layers: list[int] | None = None  # None: the paper's 0-4
    ortho_coef: float = 0.0  # official scripts: 0.0 (Gram-Schmidt init per task)
    class_mask: bool = True
    readout: str = "auto"  # auto | cls | mean | default


class CodaPromptModel(PrefixModel):
    """Per layer and task: components ``P[l][t]`` [pt, length, D], keys ``K[l][t]`` and attention ``A[l][t]`` [pt, dq]."""

    def __init__(self, backbone, head, layers, n_tasks, per_task, length, readout):
        super().__init__(backbone, head, layers, readout, "coda-prompt")
        D, dq = backbone.prompt_dim, backbone.out_dim
        self.layers, self.n_tasks, self.per_task, self.length = list(layers), n_tasks, per_task, length

        def chunks(*shape):
            return nn.ParameterList([nn.Parameter(torch.zeros(per_task, *shape)) for _ in range(n_tasks)])

        self.P = nn.ModuleList([chunks(length, D) for _ in layers])
        self.K = nn.ModuleList([chunks(dq) for _ in layers])
        self.A = nn.ModuleList([chunks(dq) for _ in layers])
        self.register_buffer("n_used", torch.ones((), dtype=torch.long))  # tasks whose components take part

    def groups(self):
        for j in range(len(self.layers)):
            for name, plist in (("P", self.P[j]), ("K", self.K[j]), ("A", self.A[j])):
                yield j, name, plist

    def task_parameters(self, t: int) -> list:
        return [plist[t] for _, _, plist in self.groups()]

    @torch.no_grad()
    def init_task(self, t: int, generator: torch.Generator) -> None:
        """Gram-Schmidt init of task ``t``'s components, orthogonal to those of tasks < t (per layer and kind)."""
        for _, _, plist in self.groups():
            full = torch.cat([p.detach() for p in plist[:t + 1]])
            start, stop = t * self.per_task, (t + 1) * self.per_task
            d = full[0].numel()
            ok = min(stop, d)
            if ok < stop:  # stacklevel 3: past torch.no_grad's wrapper, at the caller (before_experience)
                warnings.warn(f"coda-prompt: {stop} components cannot be orthogonal in dimension {d}; the last "
                              f"{stop - max(ok, start)} are random unit vectors", stacklevel=3)
            new = gram_schmidt_rows(full, start, max(ok, start), generator) if ok > start else full
            for r in range(max(ok, start), stop):
                v = torch.randn(d, generator=generator)
                new[r] = (v / v.norm()).reshape(new[r].shape).to(new.device, new.dtype)
            plist[t].copy_(new[start:stop])

    def used(self, j: int, name: str, train: bool) -> torch.Tensor:
        plist = dict(P=self.P, K=self.K, A=self.A)[name][j]
        n = int(self.n_used)
        parts = [plist[i].detach() if train and i < n - 1 else plist[i] for i in range(n)]
        return torch.cat(parts)

    def per_layer(self, q: torch.Tensor, train: bool, ortho_terms: bool = False):
        out, ortho = {}, q.new_zeros(())
        half = self.length // 2
        for j, layer in enumerate(self.layers):
            P, K, A = (self.used(j, n, train) for n in ("P", "K", "A"))
            qa = F.normalize(q.unsqueeze(1) * A.unsqueeze(0), dim=-1)  # [B, k, dq]: q * A_m, normalised
            alpha = torch.einsum("bkd,kd->bk", qa, F.normalize(K, dim=-1))  # cos(q * A_m, K_m)
            p = torch.einsum("bk,kld->bld", alpha, P)  # [B, length, D]
            out[layer] = (p[:, :half], p[:, half:])
            if ortho_terms:
                ortho = ortho + ortho_penalty(K) + ortho_penalty(A) + ortho_penalty(P)
        return out, ortho

    def forward(self, x, train: bool = False, ortho: bool = False):
        q = self.query(x)
        per_layer, ortho = self.per_layer(q, train, ortho)
        logits = self.head(self.features(x, per_layer))
        return (logits, ortho) if train else logits


@register("coda-prompt", CodaPromptConfig)
class CodaPrompt(Strategy):
    """CODA-Prompt: attention-weighted prompt components (M=100, L=8, layers 0-4), earlier tasks' components frozen."""

    state_attrs = ("task",)
    transient_attrs = ("current",)

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        n = depth(backbone, "coda-prompt")
        layers = default_layers(LAYERS, n) if cfg.layers is None else check_layers("layers", cfg.layers, n)
        n_tasks = len(scenario)
        if cfg.pool_size < n_tasks:
            raise ConfigError(f"coda-prompt pool_size={cfg.pool_size}: every task owns pool_size / n_tasks "
                              f"components and the scenario has {n_tasks} tasks; valid: pool_size >= {n_tasks}")
        if cfg.length < 2 or cfg.length % 2:
            raise ConfigError(f"coda-prompt length={cfg.length}: half key, half value tokens; valid: an even "
                              f"number >= 2")
        return CodaPromptModel(backbone, IncrementalLinear(backbone.prompt_dim, scenario.n_classes), layers, n_tasks,
                               cfg.pool_size // n_tasks, cfg.length, resolve_readout(cfg.readout, backbone))

    def setup(self):
        require_boundaries(self, "it gives every task its own components")
        self.task = -1
        self.current = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)

    def make_optimizer(self):
        t = max(getattr(self, "task", 0), 0)
        return make_optimizer([*self.model.task_parameters(t), *self.model.head.parameters()], self.cfg)

    def before_experience(self, exp):
        self.task += 1
        self.current.copy_(class_mask(exp.classes, self.info.n_classes, self.device))
        g = torch.Generator().manual_seed(int(self.info.seed) * 1009 + self.task)
        self.model.init_task(self.task, g)
        self.model.n_used.fill_(self.task + 1)
        self.optimizer = self.make_optimizer()  # only task t's components and the head move

    def loss(self, x, y, t=None):
        x = trim_padding(self.augmented(x))
        logits, ortho = self.model(x, train=True, ortho=bool(self.cfg.ortho_coef))
        if self.cfg.class_mask:
            logits = logits.masked_fill(~self.current, float("-inf"))
        loss = F.cross_entropy(logits.float(), y)
        return loss + self.cfg.ortho_coef * ortho if self.cfg.ortho_coef else loss

    def predict(self, x, t=None):
        return by_length(self.model, x)
