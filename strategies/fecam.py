"""FeCAM: class prototypes with a Mahalanobis distance over shrunk, normalised class covariances
(Goswami, Liu, Twardowski, van de Weijer; "FeCAM: Exploiting the Heterogeneity of Class Distributions in
Exemplar-Free Continual Learning", NeurIPS 2023).

Mechanism (official code dipamgoswami/FeCAM ``models/base.py`` ``_mahalanobis``/``shrink_cov``/
``normalize_cov``/``_tukeys_transform``, ``utils/maha_utils.py`` ``compute_new_cov``, ``models/fecam.py``,
``exps/FeCAM_cifar100.json``; the frozen-ViT scripts ``FeCAM_vit_*.py``):

* Frozen backbone (the pretrained-ViT setting of the paper); nothing is trained.  After each task, per new
  class c: the prototype mu_c = mean of the raw training features, and a covariance of the (optionally
  Tukey-transformed) features, shrunk ``shrink_repeats`` times with
  Sigma + gamma1 V1 I + gamma2 V2 (1 - I) (V1 = mean variance, V2 = mean non-zero covariance) and
  normalised to a correlation matrix, Sigma_ij / (sd_i sd_j) (``cl.models.analytic``).
* Score: d_c(x) = (x~ - mu~_c)^T Sigma_c^-1 (x~ - mu~_c) with x~ = L2-normalise(T(x)),
  mu~_c = L2-normalise(T(mu_c)), T = Tukey's x ** beta (or the identity); logits = -d_c (pseudo-inverse, as
  the code's ``torch.linalg.pinv``).  Classes not seen yet are -inf.

Defaults and sources: gamma1 = gamma2 = 1 (``alpha1``/``alpha2`` in ``exps/FeCAM_cifar100.json``), beta = 0.5,
shrinkage applied twice (``compute_new_cov`` and again in ``_train``, commented "we apply covariance
shrinkage 2 times"), correlation normalisation on (``norm_cov: true``).

Choices left open / deviations:
* ``tukey=auto`` (default): Tukey's transform when the first task's features are all non-negative (ReLU CNN
  features: EfficientNet-Lite0, mlp), none otherwise (ViT / MiniLM features are signed, x ** 0.5 is undefined;
  the official frozen-ViT scripts use no Tukey transform and gamma2 = 0).  ``on`` / ``off`` force it.
* The official ResNet code uses plain NCM on the first task (Tukey and covariances from the second on);
  here the Mahalanobis score is used from the first task (the frozen-ViT scripts do that too).
* The first-session-trained backbone variant of the paper (ResNet-18 trained on 50 classes) is not
  implemented: run FeCAM on a frozen pretrained backbone (``finetune`` then FeCAM is not wired).
* A class with one training sample (or only identical ones) has no covariance: the official code's
  ``torch.cov`` gives NaN there, and the pseudo-inverse of a zero matrix would be 0, a distance of 0 to every
  input (the class would win every prediction).  Its covariance is the identity instead, so its score is the
  squared Euclidean distance of the normalised features (NCM's).  A feature that is constant within a class
  has correlation 0 with the others and 1 with itself (``cl.models.analytic.correlation``), where the
  official normalisation divides by zero.
* Precision matrices are stored (C x d x d, float32): 236 MB for ViT-B on 100 classes.

Backbones: any (a feature vector is all it needs); task-free streams are not supported (statistics are
computed per task: ConfigError).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.analytic import correlation, eval_features, mahalanobis, shrink_cov, tukey
from cl.models.heads import MaskedHead
from cl.models.model import Model
from cl.models.task_keys import by_length, model_preprocess, remember_preprocess
from strategies._boundaries import require_boundaries
from strategies._closed_form import inert_optimizer

TUKEY = ("auto", "on", "off")


@dataclass
class FeCAMConfig(StrategyConfig):
    gamma1: float = 1.0  # shrinkage of the diagonal (alpha1)
    gamma2: float = 1.0  # shrinkage of the off-diagonal (alpha2)
    shrink_repeats: int = 2  # the official code shrinks twice
    normalize_cov: bool = True  # covariance -> correlation matrix
    tukey: str = "auto"  # auto | on | off
    beta: float = 0.5  # Tukey exponent (0: log)
    feature_batch: int = 256


class FeCAMHead(MaskedHead):
    """Prototypes and per-class precision matrices (buffers); logits = -Mahalanobis distance."""

    def __init__(self, in_dim: int, n_classes: int, beta: float):
        super().__init__(n_classes)
        self.beta = beta
        self.register_buffer("means", torch.zeros(n_classes, in_dim))
        self.register_buffer("precision", torch.zeros(n_classes, in_dim, in_dim))
        self.register_buffer("use_tukey", torch.zeros((), dtype=torch.bool))

    def transform(self, x):
        x = x.flatten(1).float()
        if bool(self.use_tukey):
            x = tukey(x.clamp_min(0), self.beta)
        return F.normalize(x, dim=-1)

    def forward(self, f):
        with torch.autocast(f.device.type, enabled=False):
            x = self.transform(f)
            mu = self.transform(self.means)
            out = torch.full((len(x), self.n_classes), float("-inf"), device=x.device)
            for c in torch.nonzero(self.seen).flatten().tolist():
                out[:, c] = -mahalanobis(x, mu[c], self.precision[c])
            return out


@register("fecam", FeCAMConfig)
class FeCAM(Strategy):
    """Mahalanobis distance to class prototypes with shrunk, normalised class covariances (frozen backbone)."""

    frozen_features = True
    state_attrs = ("session",)

    @classmethod
    def build_model(cls, cfg: FeCAMConfig, backbone, scenario):
        if cfg.tukey not in TUKEY:
            raise unknown("strategy.tukey", cfg.tukey, TUKEY)
        if cfg.shrink_repeats < 0 or cfg.gamma1 < 0 or cfg.gamma2 < 0:
            raise ConfigError(f"strategy.shrink_repeats, gamma1, gamma2 must be >= 0, got {cfg.shrink_repeats}, "
                              f"{cfg.gamma1}, {cfg.gamma2}")
        for p in backbone.parameters():
            p.requires_grad_(False)
        model = Model(backbone, FeCAMHead(backbone.out_dim, scenario.n_classes, cfg.beta))
        remember_preprocess(model, scenario)
        return model

    def make_optimizer(self):
        return inert_optimizer(self)

    def setup(self):
        require_boundaries(self, "computes class covariances per task")
        self.preprocess = model_preprocess(self.model, self.device)
        self.session = -1

    def before_experience(self, exp):
        self.session += 1

    def train_step(self, x, y, t=None):
        return torch.zeros((), device=y.device)

    def features(self, x):
        return eval_features(self.model, self.model.backbone, x, self.cfg.feature_batch, self.preprocess).flatten(1).double()

    def class_precision(self, f: torch.Tensor) -> torch.Tensor:
        """Sigma_c^-1 of one class's features (n, d): Tukey, covariance, shrinkage, normalisation, pinv."""
        cfg, head = self.cfg, self.model.head
        if bool(head.use_tukey):
            f = tukey(f.clamp_min(0), cfg.beta)
        d = f.shape[1]
        cov = torch.cov(f.t()).reshape(d, d) if len(f) > 1 else torch.zeros(d, d, dtype=f.dtype, device=f.device)
        for _ in range(cfg.shrink_repeats):
            cov = shrink_cov(cov, cfg.gamma1, cfg.gamma2)
        if not bool(cov.any()):  # one sample (or identical ones): no covariance; the identity, not pinv(0) = 0
            cov = torch.eye(d, dtype=f.dtype, device=f.device)
        if cfg.normalize_cov:
            cov = correlation(cov)
        return torch.linalg.pinv(cov)

    @torch.no_grad()
    def after_experience(self, exp):
        head = self.model.head
        if len(exp.train_y) == 0:  # nothing to featurise (the feature batches of no rows are not (0, d))
            return
        f = self.features(exp.train_x)
        y = exp.train_y.to(f.device)
        if self.session == 0 and self.cfg.tukey != "off":
            head.use_tukey.fill_(self.cfg.tukey == "on" or bool((f >= 0).all()))
        for c in exp.classes:
            fc = f[y == c]
            if len(fc) == 0:
                continue
            head.means[c] = fc.mean(0).float()
            head.precision[c] = self.class_precision(fc).float()
        head.observe(torch.as_tensor(exp.classes, device=head.seen.device))

    def predict(self, x, t=None):
        return by_length(self.model, x)

    def extra_metrics(self):
        return {"tukey": bool(self.model.head.use_tukey)}
