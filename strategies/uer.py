"""UER: unbias experience replay (Lin et al., ACM MM 2023; methods.md section 2).

Bias-free linear head W.  Logits decompose as ``W_c . h = ||W_c|| ||h|| cos(theta_c)``.
The incoming batch is learned through the angle factor only (cosine logits with
temperature ``tau``), whose gradient w.r.t. W_c is orthogonal to W_c, so learning new
classes does not, to first order, inflate their weight norms; the replay batch is
learned through dot-product logits (norm and angle).  ``L = CE(cos/tau, B_t) + CE(W h, R)``.

No official code exists; unverified details are options with these defaults:
``tau = 0.09`` (the authors' cosine head elsewhere), inference with dot-product logits
(``infer="dot"``; ``"cosine"`` is the alternative), no cosine term on replay samples,
no PCR-style augmented copy (the engine's on-device augmentation, if any, still applies).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from cl.models.heads import IncrementalLinear, cosine_logits
from cl.models.model import Model
from cl.core.strategy import register
from strategies.er import ER, ERConfig


@dataclass
class UERConfig(ERConfig):
    tau: float = 0.09  # temperature of the cosine logits of the incoming batch
    infer: str = "dot"  # dot | cosine


@register("uer", UERConfig)
class UER(ER):
    """Unbias ER: incoming batch via cosine logits, replay via dot-product logits (bias-free head)."""

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        if cfg.infer not in ("dot", "cosine"):
            from cl.core.registry import unknown

            raise unknown("uer infer mode", cfg.infer, ("dot", "cosine"))
        return Model(backbone, IncrementalLinear(backbone.out_dim, scenario.n_classes, bias=False))

    def cosine_logits(self, h):
        head = self.model.head
        return head.mask(cosine_logits(h.float(), head.weight.float()) / self.cfg.tau)

    def incoming_loss(self, x, y):
        x = self.augmented(x)
        return F.cross_entropy(self.cosine_logits(self.model.features(x)), y)

    def loss(self, x, y, t=None):
        loss = self.incoming_loss(x, y)
        mem = self.buffer.sample(self.cfg.replay_batch_size)
        if mem:
            loss = loss + super(ER, self).loss(mem["x"], mem["y"], t)  # dot-product logits
        return loss

    def predict(self, x, t=None):
        if self.cfg.infer == "cosine":
            return self.cosine_logits(self.model.features(x))
        return self.model(x)
