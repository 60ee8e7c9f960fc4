"""LAE: Learning-Accumulation-Ensemble with online and offline PET modules (Gao, Cen, Li, Zhang, Shan, Liu;
"A Unified Continual Learning Framework with General Parameter-Efficient Tuning", ICCV 2023).

Mechanism (official code gqk/LAE ``main.py`` ``MyModule``, ``config/vit_lora.yaml``,
``config/base/cifar100_order1.yaml``):

* One parameter-efficient module (PET) on the frozen backbone is the **online** module: it learns every task
  with a local CE over the current task's classes (``train_step``: ``output[:, num_old_classes:]``), together with
  the shared classifier.  From the second task on, the first ``freeze_epochs`` = 3 epochs of each task train
  the classifier only (PET frozen; calibration of the new classes' rows).
* The **offline** module is created at the start of the second task as a copy of the online one, then
  follows it as an exponential moving average after every step, offline <- d * offline + (1 - d) * online,
  d = 0.9999 (timm ``ModelEmaV2``; ``num_emas`` = 1).
* Inference: both modules (the same classifier), ensembled by the class-wise maximum of their softmax outputs
  (``eval_epoch``: ``torch.stack(output_emas).max(dim=-1)``); on the first task the online one alone.
  ``predict`` returns the log of that maximum (classes not seen yet stay -inf).
* PET: LoRA through peft (``cl.models.adapters.LoraSet``), two named adapters ``online`` / ``offline``; rank 5,
  scale 1 (``pet_kwargs: rank 5, scale null``), on blocks 0-4 of a ViT (``adapt_blocks``).  Adam, lr 0.0028125,
  no weight decay, batch 24, 5 epochs (set ``protocol.epochs: 5``, ``batch_size: 24``).

Choices left open / deviations:
* LAE's ``KVLoRA`` adapts the key and value outputs of the fused qkv projection; peft's LoRA on ``qkv`` adapts the
  query too (one LoRA over the fused output).  The adapter and prefix PET variants need ``cl/models/petl.py`` /
  prefix modules of other engineers (not available here): only LoRA is implemented.
* The learning-rate schedule of the code (``scheduler: mode linear``) is not reproduced: constant lr.
* ``ensemble`` = ``online`` / ``offline`` give the two single-module ablations of the paper.
* Non-ViT backbones: LoraSet's default targets (MiniLM query/value, CNN convolutions, mlp linears), every layer.

Backbones: timm ViTs, MiniLM, EfficientNet-Lite0, mlp (whatever LoraSet can target).  Needs experience
boundaries (the offline module starts at a task boundary).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.model import Model, head_of
from cl.models.task_keys import by_length, freeze_batchnorm, remember_preprocess, trim_padding
from cl.models.multihead import class_mask
from strategies._boundaries import require_boundaries

ENSEMBLES = ("max_prob", "online", "offline")


@dataclass
class LAEConfig(StrategyConfig):
    lr: float = 0.0028125  # config/base/cifar100_order1.yaml
    optimizer: str = "adam"
    weight_decay: float = 0.0
    r: int = 5
    alpha: int = 5  # scale 1 = alpha / r
    blocks: list[int] | None = field(default_factory=lambda: [0, 1, 2, 3, 4])  # ViT blocks with LoRA; None = all
    ema_decay: float = 0.9999
    freeze_epochs: int = 3  # head-only epochs at the start of every task but the first
    ensemble: str = "max_prob"  # max_prob | online | offline


@register("lae", LAEConfig)
class LAE(Strategy):
    """Online LoRA trained per task, offline LoRA = its EMA; max-softmax ensemble of both at inference."""

    state_attrs = ("session",)
    transient_attrs = ("current", "_done", "_n_train")  # set by before_experience

    @classmethod
    def build_model(cls, cfg: LAEConfig, backbone, scenario):
        if cfg.ensemble not in ENSEMBLES:
            raise unknown("strategy.ensemble", cfg.ensemble, ENSEMBLES)
        if not 0 <= cfg.ema_decay <= 1 or cfg.freeze_epochs < 0:
            raise ConfigError(f"strategy.ema_decay must be in [0, 1] and freeze_epochs >= 0, got {cfg.ema_decay}, "
                              f"{cfg.freeze_epochs}")
        from cl.models.adapters import LoraSet, detect_family

        try:
            family = detect_family(backbone)
        except ValueError:
            raise ConfigError(f"lae needs a backbone a LoRA adapter can target (timm ViTs, minilm, "
                              f"efficientnet-lite0, mlp), got {type(backbone).__name__} with no layers; set "
                              f"strategy.frozen_backbone=false") from None
        targets = None
        if family == "vit" and cfg.blocks is not None:
            targets = r"(.*\.)?blocks\.(" + "|".join(str(int(b)) for b in cfg.blocks) + r")\.attn\.qkv"
        lora = LoraSet(backbone, r=cfg.r, alpha=cfg.alpha, targets=targets)
        lora.add("offline")
        lora.add("online")  # the active (trainable) one
        model = Model(backbone, head_of(cfg, backbone.out_dim, scenario.n_classes))
        object.__setattr__(model, "lora", lora)  # a plain handle, not a submodule
        remember_preprocess(model, scenario)
        return model

    @property
    def lora(self):
        return self.model.lora

    def _pairs(self):
        """(online, offline) parameter pairs, matched by name."""
        named = dict(self.model.backbone.named_parameters())
        return [(p, named[n.replace(".online", ".offline")]) for n, p in named.items() if ".online" in n]

    def make_optimizer(self):
        self.lora.switch("online")
        params = list(self.lora.parameters("online")) + list(self.model.head.parameters())
        return make_optimizer(params, self.cfg)

    def setup(self):
        require_boundaries(self, "starts its offline module at a task boundary")
        self.session = -1
        self.current = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)
        self._done, self._n_train = 0, 1

    def before_experience(self, exp):
        self.session += 1
        self.current.copy_(class_mask(exp.classes, self.info.n_classes, self.device))
        if self.session == 1:  # the offline module starts as a copy of the online one (ModelEmaV2(pets))
            with torch.no_grad():
                for on, off in self._pairs():
                    off.copy_(on)
        self.optimizer = self.make_optimizer()
        self._done, self._n_train = 0, max(len(exp.train_y), 1)

    def train_step(self, x, y, t=None):
        self.lora.switch("online")
        frozen = self.session > 0 and self._done // self._n_train < self.cfg.freeze_epochs
        for p in self.lora.parameters("online"):
            p.requires_grad_(not frozen)
        self._done += len(y)
        loss = super().train_step(x, y, t)
        if self.session > 0:  # offline <- d * offline + (1 - d) * online, every step
            d = self.cfg.ema_decay
            with torch.no_grad():
                for on, off in self._pairs():
                    off.mul_(d).add_(on, alpha=1 - d)
        return loss

    def loss(self, x, y, t=None):
        freeze_batchnorm(self.model.backbone)
        x = trim_padding(self.augmented(x))
        logits = self.model.head.raw(self.model.backbone(x)).float().masked_fill(~self.current, float("-inf"))
        return F.cross_entropy(logits, y)  # local CE over the current task's classes

    def _logits(self, x, adapter):
        self.lora.switch(adapter)
        return self.model(x).float()

    def predict(self, x, t=None):
        return by_length(self._predict, x)

    def _predict(self, x):
        try:
            if self.session < 1 or self.cfg.ensemble == "online":
                return self._logits(x, "online")
            if self.cfg.ensemble == "offline":
                return self._logits(x, "offline")
            p = torch.maximum(self._logits(x, "online").softmax(1), self._logits(x, "offline").softmax(1))
            return p.log()
        finally:
            self.lora.switch("online")

    def extra_metrics(self):
        return {"adapter_params": self.lora.trainable_parameters("online")}
