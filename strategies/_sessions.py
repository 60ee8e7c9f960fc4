"""Per-session epoch counts and a cosine learning rate inside a session (APER, EASE).

The official LAMDA-PILOT configs train a session for a number of epochs with a cosine schedule
(``CosineAnnealingLR(T_max=epochs, eta_min=min_lr)``, stepped per epoch).  The engine runs the same
``protocol.epochs`` for every experience and tells the strategy nothing about it, so a strategy that needs its
own count repeats the session's data that many times (run it with ``protocol.epochs=1``; the engine shuffles the
repeated set, so an "epoch" is a pass in expectation) and anneals the learning rate per sample, from ``lr``
to ``min_lr`` over the repeated set: the continuous version of the per-epoch steps.
"""
from __future__ import annotations

import math

import torch


def repeated(x: torch.Tensor, y: torch.Tensor, times: int):
    """The session's data ``times`` times over (a view-free copy; ``times <= 1``: unchanged)."""
    if times <= 1:
        return x, y
    return x.repeat(times, *([1] * (x.dim() - 1))), y.repeat(times)


class CosineSession:
    """lr = min_lr + (lr - min_lr) * (1 + cos(pi * done / total)) / 2 over ``total`` samples; off when total=0.
    Its counters restart in ``start`` at every session (working values, not state)."""

    def __init__(self):
        self.done, self.total = 0, 0

    def start(self, total: int) -> None:
        self.done, self.total = 0, int(total)

    def step(self, optimizer, lr: float, n: int, min_lr: float = 0.0) -> None:
        if not self.total:
            return
        frac = min(self.done / self.total, 1.0)
        for g in optimizer.param_groups:
            g["lr"] = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        self.done += int(n)
