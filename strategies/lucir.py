"""LUCIR: Learning a Unified Classifier Incrementally via Rebalancing (Hou, Pan, Loy, Wang, Lin, CVPR 2019).

* Cosine normalisation (section 3.2): logits = sigma * cos(f(x), w_c), sigma learnable (initialised to 1 as in
  the authors' ``CosineLinear``; ``sigma_init``).
* Less-forget constraint (eq. 6): lambda * (1 - cos(f(x), f*(x))) against the model frozen at the previous
  boundary, with the adaptive weight lambda = lambda_base * sqrt(|C_old| / |C_new|), lambda_base = 5 (CIFAR).
  The old classes' weight vectors are kept fixed (the authors' code trains them with lr 0; we restore them
  after each step, which also undoes weight decay and momentum on them).
* Inter-class separation (eq. 7): for each sample of an old class in the batch, the margin ranking loss
  sum_k max(0, m - cos(f, w_y) + cos(f, w_k)) over its K = 2 hardest new classes, m = 0.5, averaged over the
  (sample, k) pairs (``nn.MarginRankingLoss``'s mean, as the authors' code uses), weight lambda_mr = 1.
* New class weights are imprinted at the boundary (the authors' code): the normalised mean of the class's
  normalised features, times the mean norm of the old weights.
* Memory: herding exemplars (``strategies._exemplars``), ``exemplars_per_class`` = 20 (the paper's), or a
  total ``buffer_size`` split evenly over the seen classes when > 0 (as iCaRL; used to compare at equal memory).
* Classification: the cosine classifier (the paper's "CNN" result); ``nme=true`` uses iCaRL's NME instead.

Deviations: the backbone's last ReLU is kept (LUCIR removes it); no class-balanced finetuning stage.
Left open by the paper: an experience that brings no new class (a class seen before comes back) has no
adaptive weight (lambda = lambda_base sqrt(|old| / |new|) with |new| = 0), so it trains on the cross-entropy
over new data and exemplars alone, without the less-forget and margin terms (as after the first experience).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, register
from cl.models.distill import feature_distill
from cl.models.heads import MaskedHead, cosine_logits
from cl.models.herding import class_means, nme_logits
from cl.models.model import Model
from cl.models.task_keys import model_preprocess, remember_preprocess
from strategies._exemplars import ExemplarMemory
from strategies._reg import batched_apply, in_eval
from strategies.lwf import DistillBase


@dataclass
class LUCIRConfig(StrategyConfig):
    lambda_base: float = 5.0
    margin: float = 0.5
    k_mr: int = 2
    lambda_mr: float = 1.0
    sigma_init: float = 1.0
    exemplars_per_class: int = 20
    buffer_size: int = 0  # > 0: a total budget split over the seen classes instead
    momentum: float = 0.9  # the authors' SGD momentum
    weight_decay: float = 5e-4
    nme: bool = False


class ScaledCosineHead(MaskedHead):
    def __init__(self, in_dim, n_classes, sigma=1.0):
        super().__init__(n_classes)
        self.weight = nn.Parameter(torch.empty(n_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.sigma = nn.Parameter(torch.tensor(float(sigma)))

    def cosine(self, h):
        return cosine_logits(h, self.weight)

    def forward(self, h):
        return self.mask(self.sigma * self.cosine(h))


@register("lucir", LUCIRConfig, "LUCIR: cosine head, less-forget constraint, margin ranking, herding memory")
class LUCIR(DistillBase):
    transient_attrs = DistillBase.transient_attrs + ("_new_idx",)  # recomputed by before_experience

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        model = Model(backbone, ScaledCosineHead(backbone.out_dim, scenario.n_classes, cfg.sigma_init))
        remember_preprocess(model, scenario)
        return model

    def setup(self):
        super().setup()
        self.check_config()
        self.preprocess = model_preprocess(self.model, self.device)
        self.memory = ExemplarMemory(self.device)
        self.means = None
        self.lam = 0.0
        self._frozen_rows = None

    def check_config(self) -> None:
        """LUCIR's bounds; a subclass with other fields (PODNet) checks its own."""
        c = self.cfg
        if c.buffer_size < 0 or c.exemplars_per_class < 1 or c.k_mr < 1:
            raise ConfigError(f"lucir: buffer_size must be >= 0 (0: exemplars_per_class per class), exemplars_per_class "
                              f">= 1 and k_mr >= 1, got buffer_size={c.buffer_size}, "
                              f"exemplars_per_class={c.exemplars_per_class}, k_mr={c.k_mr}")

    def per_class(self, n_seen):
        return self.cfg.buffer_size // max(1, n_seen) if self.cfg.buffer_size > 0 else self.cfg.exemplars_per_class

    def features(self, x):
        with in_eval(self.model):
            return batched_apply(self.model.features, x, self.preprocess)

    def before_experience(self, exp):
        super().before_experience(exp)
        new = [c for c in self.seen_classes if c not in self.old_classes]
        self._new_idx = torch.tensor(new, dtype=torch.long, device=self.device)
        if self.old_classes and new:
            self.lam = self.cfg.lambda_base * math.sqrt(len(self.old_classes) / len(new))
            with torch.no_grad():  # imprint the new classes' weights
                w = self.model.head.weight
                old_norm = w[self.old_idx()].norm(dim=1).mean()
                f = F.normalize(self.features(exp.train_x), dim=1)
                for c in new:
                    sel = exp.train_y == c
                    if sel.any():
                        w[c] = F.normalize(f[sel].mean(0), dim=0) * old_norm
        self._frozen_rows = None

    def train_data(self, exp):
        if not len(self.memory):
            return exp.train_x, exp.train_y
        return torch.cat([exp.train_x, self.memory.x]), torch.cat([exp.train_y, self.memory.y])

    def loss(self, x, y, t=None):
        xa = self.augmented(x)
        h = self.model.features(xa)
        cos = self.model.head.cosine(h)
        logits = self.model.head.mask(self.model.head.sigma * cos).float()
        loss = F.cross_entropy(logits, y)
        if not (self.teacher and self.old_classes) or not len(self._new_idx):
            return loss
        loss = loss + self.lam * feature_distill(h, self.teacher.features(xa), "cosine")
        old = torch.isin(y, self.old_idx()).float()  # margin ranking on the old classes' samples (no host read)
        gt = cos.gather(1, y[:, None])
        k = min(self.cfg.k_mr, len(self._new_idx))
        hard = cos[:, self._new_idx].topk(k, dim=1).values
        mr = F.relu(self.cfg.margin - gt + hard) * old[:, None]
        loss = loss + self.cfg.lambda_mr * mr.sum() / (old.sum() * k).clamp_min(1)
        return loss

    def before_optimizer_step(self, x, y, t=None):
        if self.old_classes and self._frozen_rows is None:
            self._frozen_rows = self.model.head.weight.detach()[self.old_idx()].clone()

    @torch.no_grad()
    def after_step(self, x, y, t=None):
        if self._frozen_rows is not None:
            self.model.head.weight[self.old_idx()] = self._frozen_rows

    def after_experience(self, exp):
        super().after_experience(exp)
        self._frozen_rows = None
        m = self.per_class(len(self.old_classes))
        self.memory.reduce(m)
        new = ~torch.isin(exp.train_y, torch.tensor(self.memory.classes(), dtype=torch.long, device=exp.train_y.device))
        if new.any():
            self.memory.add(exp.train_x[new], exp.train_y[new], self.features(exp.train_x[new]), m)
        if self.cfg.nme:
            self.means = class_means(self.features(self.memory.x), self.memory.y, self.info.n_classes)

    def predict(self, x, t=None):
        if self.means is not None and self.cfg.nme:
            return nme_logits(self.model.features(x), self.means)
        return self.model(x)

    def extra_state(self):
        return {**super().extra_state(), "memory": self.memory.state_dict(), "lam": self.lam,
                "means": None if self.means is None else self.means.cpu()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.memory.load_state_dict(state["memory"])
        self.lam = state["lam"]
        self.means = None if state["means"] is None else state["means"].to(self.device)
