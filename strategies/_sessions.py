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
from cl.models.multihead import class_mask


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


class SessionMixin:
    """Working values and helpers that APER and EASE share (put it before Strategy):
    the session counter (state), the current session's class mask, its data repetition and lr schedule
    (recomputed in ``start_session``), and eval-mode featurisation of a whole experience."""

    state_attrs = ("session",)
    transient_attrs = ("current", "schedule", "_repeat")

    def setup_sessions(self, who: str) -> None:
        from cl.models.task_keys import model_preprocess
        from strategies._boundaries import require_boundaries

        require_boundaries(self, f"{who} works session by session")
        self.preprocess = model_preprocess(self.model, self.device)
        self.session = -1
        self.current = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)
        self.schedule = CosineSession()
        self._repeat = 1

    def start_session(self, exp, epochs: int | None) -> None:
        """Next session: its class mask, ``epochs`` repetitions of its data with a cosine lr (None: once,
        constant lr)."""
        self.session += 1
        self.current.copy_(class_mask(exp.classes, self.info.n_classes, self.device))
        self._repeat = int(epochs or 1)
        self.schedule.start(self._repeat * len(exp.train_y) if epochs else 0)

    @torch.no_grad()
    def featurise(self, fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``fn`` over ``x`` (raw, un-augmented) in eval mode, in batches, token ids grouped by length."""
        from cl.models.task_keys import batched, by_length

        was = self.model.training
        self.model.eval()
        try:
            return batched(lambda xb: by_length(fn, xb), x, batch_size, self.preprocess)
        finally:
            self.model.train(was)
