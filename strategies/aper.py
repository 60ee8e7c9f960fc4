"""APER (ADAM): first-session PETL adaptation, then prototypes over [pretrained; adapted] features.

Zhou, Cai, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability
and Adaptivity are All You Need", IJCV 2024 (arXiv 2303.07338; "ADAM" in the first version).  Spec:
methods.md 7b.  Code read: LAMDA-PILOT ``models/aper_adapter.py``, ``aper_ssf.py``, ``aper_vpt.py``,
``aper_finetune.py``, ``utils/inc_net.py`` (``SimpleVitNet``, ``MultiBranchCosineIncrementalNet``),
``backbone/linears.py`` (``CosineLinear``), ``exps/aper_*.json`` (sun-hailong/LAMDA-PILOT@2647455, the
successor of zhoudw-zdw/RevisitingCIL).

Mechanism
* **First session only**: a parameter-efficient module on the frozen backbone is tuned with cross-entropy
  through a cosine classifier ``sigma * cos(phi_a(x), w_c)`` (learnable ``sigma``, init 1; weights
  U(-1/sqrt(d), 1/sqrt(d)), PILOT's ``CosineLinear``) over the first session's classes.  ``petl``:

  - ``adapter`` (default; ``aper_aperpter.json``): AdaptFormer adapter parallel to every block's MLP,
    bottleneck 64, scale 0.1, dropout 0.1, zero-init up-projection (cl.models.petl.AdapterBank, one set);
  - ``ssf``: scale and shift after every linear / LayerNorm / patch-embedding op, init N(1, 0.02) / N(0, 0.02)
    (cl.models.petl.SSF; PILOT ``backbone/vit_ssf.py``);
  - ``vpt``: ``vpt_length`` prompt tokens, ``vpt_type`` deep (every block) or shallow (PILOT
    ``backbone/vpt.py``: zero-init tokens; cl.models.petl.VisualPrompts);
  - ``finetune``: every backbone weight (``aper_finetune.py``); the pretrained branch is a frozen copy.

* Then everything is frozen (no step after the first session; ``trainable_params`` in the result counts
  the module tuned in the first session and its tuning head).  After every session (the first included) each new class gets a prototype:
  the mean of the **raw** concatenated features [phi_pretrained(x); phi_adapted(x)] (2d) of its un-augmented
  training data (PILOT ``replace_fc`` on the test-transform loader); prediction = argmax of the cosine
  between the concatenated feature and the prototypes (``CosineLinear`` with sigma 1: the scale does not
  change the argmax).  No exemplars, no training after the first session.
* The pretrained branch is the same backbone with the PETL module switched off (bit-identical to the
  pretrained network; PILOT builds a second backbone instead), except for ``finetune`` (a frozen copy).

Defaults and their source: SGD, momentum 0.9, lr 0.01, weight decay 5e-4, 20 epochs, batch 48, cosine lr
to 0 (``aper_aperpter.json``, CIFAR-100; ImageNet-R: lr 0.05, wd 5e-3, batch 16, 10 epochs, VPT deep
with 30 tokens).  ``tune_epochs=20`` repeats the first session's data 20 times with a per-sample cosine
schedule (run with ``protocol.epochs=1``); ``tune_epochs=None`` (default) trains ``protocol.epochs`` at a
constant lr.  Later sessions train nothing: their training data is only featurised (the engine's loop
is handed one sample, and the step is a no-op).

Choices the paper leaves open, taken from the code: the cosine tuning head and its learnable scale; the
prototype of the raw (unnormalised) features; SSF's init; VPT's zero init and token count (5 on CIFAR).

Deviations: prototypes are running sums (a class seen again in a later session averages over both; PILOT
overwrites); the cosine schedule is per sample, not per epoch; the adapter uses the platform's hooks on
timm's ``Block`` (same function as PILOT's re-implemented block).

Backbones: ``adapter`` and ``ssf``: timm ViTs and MiniLM (adapter after the BERT attention output, added to
the FFN output before its LayerNorm; SSF after every linear and LayerNorm); ``vpt``: timm ViTs only;
``finetune``: any backbone (EfficientNet-Lite0 included).  An adapter / SSF on a CNN is not the paper's,
so a backbone without transformer blocks is a ConfigError naming the ones that work.  Needs visible task
boundaries; class-, domain- and task-incremental settings all work (prototypes are per class).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.heads import cosine_logits
from cl.models.petl import VPT_INITS, SSF, AdapterBank, VisualPrompts, transformer_family
from cl.models.prototypes import PrototypeHead
from cl.models.task_keys import by_length, freeze_batchnorm, remember_preprocess, trim_padding
from strategies._sessions import SessionMixin, repeated

PETL = ("adapter", "ssf", "vpt", "finetune")
VPT_TYPES = ("deep", "shallow")
WORKING = "timm ViTs (vit-tiny, timm:vit_*) and minilm"


@dataclass
class APERConfig(StrategyConfig):
    petl: str = "adapter"  # adapter | ssf | vpt | finetune
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    tune_epochs: int | None = None  # first-session epochs (data repeated, cosine lr); None: protocol.epochs
    min_lr: float = 0.0
    bottleneck: int = 64  # adapter (ffn_num)
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.1
    ssf_init_std: float = 0.02  # 0: SSF starts at the identity
    vpt_type: str = "deep"  # deep | shallow
    vpt_length: int = 5  # prompt_token_num
    vpt_init: str = "zeros"  # zeros (PILOT) | uniform (VPT paper)
    feature_batch: int = 256

    def validate(self):
        if self.petl not in PETL:
            raise unknown("strategy.petl", self.petl, PETL)
        if self.vpt_type not in VPT_TYPES:
            raise unknown("strategy.vpt_type", self.vpt_type, VPT_TYPES)
        if self.vpt_init not in VPT_INITS:
            raise unknown("strategy.vpt_init", self.vpt_init, VPT_INITS)
        if self.tune_epochs is not None and self.tune_epochs < 1:
            raise ConfigError(f"strategy.tune_epochs={self.tune_epochs!r}: give a number of epochs >= 1, or null "
                              f"for protocol.epochs")
        if self.vpt_length < 1 or self.bottleneck < 1:
            raise ConfigError(f"strategy.vpt_length={self.vpt_length!r}, strategy.bottleneck={self.bottleneck!r}: "
                              f"both must be >= 1")


def petl_module(kind: str, backbone: nn.Module, cfg, who: str) -> nn.Module | None:
    """The PETL module of ``kind`` attached to ``backbone`` (frozen first), or a ConfigError naming the
    backbones that work.  ``finetune``: None (the backbone itself trains)."""
    fam = transformer_family(backbone)
    if kind == "finetune":
        return None
    if fam is None:
        raise ConfigError(f"{who} petl={kind} needs transformer blocks: it works on {WORKING}; "
                          f"{type(backbone).__name__} has none (petl=finetune works on any backbone)")
    if kind == "vpt" and fam != "vit":
        raise ConfigError(f"{who} petl=vpt needs a timm ViT (vit-tiny, timm:vit_*); {type(backbone).__name__} is a "
                          f"{fam} encoder: use petl=adapter or ssf")
    for p in backbone.parameters():
        p.requires_grad_(False)
    if kind == "adapter":
        bank = AdapterBank(backbone, cfg.bottleneck, cfg.adapter_scale, cfg.adapter_dropout)
        bank.add_set()
        return bank
    if kind == "ssf":
        return SSF(backbone, cfg.ssf_init_std)
    return VisualPrompts(backbone, cfg.vpt_length, deep=cfg.vpt_type == "deep", init=cfg.vpt_init)


class APERModel(nn.Module):
    """Backbone + PETL module; tuning head (first session) and prototype head on [pretrained; adapted]."""

    def __init__(self, backbone: nn.Module, petl: nn.Module | None, n_classes: int,
                 pretrained: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.petl = petl
        self.pretrained = pretrained  # finetune: frozen copy of the pretrained backbone
        d = backbone.out_dim
        self.tune_weight = nn.Parameter(torch.empty(n_classes, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))
        self.sigma = nn.Parameter(torch.ones(1))
        self.protos = PrototypeHead(2 * d, n_classes, metric="cosine", normalize=False)
        self.out_dim = 2 * d

    def _switch(self, on: bool):
        p = self.petl
        if isinstance(p, AdapterBank):
            p.activate(0 if on else None)
        elif p is not None:
            p.enable(on)

    def adapted(self, x):
        self._switch(True)
        return self.backbone(x).float()

    def plain(self, x):
        if self.pretrained is not None:
            return self.pretrained(x).float()
        self._switch(False)
        try:
            return self.backbone(x).float()
        finally:
            self._switch(True)

    def features(self, x):
        return torch.cat([self.plain(x), self.adapted(x)], dim=1)

    def tune_logits(self, h):
        return self.sigma * cosine_logits(h, self.tune_weight)

    def forward(self, x):
        return self.protos(self.features(x))

    def observe(self, y):  # prototypes mark their classes seen when they are computed
        pass

    @property
    def seen(self):
        return self.protos.seen

    def tuned_parameters(self):
        mods = [self.backbone] if self.petl is None else [self.petl]
        return [p for m in mods for p in m.parameters()] + [self.tune_weight, self.sigma]


@register("aper", APERConfig)
class APER(SessionMixin, Strategy):
    """APER / ADAM: PETL tuned on the first session, frozen; prototypes on [pretrained; adapted] features."""

    @classmethod
    def build_model(cls, cfg: APERConfig, backbone, scenario):
        pretrained = None
        if cfg.petl == "finetune":
            pretrained = copy.deepcopy(backbone)
            for p in pretrained.parameters():
                p.requires_grad_(False)
        petl = petl_module(cfg.petl, backbone, cfg, "aper")
        model = APERModel(backbone, petl, scenario.n_classes, pretrained)
        remember_preprocess(model, scenario)
        return model

    def make_optimizer(self):
        from cl.core.strategy import make_optimizer

        return make_optimizer(self.model.tuned_parameters(), self.cfg)

    def setup(self):
        self.setup_sessions("aper")

    def before_experience(self, exp):
        self.start_session(exp, self.cfg.tune_epochs)
        if self.session == 0:
            self.optimizer = self.make_optimizer()

    def train_data(self, exp):
        x, y = super().train_data(exp)
        if self.session > 0:  # nothing is trained after the first session: one sample, a no-op step (the
            return x[:1], y[:1]  # engine's loop needs at least one step for its finite-loss check)
        return repeated(x, y, self._repeat)

    def train_step(self, x, y, t=None):
        if self.session > 0:
            return torch.zeros((), device=y.device)
        self.schedule.step(self.optimizer, self.cfg.lr, len(y), self.cfg.min_lr)
        return super().train_step(x, y, t)

    def loss(self, x, y, t=None):
        if self.model.petl is not None:  # frozen backbone: BatchNorm statistics must not drift
            freeze_batchnorm(self.model.backbone)
        x = trim_padding(self.augmented(x))
        logits = self.model.tune_logits(self.model.adapted(x)).masked_fill(~self.current, float("-inf"))
        return F.cross_entropy(logits, y)

    def after_experience(self, exp):
        f = self.featurise(self.model.features, exp.train_x, self.cfg.feature_batch)
        self.model.protos.update(f, exp.train_y.to(self.device))

    def predict(self, x, t=None):
        return by_length(self.model, x)

