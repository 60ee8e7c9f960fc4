"""A frozen copy of the model taken at an experience boundary (the teacher of every distillation method).

``FrozenCopy`` is empty (falsy) until the first ``take(model)``; ``take`` deep-copies the model, puts the copy
in eval mode (BatchNorm uses its running statistics, dropout is off) and turns its gradients off. Calling it
(``frozen(x)``, ``frozen.features(x)``) runs under ``torch.no_grad``. A later ``take`` reuses the copy and
loads the new weights into it.

Checkpoints: ``state_dict()`` is ``None`` before the first boundary, else the copy's ``state_dict`` as CPU
tensors (plain values only, loadable with ``weights_only=True``); ``load_state_dict(state, like=model)``
rebuilds the copy from the live model's architecture and loads the saved weights into it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class FrozenCopy:
    def __init__(self):
        self.module: nn.Module | None = None

    def __bool__(self) -> bool:
        return self.module is not None

    @torch.no_grad()
    def take(self, model: nn.Module) -> None:
        """Freeze the current weights (and buffers, e.g. BatchNorm statistics and the head's seen mask)."""
        if self.module is None:
            self.module = copy.deepcopy(model)
            for p in self.module.parameters():
                p.requires_grad_(False)
                p.grad = None
        else:
            self.module.load_state_dict(model.state_dict())
        self.module.eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen model (eval mode, no gradient)."""
        return self.module(x)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.features(x)

    def state_dict(self) -> dict | None:
        if self.module is None:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict | None, like: nn.Module) -> None:
        if state is None:
            self.module = None
            return
        self.take(like)
        self.module.load_state_dict(state)
        self.module.eval()
