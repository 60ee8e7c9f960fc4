"""What the contrastive replay strategies share (SCR, PCR, OCM, OnPro): a reservoir buffer of raw inputs,
the method's own view augmentation (``cl.models.contrastive.ViewAugment``, with the scenario's normalisation
recorded on the model by ``build_model``), Adam with the authors' betas, and config checks."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer
from cl.models.buffers import ReservoirBuffer
from cl.models.contrastive import (
    VIEW_KINDS,
    ContrastiveModel,
    ProjectionHead,
    ViewAugment,
    ocm_rotations,
    ocm_similarity,
    rotation_labels,
    scenario_stats,
)
from cl.models.heads import IncrementalLinear


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise unknown(f"strategy.{name}", value, choices)


def check_positive(cfg, *names) -> None:
    for n in names:
        if getattr(cfg, n) <= 0:
            raise ConfigError(f"strategy.{n} must be > 0, got {getattr(cfg, n)!r}")


def record_stats(model, scenario):
    """Keep the scenario's normalisation on the model (a private attribute: not state, rebuilt identically)."""
    object.__setattr__(model, "_view_stats", scenario_stats(scenario))
    return model


class ContrastiveReplay(Strategy):
    """Reservoir buffer (raw inputs, updated after the step) + the method's views."""

    transient_attrs = ("views",)
    cfg_name = "?"

    def setup(self):
        if self.cfg.buffer_size < 1:
            raise ConfigError(f"strategy.buffer_size must be >= 1 for {self.cfg_name}, got {self.cfg.buffer_size}")
        check_choice("view_augment", self.cfg.view_augment, VIEW_KINDS)
        self.buffer = ReservoirBuffer(self.cfg.buffer_size, self.device)
        mean, std = getattr(self.model, "_view_stats", (None, None))
        self.views = ViewAugment(self.cfg.view_augment, mean, std, getattr(self.cfg, "view_jitter", "plain"))

    def make_optimizer(self):
        beta2 = getattr(self.cfg, "adam_beta2", None)  # the authors' beta2, for AdamW too (not torch's 0.999)
        return make_optimizer(self.model.parameters(), self.cfg, betas=None if beta2 is None else (0.9, beta2))

    def after_step(self, x, y, t=None):
        self.buffer.add(x=x, y=y)

    def extra_state(self):
        return {**super().extra_state(), "buffer": self.buffer.state_dict()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.buffer.load_state_dict(state["buffer"])


def model_with_projection(cfg, backbone, scenario):
    d = backbone.out_dim
    head = IncrementalLinear(d, scenario.n_classes)
    return record_stats(ContrastiveModel(backbone, head, ProjectionHead(d, min(cfg.proj_dim, d), "linear")), scenario)


ROTATIONS = (1, 4, 16)


@dataclass
class RotationConfig(StrategyConfig):
    """The settings OCM and OnPro share (the authors' optimiser: Adam, betas (0.9, 0.99), weight decay 1e-4)."""

    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    adam_beta2: float = 0.99
    replay_batch_size: int = 64
    per_class_cap: int = 7  # the replay batch is min(replay_batch_size, per_class_cap * #classes seen)
    rotations: int = 16  # 16 (paper) | 4 | 1
    proj_dim: int = 128
    view_augment: str = "ocm"  # ocm | scr | none

    def validate(self):
        check_choice("rotations", self.rotations, ROTATIONS)
        check_choice("view_augment", self.view_augment, VIEW_KINDS)
        check_positive(self, "replay_batch_size", "proj_dim", "per_class_cap")


class RotationContrast:
    """The instance-wise contrastive pieces OCM and OnPro share (mixed into their strategies)."""

    def n_rot(self, x) -> int:
        return self.cfg.rotations if x.dim() == 4 else 1  # non-image inputs: no rotation

    def rotated_pair(self, x):
        """(``[rot(x); view(rot(x))]``, ``rot(x)``)."""
        r = ocm_rotations(x, self.n_rot(x))
        return torch.cat([r, self.views(r)]), r

    def rot_labels(self, y, x):
        return rotation_labels(y, self.n_rot(x), self.info.n_classes)

    def embed(self, pair):
        """Normalised encoder features and projections of a batch of images."""
        h = self.model.features(pair).flatten(1)
        return F.normalize(h.float(), dim=1), self.model.project(h)

    def offset(self, f, z):
        span = max(1, f.shape[1] - z.shape[1])
        return int(torch.randint(span, ()).item())

    def sim(self, f, z, scale):
        return ocm_similarity(z, f, self.offset(f, z), scale)
