"""Checkpoints at experience boundaries: the strategy's state, its other attributes, the engine state and every
RNG state, written to a temporary file and renamed; loaded back only when the run id matches."""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from cl.core.config import run_id as make_run_id


def _rng_state():
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st):
    torch.set_rng_state(st["torch"].cpu() if isinstance(st["torch"], torch.Tensor) else st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["random"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


# -- strategy attributes in checkpoints ---------------------------------------------------------------
_CORE_ATTRS = {"cfg", "model", "optimizer", "info", "device", "augment"}


def _live_storages(strategy) -> set:
    ptrs = set()
    for t in list(strategy.model.parameters()) + list(strategy.model.buffers()):
        ptrs.add(t.untyped_storage().data_ptr())
    return ptrs


def _refs_live(v, live: set, model, seen: set, depth: int = 0) -> bool:
    """Does ``v`` hold the live model, its parameters, an optimiser or a callable bound to the strategy?
    Such attributes are rebuilt by the strategy itself (setup/state_dict), never restored from pickles."""
    if depth > 5 or id(v) in seen:
        return False
    seen.add(id(v))
    if isinstance(v, torch.Tensor):
        return v.numel() > 0 and v.untyped_storage().data_ptr() in live
    if isinstance(v, torch.nn.Module):
        return v is model or any(_refs_live(t, live, model, seen, depth + 1)
                                 for t in list(v.parameters()) + list(v.buffers()))
    if isinstance(v, (torch.optim.Optimizer, torch.Generator)) or callable(v) and not isinstance(v, type):
        return True
    if isinstance(v, dict):
        return any(_refs_live(x, live, model, seen, depth + 1) for x in v.values())
    if isinstance(v, (list, tuple, set)):
        return any(_refs_live(x, live, model, seen, depth + 1) for x in v)
    if hasattr(v, "__dict__") and not isinstance(v, type):
        return any(_refs_live(x, live, model, seen, depth + 1) for x in vars(v).values())
    return False


def _strategy_attrs(strategy) -> dict:
    """The strategy's own attributes that can be restored by value (top-level torch.Generators by state)."""
    live, out = _live_storages(strategy), {}
    for k, v in vars(strategy).items():
        if k in _CORE_ATTRS:
            continue
        if isinstance(v, torch.Generator):
            out[k] = {"__generator_state__": v.get_state()}
        elif not _refs_live(v, live, strategy.model, set()):
            out[k] = v
    return out


def _restore_strategy_attrs(strategy, attrs: dict) -> None:
    for k, v in attrs.items():
        cur = getattr(strategy, k, None)
        if isinstance(v, dict) and "__generator_state__" in v:
            if isinstance(cur, torch.Generator):
                cur.set_state(v["__generator_state__"].cpu())
        else:
            setattr(strategy, k, v)


def _picklable(v) -> bool:
    import io

    try:
        torch.save(v, io.BytesIO())
        return True
    except Exception:
        return False


def save(path: Path, run_id: str, config: dict, strategy, state: dict) -> None:
    """Everything needed to continue exactly: the strategy's state_dict (model, optimiser, extra state),
    its other attributes (lists, buffers, frozen copies... that its state_dict may not cover), the
    engine state (R, online counters, timings) and every RNG state. Written to a temporary file and
    renamed, so a kill during the write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".pt.tmp")
    ck = {"run_id": run_id, "config": config, "strategy": strategy.state_dict(), "rng": _rng_state(),
          "state": state, "attrs": _strategy_attrs(strategy)}
    try:
        torch.save(ck, tmp)
    except Exception:  # an attribute that does not pickle: keep the ones that do
        ck["attrs"] = {k: v for k, v in ck["attrs"].items() if _picklable(v)}
        torch.save(ck, tmp)
    os.replace(tmp, path)


def load(path: Path, run_id: str, strategy, device) -> dict | None:
    """The engine state of this run's checkpoint, with strategy and RNGs restored; None if none applies."""
    try:
        ck = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # a truncated or foreign file: start over rather than fail
        print(f"warning: ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
        return None
    rid = ck.get("run_id") or (make_run_id(ck["config"]) if isinstance(ck.get("config"), dict) else None)
    if rid != run_id:
        return None
    _restore_strategy_attrs(strategy, ck.get("attrs") or {})
    strategy.load_state_dict(ck["strategy"])
    _set_rng_state(ck["rng"])
    return ck["state"]
