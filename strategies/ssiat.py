"""SSIAT: Semantically-Shifted Incremental Adapter-Tuning (Tan et al., CVPR 2024; methods.md section 8).

* One **shared** adapter on the frozen pretrained backbone, tuned in every session (no per-task
  expansion).  ``adapter=adaptformer`` (default where the backbone has transformer blocks): an
  AdaptFormer branch parallel to each block's MLP, a = scale * Up(Dropout(ReLU(Down(x)))),
  Down: d -> 64, Up: 64 -> d, Up and biases zero-initialised (the untrained adapter is the identity);
  on timm ViT blocks x <- x + MLP(LN2(x)) + a(x), on BERT layers (MiniLM) the branch is added to the
  FFN output before its LayerNorm.  ``adapter=lora``: one shared LoRA adapter (cl.models.adapters), the
  fallback for CNNs (EfficientNet-Lite0).
* Cosine classifier, one row per class, logits s * cos(h, w_c) with s = 20; the session loss is a
  local CE over the current session's classes only.
* After a session, per new class: mean and covariance (+ 1e-3 I) of the un-augmented training
  features.
* Semantic shift of old class means (SDC style): the current session's training images, **the same
  images in the same order, un-augmented** (not the official code's shuffled, augmented loader), go
  through the model before (Y1) and after (Y2) the session;
  Delta_c = sum_i w_i (Y2_i - Y1_i) / sum_i w_i, w_i = exp(-||Y1_i - mu_c||^2 / (2 sigma^2)) + 1e-5,
  sigma = 4; mu_c <- mu_c + Delta_c.  Covariances are not shifted (as in the code).
* Classifier alignment from the second session on: ``ca_epochs`` epochs, each drawing
  ``ca_samples`` features per seen class from N(mu~_c, Sigma_c), mu~_c = mu_c * (0.9 + 0.1 (t_c+1)/(t+1))
  (the code's undocumented down-scaling of older means; ``mean_scaling``), shuffled, batches of
  ``ca_samples``, SGD on the classifier only with CE over all seen classes, cosine lr schedule.
* Prediction: argmax of the cosine logits over all seen classes; no task id, no exemplars.
* Session schedule (``session_epochs``).  The official code trains the first session 20 epochs and the
  later ones 10, with a cosine learning-rate schedule inside each session.  ``session_epochs=[20, 10]``
  does that: the session's training data is handed to the engine that many times over (run it with
  ``protocol.epochs=1``; the engine shuffles the repeated set, so an "epoch" is a pass in expectation) and the
  learning rate follows a cosine from ``lr`` to 0 over the session's samples.  Default ``None``: every
  session runs ``protocol.epochs`` epochs at a constant ``lr`` (the optimiser is re-created per session).
  Before issue 13 a comment promised a cosine schedule that did not exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.heads import cosine_logits
from cl.models.petl import ParallelAdapter, attach_adaptformer  # noqa: F401 (moved there; re-exported)
from cl.core.registry import ConfigError, unknown
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.task_keys import batched, by_length, freeze_batchnorm, model_preprocess, remember_preprocess, trim_padding
from cl.models.multihead import class_mask


COVS = ("full", "diag")


@dataclass
class SSIATConfig(StrategyConfig):
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    adapter: str = "auto"  # auto | adaptformer | lora
    bottleneck: int = 64
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.1
    lora_r: int = 8
    lora_alpha: int = 16
    scale: float = 20.0  # s in s * cos
    sigma: float = 4.0  # drift kernel width
    shift: bool = True  # semantic-shift estimation of old means
    ca: bool = True  # classifier alignment on Gaussian samples
    ca_epochs: int = 5
    ca_samples: int = 256  # per class per epoch
    ca_lr: float = 0.01
    cov: str = "full"  # full | diag
    cov_eps: float = 1e-3
    mean_scaling: bool = True  # mu * (0.9 + 0.1 (t_c+1)/(t+1)) in alignment
    feature_batch: int = 256
    session_epochs: list[int] | None = None  # [first, later], e.g. [20, 10] (official); None: protocol.epochs


def semantic_drift(y1: torch.Tensor, y2: torch.Tensor, means: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Delta (C, d) for each old mean: kernel-weighted mean of (Y2 - Y1) with weights from ||Y1 - mu_c||."""
    y1, y2, means = y1.double(), y2.double(), means.double()
    d2 = torch.cdist(means, y1).pow(2)  # (C, n)
    w = torch.exp(-d2 / (2 * sigma ** 2)) + 1e-5
    return (w @ (y2 - y1)) / w.sum(1, keepdim=True)


class SSIATModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int, scale: float, adapters: nn.ModuleList | None):
        super().__init__()
        self.backbone = backbone
        self.adapters = adapters  # None when the adapter is a LoRA inside the backbone
        self.weight = nn.Parameter(torch.empty(n_classes, backbone.out_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.scale = scale
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def features(self, x):
        return self.backbone(x).float()

    def logits(self, h):
        return self.scale * cosine_logits(h, self.weight)

    def forward(self, x):
        return self.logits(self.features(x)).masked_fill(~self.seen, float("-inf"))

    @torch.no_grad()
    def observe(self, y):
        self.seen[y] = True


def make_adapter(backbone, kind: str, cfg):
    """Freeze the backbone and add the shared adapter; returns the AdaptFormer list or None (LoRA)."""
    from cl.models.adapters import detect_family

    if kind == "auto":
        try:
            kind = "adaptformer" if detect_family(backbone) in ("vit", "bert") else "lora"
        except ValueError:
            kind = "lora"
    if kind == "adaptformer":
        for p in backbone.parameters():
            p.requires_grad_(False)
        return attach_adaptformer(backbone, cfg.bottleneck, cfg.adapter_scale, cfg.adapter_dropout)
    if kind == "lora":
        from cl.models.adapters import LoraSet

        lora = LoraSet(backbone, r=cfg.lora_r, alpha=cfg.lora_alpha)
        lora.add("shared")
        return None
    raise unknown("strategy.adapter", kind, ("auto", "adaptformer", "lora"))


@register("ssiat", SSIATConfig)
class SSIAT(Strategy):
    """SSIAT: shared adapter tuned every session, semantic shift of prototypes, Gaussian classifier alignment."""

    transient_attrs = ("current",)  # the current session's classes, set in before_experience

    @classmethod
    def build_model(cls, cfg: SSIATConfig, backbone, scenario):
        if cfg.cov not in COVS:
            raise unknown("strategy.cov", cfg.cov, COVS)
        se = cfg.session_epochs
        if se is not None and (not 1 <= len(se) <= 2 or any(int(e) < 1 for e in se)):
            raise ConfigError(f"strategy.session_epochs must be [first, later] or [every] session's epochs, each >= 1 "
                              f"(or null: protocol.epochs), got {se}")
        if cfg.ca_samples < 1 or cfg.sigma <= 0:
            raise ConfigError(f"strategy.ca_samples must be >= 1 and strategy.sigma > 0, got ca_samples={cfg.ca_samples}, "
                              f"sigma={cfg.sigma}")
        adapters = make_adapter(backbone, cfg.adapter, cfg)
        model = SSIATModel(backbone, scenario.n_classes, cfg.scale, adapters)
        remember_preprocess(model, scenario)
        return model

    def setup(self):
        self.preprocess = model_preprocess(self.model, self.device)
        C, d = self.model.weight.shape
        self.means = torch.zeros(C, d, dtype=torch.float64, device=self.device)
        self.covs: dict[int, torch.Tensor] = {}  # class -> (d, d) float32 (or (d,) for diag)
        self.class_session = torch.full((C,), -1, dtype=torch.long)
        self.session = -1
        self.current = torch.zeros(C, dtype=torch.bool, device=self.device)
        self._y1 = None
        self.drift_log: list[float] = []
        self._session_done, self._session_total, self._repeat = 0, 0, 1

    @torch.no_grad()
    def extract(self, x):
        was = self.model.training
        self.model.eval()
        f = batched(lambda xb: by_length(self.model.features, xb), x, self.cfg.feature_batch, self.preprocess)
        self.model.train(was)
        return f.double()

    def before_experience(self, exp):
        self.session += 1
        self.current.copy_(class_mask(exp.classes, len(self.current), self.device))
        self.optimizer = self.make_optimizer()  # re-initialised per session (momentum state restarts)
        self._session_done, self._session_total = 0, 0
        if self.cfg.session_epochs:
            first, later = (list(self.cfg.session_epochs) + list(self.cfg.session_epochs))[:2]
            self._repeat = int(first if self.session == 0 else later)
            self._session_total = self._repeat * len(exp.train_y)
        old = self.class_session >= 0
        self._y1 = self.extract(exp.train_x) if (self.cfg.shift and bool(old.any())) else None

    def train_data(self, exp):
        x, y = super().train_data(exp)
        if not self.cfg.session_epochs or self._repeat <= 1:
            return x, y
        return x.repeat(self._repeat, *([1] * (x.dim() - 1))), y.repeat(self._repeat)

    def train_step(self, x, y, t=None):
        if self._session_total:  # cosine from lr to 0 over the session's samples
            frac = min(self._session_done / self._session_total, 1.0)
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
            self._session_done += len(y)
        return super().train_step(x, y, t)

    def predict(self, x, t=None):
        return by_length(self.model, x)

    def loss(self, x, y, t=None):
        freeze_batchnorm(self.model.backbone)  # frozen backbone: BN statistics must not drift
        x = trim_padding(self.augmented(x))
        logits = self.model.logits(self.model.features(x)).masked_fill(~self.current, float("-inf"))
        return F.cross_entropy(logits, y)  # local CE over the current session's classes

    def after_experience(self, exp):
        cfg = self.cfg
        y2 = self.extract(exp.train_x)
        old = torch.nonzero(self.class_session >= 0).flatten().tolist()
        if self._y1 is not None and old:
            idx = torch.as_tensor(old, device=self.device)
            delta = semantic_drift(self._y1, y2, self.means[idx], cfg.sigma)
            self.means[idx] += delta
            self.drift_log.append(float(delta.norm(dim=1).mean()))
        self._y1 = None
        ytr = exp.train_y.to(self.device)
        for c in exp.classes:
            f = y2[ytr == c]
            if len(f) == 0:
                continue
            self.means[c] = f.mean(0)
            if cfg.cov == "diag":
                var = f.var(0, unbiased=True) if len(f) > 1 else torch.zeros_like(f[0])
                self.covs[c] = (var + cfg.cov_eps).float()
            else:
                cov = torch.cov(f.t()) if len(f) > 1 else torch.zeros(f.shape[1], f.shape[1], dtype=f.dtype,
                                                                       device=f.device)
                cov = cov + cfg.cov_eps * torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
                self.covs[c] = torch.linalg.cholesky(cov).float()  # store the factor for sampling
            self.class_session[c] = self.session
        if cfg.ca and self.session >= 1:
            self.align_classifier()

    def _sample(self, c: int, n: int, t: int) -> torch.Tensor:
        mu = self.means[c].float()
        if self.cfg.mean_scaling:
            tc = int(self.class_session[c])
            mu = mu * (0.9 + 0.1 * (tc + 1) / (t + 1))
        z = torch.randn(n, mu.shape[0], device=self.device)
        L = self.covs[c]
        return mu + (z * L.sqrt() if L.dim() == 1 else z @ L.t())

    def align_classifier(self):
        cfg, m = self.cfg, self.model
        seen = torch.nonzero(self.class_session >= 0).flatten().tolist()
        opt = torch.optim.SGD([m.weight], lr=cfg.ca_lr, momentum=0.9, weight_decay=5e-4)
        steps = cfg.ca_epochs * len(seen)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        mask = torch.zeros(m.weight.shape[0], dtype=torch.bool, device=self.device)
        mask[torch.as_tensor(seen, device=self.device)] = True
        for _ in range(cfg.ca_epochs):
            with torch.no_grad():
                xs = torch.cat([self._sample(c, cfg.ca_samples, self.session) for c in seen])
                ys = torch.as_tensor(seen, device=self.device).repeat_interleave(cfg.ca_samples)
                perm = torch.randperm(len(ys), device=self.device)
                xs, ys = xs[perm], ys[perm]
            for i in range(0, len(ys), cfg.ca_samples):
                logits = m.logits(xs[i:i + cfg.ca_samples]).masked_fill(~mask, float("-inf"))
                loss = F.cross_entropy(logits, ys[i:i + cfg.ca_samples])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

    def extra_metrics(self) -> dict:
        out = {"mean_drift_norm": self.drift_log[-1]} if self.drift_log else {}
        return out

    def extra_state(self):
        return {"means": self.means, "covs": self.covs, "class_session": self.class_session, "session": self.session,
                "drift_log": self.drift_log}

    def load_extra_state(self, state):
        self.means = state["means"]
        self.covs = state["covs"]
        self.class_session = state["class_session"]
        self.session = state["session"]
        self.drift_log = state.get("drift_log", [])
