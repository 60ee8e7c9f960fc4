"""EASE: Expandable Subspace Ensemble for pre-trained model-based class-incremental learning.

Zhou, Sun, Ye, Zhan, "Expandable Subspace Ensemble for Pre-Trained Model-Based Class-Incremental Learning",
CVPR 2024 (arXiv 2403.12030).  Code read: sun-hailong/CVPR24-Ease@6d67508 ``models/ease.py``,
``backbone/vit_ease.py``, ``backbone/linears.py`` (``EaseCosineLinear.forward_reweight``), ``exps/*.json``
and its ``logs/``; LAMDA-PILOT ``models/ease.py`` is the same file.

Mechanism
* **One adapter set per task** (an AdaptFormer adapter parallel to every block's MLP: bottleneck 64, scale
  0.1, dropout 0.1, zero-init up-projection; cl.models.petl.AdapterBank).  At each task boundary the earlier
  sets are frozen and a new one is added; the backbone stays frozen.  Task t trains set t only, with a fresh
  cosine head ``sigma * cos(phi_t(x), w_c)`` (learnable sigma, init 1; weights U(-1/sqrt(d), 1/sqrt(d)))
  over the task's classes and cross-entropy on local labels.
* **Subspaces**: phi_s(x) = the backbone's feature with set s active; the model's feature is the
  concatenation [phi_0(x); ...; phi_t(x)] (t+1 forward passes at test time, PILOT's ``forward_test``).
* **Prototypes** P[c, s] = mean of phi_s over class c's un-augmented training data, computed when c is
  learnt, for every subspace s that exists then (s <= task(c)).
* **Semantic-guided prototype complement** (old classes in new subspaces, no old data): for an old task i
  and each later subspace s in i+1..t, with N = the classes of tasks >= s,
  sim = softmax_row(cos(P[old_i, i], P[N, i])) and P[old_i, s] = sim @ P[N, s]
  (``solve_sim_reset`` with ``recalc_sim=True``, the released default: recomputed after every task over
  all classes learnt since s; the softmax has temperature 1, as in the code).
* **Prediction** (``forward_reweight``): for class c of task i,
  logit_c = cos(phi_i(x), P[c, i]) + alpha / t * sum_{s != i} cos(phi_s(x), P[c, s]), alpha = 0.1; each
  subspace is normalised separately; classes not seen yet get -inf.

Defaults and their source (``exps/ease_cifar.json``): SGD momentum 0.9, lr 0.025, weight decay 5e-4, batch 48,
20 epochs per task (``init_epochs`` = ``later_epochs`` = 20), cosine lr to 0 per task; ImageNet-R
(``ease_inr.json``): lr 0.05, wd 5e-3, batch 16.  ``session_epochs=[20, 20]`` repeats each task's data that
many times with a per-sample cosine schedule (run it with ``protocol.epochs=1``); ``None`` (default) trains
``protocol.epochs`` per task at a constant lr.  Not provided: the code's switches off the default path
(``use_init_ptm``/``beta``: the pretrained feature as an extra subspace; ``use_diagonal``; ``use_old_data``;
``moni_adam``; ``recalc_sim=False``).

Deviations: the cosine schedule is per sample, not per epoch; the adapter is attached to timm's ``Block`` by
hooks (the code re-implements the block; same function).

Backbones: timm ViTs and MiniLM (on BERT layers the adapter reads the attention output and is added to the
FFN output before its LayerNorm).  An adapter on a CNN (EfficientNet-Lite0) is not the paper's method: a
backbone without transformer blocks is a ConfigError that names the ones that work.  Needs visible task
boundaries and class-incremental (or task-incremental) labels: a class belongs to the task that introduced
it, so a domain-incremental stream is a ConfigError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.heads import cosine_logits
from cl.models.petl import AdapterBank, transformer_family
from cl.models.task_keys import by_length, freeze_batchnorm, remember_preprocess, trim_padding
from strategies._sessions import SessionMixin, repeated

WORKING = "timm ViTs (vit-tiny, timm:vit_*) and minilm"


@dataclass
class EASEConfig(StrategyConfig):
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_lr: float = 0.0
    bottleneck: int = 64  # ffn_num
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.1
    alpha: float = 0.1  # weight of the other subspaces in the prediction
    session_epochs: list[int] | None = None  # [first task, later tasks], e.g. [20, 20]; None: protocol.epochs
    feature_batch: int = 256

    def validate(self):
        if self.session_epochs is not None and (not 1 <= len(self.session_epochs) <= 2
                                                or any(int(e) < 1 for e in self.session_epochs)):
            raise ConfigError(f"strategy.session_epochs={self.session_epochs!r}: give [first, later] epochs "
                              f"(each >= 1), one value for all tasks, or null for protocol.epochs")
        if self.bottleneck < 1:
            raise ConfigError(f"strategy.bottleneck={self.bottleneck!r} must be >= 1")


def ease_logits(feats: torch.Tensor, protos: torch.Tensor, class_task: torch.Tensor, alpha: float) -> torch.Tensor:
    """Logits (B, C) from subspace features (B, S, d), prototypes (C, S, d) and each class's task (C,)
    (-1: not learnt; -inf logit): own subspace weight 1, the others alpha / (S - 1)."""
    S = feats.shape[1]
    if S == 0:  # nothing learnt yet
        return torch.full((feats.shape[0], protos.shape[0]), float("-inf"), device=feats.device)
    sims = torch.einsum("bsd,csd->bcs", F.normalize(feats, dim=-1), F.normalize(protos[:, :S], dim=-1))
    own = F.one_hot(class_task.clamp_min(0), S).to(sims.dtype)
    w = own + (1 - own) * (alpha / (S - 1) if S > 1 else 0.0)
    logits = (sims * w).sum(-1)
    return logits.masked_fill(class_task < 0, float("-inf"))


def complement(protos: torch.Tensor, class_task: torch.Tensor, t: int) -> None:
    """Fill P[old classes, later subspaces] in place after task t (``solve_sim_reset``)."""
    for i in range(t):
        old = torch.nonzero(class_task == i).flatten()
        if len(old) == 0:
            continue
        for s in range(i + 1, t + 1):
            new = torch.nonzero(class_task >= s).flatten()
            if len(new) == 0:
                continue
            sim = cosine_logits(protos[old, i], protos[new, i]).softmax(dim=1)  # (|old|, |new|)
            protos[old, s] = sim @ protos[new, s]


class EASEModel(nn.Module):
    """Frozen backbone + one adapter set per task, a per-task cosine training head, subspace prototypes."""

    def __init__(self, backbone: nn.Module, bank: AdapterBank, n_classes: int, n_tasks: int):
        super().__init__()
        self.backbone = backbone
        self.bank = bank
        d = backbone.out_dim
        self.proxy = nn.Parameter(torch.empty(n_classes, d))
        self.sigma = nn.Parameter(torch.ones(1))
        self.reset_proxy(torch.arange(n_classes))
        self.register_buffer("protos", torch.zeros(n_classes, n_tasks, d))
        self.register_buffer("class_task", torch.full((n_classes,), -1, dtype=torch.long))
        self.alpha = 0.1

    @torch.no_grad()
    def reset_proxy(self, rows: torch.Tensor) -> None:
        d = self.proxy.shape[1]
        self.proxy[rows] = torch.empty(len(rows), d, device=self.proxy.device).uniform_(-1 / math.sqrt(d),
                                                                                       1 / math.sqrt(d))
        self.sigma.fill_(1.0)

    def subspace(self, x, s: int):
        with self.bank.using(s):
            return self.backbone(x).float()

    def subspaces(self, x) -> torch.Tensor:
        """(B, S, d): the feature under every adapter set."""
        if self.bank.n_sets == 0:
            return torch.zeros(len(x), 0, self.proxy.shape[1], device=self.proxy.device)
        return torch.stack([self.subspace(x, s) for s in range(self.bank.n_sets)], dim=1)

    def features(self, x):
        return self.subspaces(x).flatten(1)

    def forward(self, x):
        return ease_logits(self.subspaces(x), self.protos, self.class_task, self.alpha)

    def observe(self, y):  # classes are registered with their task when their prototypes are computed
        pass

    @property
    def seen(self):
        return self.class_task >= 0


@register("ease", EASEConfig)
class EASE(SessionMixin, Strategy):
    """EASE: a new adapter per task (earlier ones frozen), concatenated subspaces, prototype complement."""

    @classmethod
    def build_model(cls, cfg: EASEConfig, backbone, scenario):
        if transformer_family(backbone) is None:
            raise ConfigError(f"ease adds AdaptFormer adapters to transformer blocks: it works on {WORKING}; "
                              f"{type(backbone).__name__} has none (an adapter on a CNN is not the paper's method)")
        for p in backbone.parameters():
            p.requires_grad_(False)
        bank = AdapterBank(backbone, cfg.bottleneck, cfg.adapter_scale, cfg.adapter_dropout)
        model = EASEModel(backbone, bank, scenario.n_classes, len(scenario))
        model.alpha = float(cfg.alpha)
        remember_preprocess(model, scenario)
        return model

    def make_optimizer(self):
        m = self.model
        params = [p for p in m.bank.parameters() if p.requires_grad] + [m.proxy, m.sigma]
        return make_optimizer(params, self.cfg)

    def setup(self):
        if self.info.setting == "domain":
            raise ConfigError("ease assigns each class to the task that introduced it: scenario setting=domain is "
                              "not supported; use setting=class or task")
        self.setup_sessions("ease")

    def _grow_to(self, n: int) -> None:
        """Adapter sets 0..n-1 with only the last trainable (the state at task n-1)."""
        bank = self.model.bank
        while bank.n_sets < n:
            bank.add_set()
        for s in range(bank.n_sets):
            bank.set_trainable(s, s == n - 1)

    def before_experience(self, exp):
        se = self.cfg.session_epochs
        self.start_session(exp, (se[0] if self.session < 0 or len(se) == 1 else se[1]) if se else None)
        if self.session >= self.model.protos.shape[1]:
            raise ConfigError(f"ease was built for {self.model.protos.shape[1]} tasks; experience {self.session} is one more")
        cls = torch.as_tensor(exp.classes, device=self.device)
        if bool((self.model.class_task[cls] >= 0).any()):
            raise ConfigError("ease: a class of this experience was learnt in an earlier one (domain-incremental "
                              "labels); ease needs each class in one task")
        self._grow_to(self.session + 1)  # freeze the earlier sets, add this task's
        self.model.reset_proxy(cls)  # a fresh training head for the task (PILOT: a new proxy_fc)
        self.optimizer = self.make_optimizer()

    def train_data(self, exp):
        x, y = super().train_data(exp)
        return repeated(x, y, self._repeat)

    def train_step(self, x, y, t=None):
        self.schedule.step(self.optimizer, self.cfg.lr, len(y), self.cfg.min_lr)
        return super().train_step(x, y, t)

    def loss(self, x, y, t=None):
        freeze_batchnorm(self.model.backbone)
        x = trim_padding(self.augmented(x))
        h = self.model.subspace(x, self.session)
        logits = self.model.sigma * cosine_logits(h, self.model.proxy)
        return F.cross_entropy(logits.masked_fill(~self.current, float("-inf")), y)

    @torch.no_grad()
    def after_experience(self, exp):
        m, t = self.model, self.session
        f = self.featurise(self.model.subspaces, exp.train_x, self.cfg.feature_batch)  # (n, t+1, d)
        y = exp.train_y.to(self.device)
        for c in exp.classes:
            fc = f[y == c]
            if len(fc):
                m.protos[c, : t + 1] = fc.mean(0)
                m.class_task[c] = t
        complement(m.protos, m.class_task, t)

    def predict(self, x, t=None):
        return by_length(self.model, x)

    def load_state_dict(self, state):
        n = int(state.get("extra", {}).get("session", -1)) + 1
        if n > 0:  # rebuild the adapter sets (and the optimiser over the last one) before loading their weights
            self._grow_to(n)
            self.optimizer = self.make_optimizer()
        super().load_state_dict(state)

    def extra_metrics(self) -> dict:
        return {"n_adapters": self.model.bank.n_sets, **super().extra_metrics()}
