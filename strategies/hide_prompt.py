"""HiDe-Prompt: Hierarchical Decomposition of Prompt-Based Continual Learning (Wang et al., NeurIPS 2023).

Official code: thu-ml/HiDe-Prompt (``engines/hide_tii_engine.py``, ``engines/hide_promtp_wtp_and_tap_engine.py``,
``peft/prompt/hide_prompt.py``, ``vits/hide_prompt_vision_transformer.py``, ``configs/cifar100_hideprompt_5e.py``,
``training_scripts/train_cifar100_vit.sh``), read for this file.

The paper decomposes the class-incremental objective into three parts, each optimised explicitly:

1. **Within-task prediction (WTP).**  One task-specific prompt ``e_t`` per task, attached by prefix tuning at
   ``layers`` (default 0-4; ``length`` = 5 key + 5 value tokens per layer, official ``--length 5``), trained on
   task t with CE over the task's classes plus a **contrastive regulariser** (official ``orth_loss``):
   ``reg`` * CE(M M^T / 0.8, identity) with ``M`` = [the stored prototypes (cluster means) of the instructed
   features of earlier classes ; the batch's instructed features], which pushes the new task's representations
   away from the old classes' prototypes and from each other.  ``e_t`` starts as a copy of ``e_{t-1}`` (official
   ``shared_prompt_pool``) and is used, during training and for good after it, as the ensemble
   ``(1 - prompt_momentum) e_t + prompt_momentum * mean(e_0..e_{t-1})`` (official ``prompt_momentum`` 0.01).
2. **Task-identity inference (TII).**  On the *uninstructed* representation (the frozen backbone's feature without
   prompts) an MLP (official ``MlpMapping``, hidden 2 x D, residual, LayerNorm) and a linear layer over all classes,
   trained on task t's data with CE over its classes; after each task t > 0 it is aligned on Gaussian samples of
   every seen class's uninstructed statistics.  At test time the predicted class's task picks the prompt.
3. **Task-adaptive prediction (TAP).**  After each task t > 0 the classifier is trained on Gaussian samples of the
   *instructed* statistics of every seen class (feature of class c under its own task's prompt), over all seen
   classes: ``ca_epochs`` epochs of SGD (lr ``ca_lr`` 0.005, momentum 0.9, weight decay 5e-4, cosine), per epoch
   ``ca_batch`` samples per class and cluster, as many steps as there are classes of earlier tasks (as the code).

Statistics: per class, ``n_centroids`` (10) k-means clusters, each kept as mean and diagonal variance (official
``ca_storage_efficient_method='multi-centroid'``); sampled as N(mean, diag(var) + 1e-4).  A class with fewer
samples than ``n_centroids`` gets one cluster per sample; clusters of one sample (variance 0) are kept and sampled
with the 1e-4 floor (the official code skips zero-variance clusters, which leaves a class of few samples without
any).

Defaults (official CIFAR-100 config and script): Adam, prompt lr 0.03 * 24 / 256 (its lr scaled by batch / 256),
classifier lr x 0.1 (``--larger_prompt_lr``), TII lr 0.0005 (its ``--lr 0.0005`` for the TII stage), gradient-norm
clipping 1.0, reg 0.1, prompt_momentum 0.01, ca_lr 0.005, 30 alignment epochs, 10 centroids.

Deviations: the official code trains TII and WTP in two separate runs (TII 20 epochs, WTP 50, step schedule);
here both heads train in the same pass over each task for the protocol's epochs, with their own learning rates
and no schedule.  The larger classifier lr factor is applied from the first task on (officially from task 2).
Weight decay: the official config defines both ``--weight-decay 0.0`` and ``--weight_decay 5e-4`` (one argparse
destination); 0 is used for the prompt/TII optimiser here.  **Not implemented**: the paper's analysis under
self-supervised pre-training (iBOT, DINO, MoCo v3 checkpoints) needs those weights -- pass any such timm-loadable
file as ``backbone.weights``; nothing else changes.  Readout: class token on ViTs, mean of the real tokens on
MiniLM (``readout=auto``; a deviation on text backbones).

Backbones: timm ViTs and MiniLM (others raise a ConfigError).  Needs task boundaries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.heads import IncrementalLinear
from cl.models.model import model_preprocess
from cl.models.prompts import PrefixModel, check_layers, default_layers, depth, resolve_readout
from cl.models.task_keys import batched, by_length, kmeans, trim_padding
from strategies._boundaries import require_boundaries

LAYERS = (0, 1, 2, 3, 4)


@dataclass
class HiDePromptConfig(StrategyConfig):
    lr: float = 0.03 * 24 / 256  # prompt lr (official 0.03 scaled by batch/256 at batch 24)
    optimizer: str = "adam"
    head_lr_scale: float = 0.1  # classifier lr = lr * this (official --larger_prompt_lr)
    tii_lr: float = 0.0005  # TII head (uninstructed MLP + classifier)
    tii_hidden: int = 2  # TII MLP hidden width, in multiples of the feature size (official mlp_structure [2])
    length: int = 5  # key and value prefix tokens per layer
    layers: list[int] | None = None  # None: the paper's 0-4
    prompt_momentum: float = 0.01
    reg: float = 0.1  # contrastive regulariser weight (official script --reg 0.1)
    temperature: float = 0.8
    class_mask: bool = True
    n_centroids: int = 10
    ca_epochs: int = 30  # TAP / TII alignment epochs (official crct_epochs)
    ca_lr: float = 0.005
    ca_batch: int = 120  # TAP samples per class, cluster and step (official batch_size * 5)
    tii_ca_batch: int = 24  # TII alignment samples per class, cluster and step (official batch_size)
    clip_grad: float = 1.0
    readout: str = "auto"
    feature_batch: int = 128


class MlpMapping(nn.Module):
    """The TII head's MLP: x + W2 gelu(W1 x), then LayerNorm (official hidden [2]: W1 is D -> 2D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim * hidden), nn.Linear(dim * hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class HiDePromptModel(PrefixModel):
    def __init__(self, backbone, head, layers, n_tasks, length, readout, n_classes, tii_hidden):
        super().__init__(backbone, head, layers, readout, "hide-prompt")
        D, dq = backbone.prompt_dim, backbone.out_dim
        self.layers = list(layers)
        self.e = nn.ParameterList([nn.Parameter(torch.empty(len(layers), 2, length, D).uniform_(-1, 1))
                                   for _ in range(n_tasks)])
        self.tii_mlp = MlpMapping(dq, tii_hidden)
        self.tii_head = IncrementalLinear(dq, n_classes)
        self.register_buffer("task_of_class", torch.full((n_classes,), -1, dtype=torch.long))
        self.momentum = 0.0  # prompt ensemble weight while training (set by the strategy)

    def prompt(self, t: int, train: bool = False) -> torch.Tensor:
        """``e_t``; while training task t > 0: ``(1 - m) e_t + m * mean(e_<t)`` (earlier prompts detached)."""
        if train and t > 0 and self.momentum > 0:
            old = torch.stack([p.detach() for p in self.e[:t]]).mean(0)
            return (1 - self.momentum) * self.e[t] + self.momentum * old
        return self.e[t]

    def per_layer(self, E: torch.Tensor) -> dict:
        """``E``: [B, n_layers, 2, L, D] -> {layer: (keys [B, L, D], values [B, L, D])}."""
        return {layer: (E[:, j, 0], E[:, j, 1]) for j, layer in enumerate(self.layers)}

    def instructed(self, x, t: int, train: bool = False) -> torch.Tensor:
        E = self.prompt(t, train).unsqueeze(0).expand(x.shape[0], *self.e[0].shape)
        return self.features(x, self.per_layer(E))

    def tii(self, q: torch.Tensor) -> torch.Tensor:
        return self.tii_head(self.tii_mlp(q))

    def infer_task(self, q: torch.Tensor) -> torch.Tensor:
        """Task identity: the task of the class the TII head scores highest among the seen classes."""
        logits = self.tii(q).masked_fill(self.task_of_class < 0, float("-inf"))
        return self.task_of_class[logits.argmax(1)]

    def forward(self, x):
        task = self.infer_task(self.query(x))
        E = torch.stack(list(self.e))[task]  # [B, n_layers, 2, L, D]: every sample its inferred task's prompt
        return self.head(self.features(x, self.per_layer(E)))

    def observe(self, y):
        self.head.observe(y)
        self.tii_head.observe(y)


def cluster_stats(f: torch.Tensor, k: int, seed: int):
    """k-means clusters of ``f`` [n, d]: (means [k, d], population variances [k, d], valid [k]) (k <= n used)."""
    cent = kmeans(f, k, seed=seed)
    lab = torch.cdist(f.float(), cent).argmin(1)
    means = torch.zeros(k, f.shape[1], device=f.device)
    var = torch.zeros_like(means)
    valid = torch.zeros(k, dtype=torch.bool, device=f.device)
    for i in range(cent.shape[0]):
        g = f[lab == i].float()
        if len(g):
            means[i], var[i] = g.mean(0), g.var(0, unbiased=False)
            valid[i] = True
    return means, var, valid


@register("hide-prompt", HiDePromptConfig)
class HiDePrompt(Strategy):
    """HiDe-Prompt: task prompts (WTP + contrastive reg.), TII on uninstructed statistics, TAP on instructed ones."""

    state_attrs = ("task", "inst_mean", "inst_var", "inst_valid", "uninst_mean", "uninst_var", "uninst_valid")
    transient_attrs = ("current", "preprocess")

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        n = depth(backbone, "hide-prompt")
        layers = default_layers(LAYERS, n) if cfg.layers is None else check_layers("layers", cfg.layers, n)
        for f in ("length", "n_centroids", "tii_hidden", "ca_batch", "tii_ca_batch"):
            if getattr(cfg, f) < 1:
                raise ConfigError(f"hide-prompt {f}={getattr(cfg, f)}: valid values are >= 1")
        if not 0 <= cfg.prompt_momentum < 1:
            raise ConfigError(f"hide-prompt prompt_momentum={cfg.prompt_momentum}: valid range [0, 1)")
        model = HiDePromptModel(backbone, IncrementalLinear(backbone.prompt_dim, scenario.n_classes), layers,
                                len(scenario), cfg.length, resolve_readout(cfg.readout, backbone), scenario.n_classes,
                                cfg.tii_hidden)
        model.momentum = cfg.prompt_momentum
        if getattr(scenario, "preprocess_fn", None) is not None:
            from cl.models.task_keys import remember_preprocess

            remember_preprocess(model, scenario)
        return model

    def setup(self):
        require_boundaries(self, "it trains one prompt per task")
        C, K = self.info.n_classes, self.cfg.n_centroids
        D, dq = self.model.backbone.prompt_dim, self.model.backbone.out_dim
        self.task = -1
        self.current = torch.zeros(C, dtype=torch.bool, device=self.device)
        self.inst_mean = torch.zeros(C, K, D, device=self.device)
        self.inst_var = torch.zeros(C, K, D, device=self.device)
        self.inst_valid = torch.zeros(C, K, dtype=torch.bool, device=self.device)
        self.uninst_mean = torch.zeros(C, K, dq, device=self.device)
        self.uninst_var = torch.zeros(C, K, dq, device=self.device)
        self.uninst_valid = torch.zeros(C, K, dtype=torch.bool, device=self.device)
        self.preprocess = model_preprocess(self.model, self.device)

    # -- optimisation ----------------------------------------------------------------------------------
    def make_optimizer(self):
        m, cfg = self.model, self.cfg
        t = max(getattr(self, "task", 0), 0)
        groups = [{"params": [m.e[t]], "lr": cfg.lr},
                  {"params": list(m.head.parameters()), "lr": cfg.lr * cfg.head_lr_scale},
                  {"params": [*m.tii_mlp.parameters(), *m.tii_head.parameters()], "lr": cfg.tii_lr}]
        return make_optimizer(groups, cfg)

    def before_experience(self, exp):
        self.task += 1
        self.current.zero_()
        cls = torch.as_tensor(exp.classes, device=self.device)
        self.current[cls] = True
        self.model.task_of_class[cls] = self.task
        if self.task > 0:  # official shared_prompt_pool: the new prompt starts from the previous one
            with torch.no_grad():
                self.model.e[self.task].copy_(self.model.e[self.task - 1])
        self.optimizer = self.make_optimizer()

    def contrastive(self, f: torch.Tensor) -> torch.Tensor:
        """Official ``orth_loss``: CE(M M^T / tau, identity) over M = [old prototypes ; batch features]."""
        M = torch.cat([self.inst_mean[self.inst_valid], f])  # stats exist for finished tasks only
        sim = M @ M.t() / self.cfg.temperature
        return F.cross_entropy(sim, torch.arange(len(M), device=M.device))

    def loss(self, x, y, t=None):
        x = trim_padding(self.augmented(x))
        m = self.model
        f = m.instructed(x, self.task, train=True)
        logits = m.head(f)
        tii_logits = m.tii(m.query(x))
        if self.cfg.class_mask:
            logits = logits.masked_fill(~self.current, float("-inf"))
            tii_logits = tii_logits.masked_fill(~self.current, float("-inf"))
        loss = F.cross_entropy(logits.float(), y) + F.cross_entropy(tii_logits.float(), y)
        if self.cfg.reg:
            loss = loss + self.cfg.reg * self.contrastive(f)
        return loss

    def before_optimizer_step(self, x, y, t=None):
        if self.cfg.clip_grad > 0:
            m = self.model
            torch.nn.utils.clip_grad_norm_([m.e[self.task], *m.head.parameters()], self.cfg.clip_grad)
            torch.nn.utils.clip_grad_norm_([*m.tii_mlp.parameters(), *m.tii_head.parameters()], self.cfg.clip_grad)

    # -- after a task: prompt ensemble, statistics, alignment -------------------------------------------
    @torch.no_grad()
    def _features(self, x, fn):
        was = self.model.training
        self.model.eval()
        try:
            return batched(lambda xb: by_length(fn, xb), x, self.cfg.feature_batch, self.preprocess)
        finally:
            self.model.train(was)

    def after_experience(self, exp):
        m, t, cfg = self.model, self.task, self.cfg
        if t > 0 and cfg.prompt_momentum > 0:
            with torch.no_grad():
                m.e[t].copy_(m.prompt(t, train=True))
        inst = self._features(exp.train_x, lambda xb: m.instructed(xb, t))
        uninst = self._features(exp.train_x, m.query)
        y = exp.train_y.to(self.device)
        for c in exp.classes:
            sel = y == c
            if not bool(sel.any()):
                continue
            seed = int(self.info.seed) * 7919 + int(c)
            self.inst_mean[c], self.inst_var[c], self.inst_valid[c] = cluster_stats(inst[sel], cfg.n_centroids, seed)
            self.uninst_mean[c], self.uninst_var[c], self.uninst_valid[c] = cluster_stats(uninst[sel], cfg.n_centroids,
                                                                                          seed)
        if t > 0 and cfg.ca_epochs > 0:
            seen = m.task_of_class >= 0
            n_old = int(((m.task_of_class >= 0) & (m.task_of_class < t)).sum())
            g = torch.Generator().manual_seed(int(self.info.seed) * 1009 + t)
            self.align(m.head, list(m.head.parameters()), self.inst_mean, self.inst_var, self.inst_valid, seen,
                       cfg.ca_batch, n_old, g)
            self.align(lambda h: m.tii_head(m.tii_mlp(h)), [*m.tii_mlp.parameters(), *m.tii_head.parameters()],
                       self.uninst_mean, self.uninst_var, self.uninst_valid, seen, cfg.tii_ca_batch, n_old, g)

    def align(self, fn, params, mean, var, valid, seen, per, steps, g):
        """Official ``train_task_adaptive_prediction``: CE over the seen classes on Gaussian samples of the
        stored clusters, SGD + cosine schedule, ``steps`` batches of ``per`` samples per epoch."""
        cfg = self.cfg
        opt = torch.optim.SGD(params, lr=cfg.ca_lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.ca_epochs)
        cls_idx, k_idx = torch.nonzero(valid & seen.unsqueeze(1), as_tuple=True)
        mu, sd = mean[cls_idx, k_idx], (var[cls_idx, k_idx] + 1e-4).sqrt()
        was = self.model.training
        self.model.train()
        for _ in range(cfg.ca_epochs):
            z = torch.randn(len(cls_idx), per, mu.shape[1], generator=g).to(mu.device)
            xs = (mu.unsqueeze(1) + z * sd.unsqueeze(1)).reshape(-1, mu.shape[1])
            ys = cls_idx.repeat_interleave(per)
            perm = torch.randperm(len(ys), generator=g).to(ys.device)
            xs, ys = xs[perm], ys[perm]
            for i in range(min(steps, math.ceil(len(ys) / per))):
                logits = fn(xs[i * per:(i + 1) * per]).masked_fill(~seen, float("-inf"))
                loss = F.cross_entropy(logits.float(), ys[i * per:(i + 1) * per])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        self.model.train(was)

    def predict(self, x, t=None):
        return by_length(self.model, x)
