"""Classification heads. Heads keep a device-resident mask of the classes seen so
far: ``observe(y)`` marks classes (no host synchronisation) and unseen classes'
logits are -inf, so the head grows with the classes seen while shapes stay static
(which CUDA-graph capture needs).

``head.raw(h)`` gives the logits before the unseen-class mask (every class, finite): DER-family
strategies store and distil these, as mammoth's unmasked heads do; ``head(h)`` is ``mask(raw(h))``,
bitwise the same as before ``raw`` existed.  With ``mask_unseen = False`` (``strategy.mask_unseen: false``)
``mask`` is the identity: every class is scored in training and at test, as in a fixed head."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MaskedHead(nn.Module):
    #: False: ``mask`` passes every class's logit (a fixed head over all classes from the start, as the MIR and
    #: AML code train ER and MIR); ``seen`` is still kept. Set by ``head_of`` from ``strategy.mask_unseen``.
    mask_unseen: bool = True

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    @torch.no_grad()
    def observe(self, y: torch.Tensor) -> None:
        self.seen[y] = True

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.mask_unseen:
            return logits
        return logits.masked_fill(~self.seen, float("-inf"))


class IncrementalLinear(MaskedHead):
    """Linear head whose active outputs are the classes seen so far."""

    def __init__(self, in_dim: int, n_classes: int, bias: bool = True):
        super().__init__(n_classes)
        self.fc = nn.Linear(in_dim, n_classes, bias=bias)

    @property
    def weight(self):
        return self.fc.weight

    def raw(self, h):
        return self.fc(h)

    def forward(self, h):
        return self.mask(self.raw(h))


def cosine_logits(h: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """cos(h, w_c) for every class c (rows of weight), with an epsilon in the norms."""
    hn = h / (h.norm(dim=1, keepdim=True) + eps)
    wn = weight / (weight.norm(dim=1, keepdim=True) + eps)
    return hn @ wn.t()


class CosineHead(MaskedHead):
    """Cosine classifier: logits = cos(h, w_c) / tau."""

    def __init__(self, in_dim: int, n_classes: int, tau: float = 0.09):
        super().__init__(n_classes)
        self.weight = nn.Parameter(torch.empty(n_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.tau = tau

    def raw(self, h):
        return cosine_logits(h, self.weight) / self.tau

    def forward(self, h):
        return self.mask(self.raw(h))


HEADS = {"linear": IncrementalLinear, "cosine": CosineHead}


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy that tolerates -inf logits of masked classes."""
    return F.cross_entropy(logits.float(), y)
