"""SLCA: Slow Learner with Classifier Alignment (Zhang, Wang, Kang, Chen, Wei; ICCV 2023).

Mechanism (official code GengDavid/SLCA@169d4e6 ``models/slca.py``, ``models/base.py``
``_compute_class_mean``, ``convs/linears.py`` ``SimpleContinualLinear``, ``exps/slca/slca_cifar.json``):

* Slow learner: the whole backbone is fine-tuned at ``backbone_lr_scale`` x the head's learning rate
  (``bcb_lrscale`` = 1/100): SGD, momentum 0.9, weight decay 5e-4, head lr 0.01, backbone lr 1e-4; a new
  optimiser per task; the lr drops x0.1 at the epoch ``milestones`` ([18] of 20 epochs on CIFAR-100, [40] of
  50 on ImageNet-R).  The loss is a local CE over the current task's classes; earlier tasks' classifier rows
  are frozen (``update(..., freeze_old=True)``).  Head: one linear layer, trunc-normal(0.02) weights, zero bias.
* Classifier alignment, after every task from the second on: per class, the mean and covariance
  (+ 1e-4 I) of the un-augmented training features (computed once, when the class is learnt); for
  ``ca_epochs`` = 5 epochs, draw 256 features per seen class from N(mu_c * (0.9 + 0.1 (t_c + 1)/(t + 1)), Sigma_c)
  (older tasks' means shrunk, as the code), shuffle, and train the head only (all seen rows; SGD lr 0.01,
  momentum 0.9, weight decay 5e-4, cosine schedule per epoch) in batches of 256 with CE on logit-normalised
  outputs: logits / mean_t ||logits of task t||_2 / 0.1 (``ca_with_logit_norm``).
* The aligned head is used for evaluation; the next task trains on from the head as it was before the
  alignment (the code's ``fc.backup()`` / ``fc.recall()``).

Defaults and sources: all of the above from ``models/slca.py`` and ``exps/slca/slca_cifar.json``.  The paper
runs 20 epochs (CIFAR-100) / 50 (ImageNet-R) at batch 128: set ``protocol.epochs`` and ``batch_size``.

Choices left open / deviations:
* The Gaussian samples come from a generator seeded by (run seed, task), so a resumed run aligns identically.
* ``freeze_bn=true`` keeps BatchNorm statistics fixed (CNN backbones only; the paper's ViT has none): a slow
  learning rate does not slow running statistics down.
* Class statistics use ``cl.models.analytic.class_gaussian`` (the same formula as the code) and a Cholesky factor
  for sampling (``MultivariateNormal`` does the same).

Backbones: any (timm ViTs, EfficientNet-Lite0, MiniLM, mlp); ``frozen_backbone=true`` gives the code's
``fix_bcb`` variant (head + alignment only, on the feature cache).  Needs experience boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.analytic import cholesky_factor, class_gaussian, eval_features, sample_gaussian
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
from cl.models.task_keys import by_length, freeze_batchnorm, model_preprocess, remember_preprocess
from strategies._boundaries import require_boundaries
from strategies._closed_form import current_task_ce


@dataclass
class SLCAConfig(StrategyConfig):
    lr: float = 0.01  # head learning rate (slca.py lrate)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    backbone_lr_scale: float = 0.01  # backbone lr = lr * this (bcb_lrscale)
    milestones: list[int] = field(default_factory=lambda: [18])  # epochs at which lr *= lr_decay
    lr_decay: float = 0.1
    ca: bool = True  # classifier alignment
    ca_epochs: int = 5
    ca_samples: int = 256  # per class per epoch, and the alignment batch size
    ca_lr: float = 0.01
    logit_norm: float = 0.1  # temperature of the logit normalisation in alignment; 0 = plain CE
    cov_eps: float = 1e-4
    mean_scaling: bool = True  # older means x (0.9 + 0.1 (t_c+1)/(t+1)) in alignment
    freeze_bn: bool = True
    feature_batch: int = 256


@register("slca", SLCAConfig)
class SLCA(Strategy):
    """Slow learner (backbone at 0.01x the head's lr) + classifier alignment on class-Gaussian samples."""

    state_attrs = ("session", "means", "chol", "class_session", "head_backup")
    transient_attrs = ("current", "_done", "_n_train")  # set by before_experience

    @classmethod
    def build_model(cls, cfg: SLCAConfig, backbone, scenario):
        if cfg.backbone_lr_scale < 0 or cfg.ca_epochs < 0 or cfg.ca_samples < 1:
            raise ConfigError(f"strategy.backbone_lr_scale and ca_epochs must be >= 0 and ca_samples >= 1, got "
                              f"{cfg.backbone_lr_scale}, {cfg.ca_epochs}, {cfg.ca_samples}")
        head = IncrementalLinear(backbone.out_dim, scenario.n_classes)
        nn.init.trunc_normal_(head.fc.weight, std=0.02)
        nn.init.zeros_(head.fc.bias)
        if cfg.backbone_lr_scale == 0:  # the code's fix_bcb
            for p in backbone.parameters():
                p.requires_grad_(False)
        model = Model(backbone, head)
        remember_preprocess(model, scenario)
        return model

    def make_optimizer(self):
        cfg = self.cfg
        body = [p for p in self.model.backbone.parameters() if p.requires_grad]
        groups = [{"params": body, "lr": cfg.lr * cfg.backbone_lr_scale, "base_lr": cfg.lr * cfg.backbone_lr_scale}] \
            if body and cfg.backbone_lr_scale > 0 else []
        groups.append({"params": list(self.model.head.parameters()), "lr": cfg.lr, "base_lr": cfg.lr})
        return make_optimizer(groups, cfg)  # SGD by default (the code's); optimizer=adam / adamw are honoured

    def setup(self):
        require_boundaries(self, "fits class statistics and aligns the classifier per task")
        C = self.info.n_classes
        self.preprocess = model_preprocess(self.model, self.device)
        self.session = -1
        self.means = torch.zeros(C, self.model.backbone.out_dim, dtype=torch.float64, device=self.device)
        self.chol: dict[int, torch.Tensor] = {}
        self.class_session = torch.full((C,), -1, dtype=torch.long)
        self.head_backup: dict | None = None
        self.current = torch.zeros(C, dtype=torch.bool, device=self.device)
        self._done, self._n_train = 0, 1

    def before_experience(self, exp):
        self.session += 1
        if self.head_backup is not None:  # train on from the head before the last alignment (fc.recall())
            self.model.head.fc.load_state_dict(self.head_backup)
            self.head_backup = None
        self.current.zero_()
        self.current[torch.as_tensor(exp.classes, device=self.device)] = True
        self.optimizer = self.make_optimizer()
        self._done, self._n_train = 0, max(len(exp.train_y), 1)

    def train_step(self, x, y, t=None):
        epoch = self._done // self._n_train
        decay = self.cfg.lr_decay ** sum(1 for m in self.cfg.milestones if epoch >= m)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * decay
        self._done += len(y)
        fc = self.model.head.fc
        old = ~self.current
        keep_w, keep_b = fc.weight.detach()[old].clone(), fc.bias.detach()[old].clone()
        loss = super().train_step(x, y, t)
        with torch.no_grad():  # earlier tasks' rows are frozen (weight decay and momentum do not touch them)
            fc.weight[old] = keep_w
            fc.bias[old] = keep_b
        return loss

    def loss(self, x, y, t=None):
        if self.cfg.freeze_bn:
            freeze_batchnorm(self.model.backbone)
        return current_task_ce(self, x, y)

    def predict(self, x, t=None):
        return by_length(self.model, x)

    def features(self, x):
        return eval_features(self.model, self.model.backbone, x, self.cfg.feature_batch, self.preprocess).flatten(1)

    def after_experience(self, exp):
        f = self.features(exp.train_x)
        y = exp.train_y.to(f.device)
        for c in exp.classes:
            fc_ = f[y == c]
            if len(fc_) == 0:
                continue
            mu, cov = class_gaussian(fc_, self.cfg.cov_eps)
            self.means[c] = mu.to(self.means.device)
            self.chol[int(c)] = cholesky_factor(cov).float()
            self.class_session[c] = self.session
        if self.cfg.ca and self.cfg.ca_epochs > 0 and self.session >= 1:
            self.head_backup = {k: v.detach().clone() for k, v in self.model.head.fc.state_dict().items()}
            self.align_classifier()

    def _normalised_logits(self, logits, seen):
        if not self.cfg.logit_norm:
            return logits
        tasks = self.class_session[seen.cpu()]
        norms = torch.stack([logits[:, (tasks == t).to(logits.device)].norm(dim=1) + 1e-7
                             for t in torch.unique(tasks).tolist()], 1).mean(1, keepdim=True)
        return logits / norms / self.cfg.logit_norm

    def align_classifier(self):
        cfg, head = self.cfg, self.model.head
        seen = torch.nonzero(self.class_session >= 0).flatten().to(self.device)
        params = list(head.fc.parameters())
        opt = torch.optim.SGD(params, lr=cfg.ca_lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.ca_epochs)
        g = torch.Generator().manual_seed(self.info.seed * 1000 + self.session)
        pos = torch.full((self.info.n_classes,), -1, dtype=torch.long, device=self.device)
        pos[seen] = torch.arange(len(seen), device=self.device)
        for _ in range(cfg.ca_epochs):
            xs, ys = [], []
            for c in seen.tolist():
                mu = self.means[c]
                if cfg.mean_scaling:
                    mu = mu * (0.9 + 0.1 * (int(self.class_session[c]) + 1) / (self.session + 1))
                xs.append(sample_gaussian(mu, self.chol[c], cfg.ca_samples, g))
                ys.append(torch.full((cfg.ca_samples,), c, dtype=torch.long, device=self.device))
            xs, ys = torch.cat(xs), torch.cat(ys)
            perm = torch.randperm(len(ys), generator=g).to(self.device)
            xs, ys = xs[perm], ys[perm]
            for i in range(0, len(ys), cfg.ca_samples):
                logits = head.raw(xs[i:i + cfg.ca_samples])[:, seen]
                loss = F.cross_entropy(self._normalised_logits(logits, seen), pos[ys[i:i + cfg.ca_samples]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        for p in params:
            p.grad = None
