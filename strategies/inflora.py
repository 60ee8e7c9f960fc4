"""InfLoRA: Interference-Free Low-Rank Adaptation (Liang & Li; CVPR 2024).

Mechanism (official code liangyanshuo/InfLoRA ``methods/inflora.py``, ``models/vit_inflora.py``
``Attention_LoRA``, ``configs/cifar100_inflora.json``):

* Each task t adds a low-rank branch B_t A_t to the key and value projections of every attention layer.  The
  down-projection A_t is **designed, not trained**: before the task, the input Gram matrix
  C = mean_tokens x x^T of each layer is taken on the task's training data; C is projected away from the memory
  M of earlier tasks' input spans, C <- C - M M^T C; A_t = (top-``rank`` left singular vectors of C)^T / sqrt(3).
  Only B_t (zero-initialised) and the classifier train, so the update B_t A_t of W lies in the subspace
  orthogonal to the earlier tasks' inputs and (A_t x_old = 0) leaves their outputs unchanged.
* After the task the branch is folded into the layer (the code sums all tasks' branches in the forward pass;
  the merged weight is the same function), C is taken again, and the memory grows DualGPM-style: the
  new directions of C - M M^T C are added until the captured share of C's squared singular values reaches the
  threshold lamb + (lame - lamb) t / T (lamb 0.95, lame 1.0 on CIFAR-100; the code's ImageNet-R logs use 0.98).
* Classifier: one linear layer; the loss is a local CE over the current task's classes (the code's per-task
  ``classifier_pool``); the prediction takes all seen classes.  Adam, lr 5e-4, no weight decay, rank 10, a new
  optimiser per task, the network in eval mode while training (``train_function`` calls ``eval()``).

Why a hand-written branch and not peft: A is a fixed, designed matrix and the branch must add to the key and value
thirds of timm's fused ``qkv`` projection only (the query is not adapted); peft's LoRA trains A, and on a fused
layer adapts all three outputs.  ``InfLoRALinear`` is 30 lines: base layer, buffer A, parameter B.

Deviations / choices left open:
* DualGPM keeps the memory in a "retain" form (the complement) once it covers more than half of the space;
  that is a storage choice for the same projection.  Here the memory is always the basis of the protected span
  ("remove" form), with the same energy criterion (``r = #{cumulative ratio < threshold}``, as the code).
* A's rows are projected once more onto the complement of M (a no-op whenever the projected C has rank >= rank;
  it keeps A orthogonal to M when the memory fills the space and the SVD's null vectors are arbitrary).
* Gram matrices are taken on un-augmented training data (the code uses the training loader).
* The learning rate is constant (the code's cosine schedule over the task's epochs is not reproduced).
* MiniLM: the branch adds to the ``key`` and ``value`` layers; mlp backbones: to every ``nn.Linear`` (tests).
  Padding tokens of text inputs count in the Gram matrix.

Backbones: timm ViTs, MiniLM, mlp.  CNNs (EfficientNet-Lite0) and the frozen feature cache raise a ConfigError.
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
from cl.models.model import Model
from cl.models.analytic import eval_features
from cl.models.task_keys import by_length, model_preprocess, remember_preprocess
from cl.models.multihead import class_mask
from strategies._boundaries import require_boundaries
from strategies._closed_form import current_task_ce

BACKBONES = "timm ViTs (vit-tiny, timm:vit_*), minilm, mlp"


@dataclass
class InfLoRAConfig(StrategyConfig):
    lr: float = 5e-4  # configs/cifar100_inflora.json lrate
    optimizer: str = "adam"
    weight_decay: float = 0.0
    rank: int = 10
    lamb: float = 0.95  # memory threshold at the first task
    lame: float = 1.0  # ... at the last
    train_eval_mode: bool = True  # eval() while training, as the code
    feature_batch: int = 128


class InfLoRALinear(nn.Module):
    """``base(x) + B A x`` on output rows ``rows`` (all if None); A a designed buffer, B trained.  While
    ``collect`` is on, the forward also accumulates the input Gram matrix sum x x^T (float64)."""

    def __init__(self, base: nn.Linear, rank: int, rows: tuple[int, int] | None = None):
        super().__init__()
        self.base, self.rows = base, rows
        out = base.out_features if rows is None else rows[1] - rows[0]
        self.register_buffer("A", torch.zeros(rank, base.in_features, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(out, rank, device=base.weight.device))
        d = base.in_features
        self.register_buffer("gram", torch.zeros(d, d, dtype=torch.float64, device=base.weight.device),
                             persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64, device=base.weight.device),
                             persistent=False)
        self._collect = False

    @property
    def weight(self):
        return self.base.weight

    def forward(self, x):
        if self._collect:
            z = x.detach().reshape(-1, x.shape[-1]).double()
            self.gram += z.t() @ z
            self.count += z.shape[0]
        y = self.base(x)
        d = F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))
        if self.rows is None:
            return y + d
        s, e = self.rows
        return torch.cat([y[..., :s], y[..., s:e] + d, y[..., e:]], -1)

    @torch.no_grad()
    def merge(self):
        """Fold B A into the base weight and zero B."""
        delta = (self.B @ self.A).to(self.base.weight.dtype)
        if self.rows is None:
            self.base.weight += delta
        else:
            self.base.weight[self.rows[0]:self.rows[1]] += delta
        self.B.zero_()


def attach(backbone: nn.Module, rank: int) -> list[InfLoRALinear]:
    """Wrap the key/value projections (ViT fused qkv: its last two thirds; BERT key, value; mlp: every Linear)."""
    from cl.models.adapters import detect_family

    try:
        family = detect_family(backbone)
    except ValueError:
        family = None
    if family not in ("vit", "bert", "mlp"):
        raise ConfigError(f"inflora adapts the linear key/value projections of attention layers and cannot run on "
                          f"{type(backbone).__name__} (family {family}); backbones that work: {BACKBONES}, with "
                          f"strategy.frozen_backbone=false")
    targets = []
    for name, m in list(backbone.named_modules()):
        if not isinstance(m, nn.Linear):
            continue
        if family == "vit" and name.endswith("attn.qkv"):
            d = m.in_features
            targets.append((name, m, (d, 3 * d) if m.out_features == 3 * d else None))
        elif family == "bert" and name.split(".")[-1] in ("key", "value"):
            targets.append((name, m, None))
        elif family == "mlp":
            targets.append((name, m, None))
    layers = []
    for name, m, rows in targets:
        parent = backbone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else backbone
        layer = InfLoRALinear(m, rank, rows)
        setattr(parent, name.rsplit(".", 1)[-1], layer)
        layers.append(layer)
    if not layers:
        raise ConfigError(f"inflora found no linear layer to adapt in {type(backbone).__name__}; backbones that "
                          f"work: {BACKBONES}")
    return layers


def update_memory(basis: torch.Tensor | None, act: torch.Tensor, threshold: float) -> torch.Tensor:
    """DualGPM / GPM memory update with the input Gram matrix ``act`` (d x d); returns the new basis (d x k)."""
    U1, S1, _ = torch.linalg.svd(act, full_matrices=False)
    total = (S1 ** 2).sum()
    if basis is None:
        r = int(((S1 ** 2).cumsum(0) / total < threshold).sum())
        return U1[:, :max(r, 1)]
    hat = act - basis @ (basis.t() @ act)
    U, S, _ = torch.linalg.svd(hat, full_matrices=False)
    ratio = S ** 2 / total
    acc = float((total - (S ** 2).sum()) / total)
    r = 0
    for v in ratio.tolist():
        if acc >= threshold:
            break
        acc += v
        r += 1
    if r == 0:
        return basis
    return torch.cat([basis, U[:, :r]], 1)[:, :act.shape[0]]


@register("inflora", InfLoRAConfig)
class InfLoRA(Strategy):
    """Per task a LoRA branch with a designed A orthogonal to earlier tasks' input span; only B trains."""

    state_attrs = ("session", "bases")
    transient_attrs = ("current",)

    @classmethod
    def build_model(cls, cfg: InfLoRAConfig, backbone, scenario):
        if cfg.rank < 1 or not 0 < cfg.lamb <= 1 or not 0 < cfg.lame <= 1:
            raise ConfigError(f"strategy.rank must be >= 1 and lamb, lame in (0, 1], got rank={cfg.rank}, "
                              f"lamb={cfg.lamb}, lame={cfg.lame}")
        for p in backbone.parameters():
            p.requires_grad_(False)
        attach(backbone, cfg.rank)
        model = Model(backbone, IncrementalLinear(backbone.out_dim, scenario.n_classes))
        remember_preprocess(model, scenario)
        return model

    @property
    def layers(self) -> list[InfLoRALinear]:
        return [m for m in self.model.backbone.modules() if isinstance(m, InfLoRALinear)]

    def make_optimizer(self):
        params = [m.B for m in self.layers] + list(self.model.head.parameters())
        return make_optimizer(params, self.cfg)

    def setup(self):
        require_boundaries(self, "designs a branch per task")
        self.preprocess = model_preprocess(self.model, self.device)
        self.session = -1
        self.bases: list = [None] * len(self.layers)
        self.current = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def _grams(self, x) -> list[torch.Tensor]:
        layers = self.layers
        for m in layers:
            m.gram.zero_()
            m.count.zero_()
            m._collect = True
        try:
            eval_features(self.model, self.model.backbone, x, self.cfg.feature_batch, self.preprocess)
        finally:
            for m in layers:
                m._collect = False
        return [m.gram / m.count.clamp_min(1) for m in layers]

    def before_experience(self, exp):
        self.session += 1
        self.current.copy_(class_mask(exp.classes, self.info.n_classes, self.device))
        with torch.no_grad():
            for m, C, M in zip(self.layers, self._grams(exp.train_x), self.bases):
                if M is not None:
                    C = C - M @ (M.t() @ C)
                U = torch.linalg.svd(C, full_matrices=False)[0][:, :m.A.shape[0]]
                if M is not None:
                    U = U - M @ (M.t() @ U)
                A = torch.zeros_like(m.A, dtype=torch.float64)
                A[:U.shape[1]] = U.t() / math.sqrt(3)
                m.A.copy_(A)
                m.B.zero_()
        self.optimizer = self.make_optimizer()

    def loss(self, x, y, t=None):
        if self.cfg.train_eval_mode:
            self.model.eval()
        return current_task_ce(self, x, y)

    def predict(self, x, t=None):
        return by_length(self.model, x)

    def after_experience(self, exp):
        for m in self.layers:
            m.merge()
        n = max(self.info.n_experiences, 1)
        threshold = (self.cfg.lame - self.cfg.lamb) * self.session / n + self.cfg.lamb
        with torch.no_grad():
            grams = self._grams(exp.train_x)
            self.bases = [update_memory(M, C, threshold) for M, C in zip(self.bases, grams)]

    def extra_metrics(self):
        dims = [int(M.shape[1]) for M in self.bases if M is not None]
        return {"memory_dims": dims}
