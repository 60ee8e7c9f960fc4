"""Real-time accounting (Ghunaim et al. 2023): the cost of a strategy's step in stream intervals.

The step that costs 1 is the *reference* (``protocol.realtime_reference``):

* ``er``: an experience-replay step built from core pieces: the incoming batch plus an equal-size batch
  drawn from a reservoir buffer (:class:`cl.models.buffers.ReservoirBuffer`, 100 slots) in one forward
  pass, cross-entropy on each half, backward, SGD step, buffer update -- the work of the ``er`` strategy's
  default step, so that ER costs 1 as in the paper;
* ``sgd``: a plain SGD step on the batch.

Both run on copies of the model with learning rate 0, and every RNG state is restored afterwards, so
the run itself is unchanged.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cl.models.buffers import ReservoirBuffer

REFERENCES = ("er", "sgd")


def reference_step(kind: str, model: torch.nn.Module, x, y, device) -> Callable[[], None]:
    """One reference step on ``model`` (a copy: its optimiser has learning rate 0) for batch (x, y)."""
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.0)
    observe = getattr(model, "observe", None)  # heads that grow with the classes seen
    buf = ReservoirBuffer(100, device) if kind == "er" else None
    b = len(y)

    def step():
        if observe is not None:
            observe(y)
        opt.zero_grad(set_to_none=True)
        mem = buf.sample(b) if buf is not None else None
        if mem:
            logits = model(torch.cat([x, mem["x"]])).float()
            loss = F.cross_entropy(logits[:b], y) + F.cross_entropy(logits[b:], mem["y"])
        else:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if buf is not None:
            buf.add(x=x, y=y)

    return step


def _median_time(fn, device, warmup: int, reps: int) -> float:
    out = []
    for r in range(warmup + reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        a = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r >= warmup:
            out.append(time.perf_counter() - a)
    return float(np.median(out))


def calibrate(strategy, x, y, t, reference: str, warmup: int = 2, reps: int = 5) -> tuple[float, float | None]:
    """(C, measured ratio): the median time of the strategy's step over the reference step's, rounded to
    the nearest integer >= 1 (step costs are whole stream intervals); (1.0, None) if it cannot be timed."""
    dev = strategy.device
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if dev.type == "cuda" else None
    try:
        strat = copy.deepcopy(strategy)
        ref_model = copy.deepcopy(strategy.model)
    except Exception as e:
        warnings.warn(f"real-time accounting: cannot copy the strategy to time it ({e}); using cost 1")
        return 1.0, None
    ref = reference_step(reference, ref_model, x, y, dev)
    try:
        raw = _median_time(lambda: strat.train_step(x, y, t), dev, warmup, reps) / max(
            1e-9, _median_time(ref, dev, warmup, reps))
    finally:
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return float(max(1, round(raw))), raw
