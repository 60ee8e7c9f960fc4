"""Checkpoints at experience boundaries: the strategy's declared state, the engine state and every RNG state,
written to a uniquely named temporary file and renamed; loaded back with ``torch.load(weights_only=True)``
(no code from the file ever runs) and only when the run id matches.

A checkpoint holds tensors and plain values only. numpy arrays and scalars (the online loop's packed bits,
numpy's RNG state) are stored as tensors with their dtype and turned back into numpy on load. Anything else
(a custom object, an ``nn.Module``, a ``torch.Generator``) is an error at save time that names where it is:
a strategy declares its state (``Strategy.state_attrs``, or ``extra_state`` / ``load_extra_state``), it is
never guessed from the strategy's attributes."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch

from cl.core.config import run_id as make_run_id
from cl.core.files import atomic_write

_ND, _NS = "__ndarray__", "__npscalar__"
_PLAIN = (str, int, float, bool, bytes, type(None))


class NotPlainState(TypeError):
    """A checkpoint value that is not a tensor or a plain value."""


def encode(obj, where: str = "checkpoint"):
    """Tensors and plain values as they are; numpy arrays/scalars as tagged tensors; anything else raises."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise NotPlainState(f"{where}: a numpy array of Python objects is not plain state")
        return {_ND: torch.from_numpy(np.ascontiguousarray(obj).copy()), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return {_NS: obj.dtype.str, "value": obj.item()}
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):
        return {k: encode(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(encode(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise NotPlainState(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} is not a tensor or a plain value "
                        f"(dict, list, tuple, int, float, str, bool, None); a strategy saves its state_dict() or "
                        f"get_state() instead (docs/reliability.md, 'declaring a strategy's state')")


def decode(obj):
    if isinstance(obj, dict):
        if _ND in obj and "dtype" in obj and len(obj) == 2:
            return obj[_ND].cpu().numpy().astype(np.dtype(obj["dtype"]), copy=False)
        if _NS in obj and "value" in obj and len(obj) == 2:
            return np.dtype(obj[_NS]).type(obj["value"])
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(decode(v) for v in obj)
    return obj


def _rng_state():
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st):
    torch.set_rng_state(st["torch"].cpu() if isinstance(st["torch"], torch.Tensor) else st["torch"])
    np.random.set_state(tuple(st["numpy"]))
    random.setstate(st["random"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


def save(path: Path, run_id: str, config: dict, strategy, state: dict) -> None:
    """Everything needed to continue exactly: the strategy's state_dict (model, optimiser, declared extra
    state), the engine state (R, online counters, timings) and every RNG state. Written to a temporary file
    with a unique name and renamed, so a kill during the write leaves the previous checkpoint intact, two
    writers never share a temporary file, and a failed write (disk full) leaves nothing behind."""
    path = Path(path)
    name = type(strategy).__name__
    ck = {"run_id": run_id, "config": encode(config, "config"),
          "strategy": encode(strategy.state_dict(), f"strategy {name} state_dict()"),
          "rng": encode(_rng_state(), "rng"), "state": encode(state, "engine state")}
    atomic_write(path, lambda f: torch.save(ck, f), binary=True, public=False, suffix=".tmp")


def load(path: Path, run_id: str, strategy, device) -> dict | None:
    """The engine state of this run's checkpoint, with strategy and RNGs restored; None if none applies.
    A file that is unreadable or not plain data is moved aside (kept) and the run starts over."""
    from cl.core.safe_load import UnsafeFile, torch_load
    from cl.train.results import move_aside

    try:
        ck = decode(torch_load(path, map_location=device))
        if not isinstance(ck, dict):
            raise UnsafeFile(f"{path}: not a checkpoint (a {type(ck).__name__})")
    except UnsafeFile as e:
        print(f"warning: ignoring checkpoint: {e}", file=sys.stderr)
        move_aside(Path(path), "not a readable checkpoint")
        return None
    rid = ck.get("run_id") or (make_run_id(ck["config"]) if isinstance(ck.get("config"), dict) else None)
    if rid != run_id:
        return None
    strategy.load_state_dict(ck["strategy"])
    _set_rng_state(ck["rng"])
    return ck["state"]
