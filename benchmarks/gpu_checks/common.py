"""What every check shares: the result recorder, the time budget, peak memory and profiler tables.

A figure is ``{key, label, value, unit, target, met, ref, note}``; ``target`` is ``[op, threshold]``
(``op`` one of ``>=``, ``<=``) and ``met`` is computed from it.  Targets are the issue's GPU targets: on
a CPU (the ``--small`` rehearsal) they are evaluated too, so that the whole path runs, but the driver
marks them as not applying.
"""
from __future__ import annotations

import importlib.abc
import json
import os
import resource
import sys
import time
from pathlib import Path


# -- hiding modules (rehearsing the GPU machine, which lacks some packages) ---------------------------
class _Hide(importlib.abc.MetaPathFinder):
    """Stands in for a finder of ``sys.meta_path`` and finds nothing for the hidden names, so that
    ``import NAME`` fails and ``importlib.util.find_spec(NAME)`` is None, as where NAME is not installed."""

    def __init__(self, inner, names):
        self.inner, self.names = inner, set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return None
        return self.inner.find_spec(fullname, path, target)

    def find_distributions(self, *a, **k):  # importlib.metadata asks the finders too
        f = getattr(self.inner, "find_distributions", None)
        return f(*a, **k) if f is not None else iter(())

    def invalidate_caches(self):
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()


def hide_modules(spec: str) -> None:
    """Make each comma-separated top-level NAME look absent (``CL_GPU_HIDE``: rehearsing the GPU machine)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names:
        sys.meta_path[:] = [_Hide(f, names) if hasattr(f, "find_spec") and not isinstance(f, _Hide) else f
                            for f in sys.meta_path]


def try_import(name: str):
    """``(module, None)`` or ``(None, 'reason')``."""
    try:
        return __import__(name), None
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip
        return None, f"{type(e).__name__}: {e}".splitlines()[0][:200]


# -- device --------------------------------------------------------------------------------------------
def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mb(dev) -> float:
    """Peak GPU memory allocated by torch since the last :func:`reset_peak` (CUDA); else this process's
    peak resident set size (CPU: a whole-process figure, not per measurement)."""
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile_table(fn, dev, steps: int = 5, rows: int = 15) -> str:
    """A torch.profiler table of ``steps`` calls of ``fn`` (after one warm-up call): top ops by self CUDA
    time on CUDA, by self CPU time on CPU."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    fn()
    sync(dev)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        sync(dev)
    ka = prof.key_averages()
    keys = (["self_device_time_total", "self_cuda_time_total"] if dev.type == "cuda" else ["self_cpu_time_total"])
    for k in keys:
        try:
            return f"{steps} calls; sorted by {k}\n" + ka.table(sort_by=k, row_limit=rows, max_name_column_width=50)
        except Exception:  # noqa: BLE001 - key names differ between torch versions
            continue
    return ka.table(row_limit=rows)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


# -- the recorder ----------------------------------------------------------------------------------
class Recorder:
    """Collects one check's figures and rewrites its JSON file after each one."""

    def __init__(self, name: str, path: str, budget: float, small: bool):
        self.name, self.path, self.budget, self.small = name, Path(path), float(budget), bool(small)
        self.t0 = time.perf_counter()
        self.data = {"check": name, "budget_s": budget, "small": small, "done": False, "device": None,
                     "figures": [], "skipped": [], "errors": [], "notes": [], "memory_mb": {},
                     "profiles": {}, "info": {}}
        self.save()

    # time
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        """Seconds left of the budget, less a reserve for writing results."""
        return self.budget - self.elapsed() - min(5.0, 0.05 * self.budget)

    def has(self, seconds: float, what: str) -> bool:
        """True if ``seconds`` fit in what is left; else records ``what`` as skipped for the budget."""
        if self.left() >= seconds:
            return True
        self.skip(what, f"time budget: {self.left():.0f} s left of {self.budget:.0f} s, about {seconds:.0f} s needed")
        return False

    # records
    def set_device(self, dev) -> None:
        import torch

        self.data["device"] = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
        self.data["cuda"] = dev.type == "cuda"
        self.save()

    def figure(self, key: str, value, unit: str, label: str | None = None, target=None, ref=None,
               note: str | None = None) -> dict:
        met = None
        if target is not None and value is not None:
            op, thr = target
            met = bool(value >= thr) if op == ">=" else bool(value <= thr)
        f = {"key": key, "label": label or key, "value": value, "unit": unit,
             "target": list(target) if target is not None else None, "met": met, "ref": ref, "note": note}
        self.data["figures"] = [g for g in self.data["figures"] if g["key"] != key] + [f]
        print(f"[{self.name}] {f['label']}: {value if not isinstance(value, float) else round(value, 4)} {unit}"
              + (f"  (target {target[0]} {target[1]}: {'met' if met else 'MISSED'})" if target else ""), flush=True)
        self.save()
        return f

    def get(self, key: str):
        for f in self.data["figures"]:
            if f["key"] == key:
                return f["value"]
        return None

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"].append({"what": what, "reason": reason})
        print(f"[{self.name}] skipped {what}: {reason}", flush=True)
        self.save()

    def error(self, what: str, exc: BaseException, tb: str = "") -> None:
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
        self.data["errors"].append({"what": what, "error": msg, "traceback": tb[-3000:]})
        print(f"[{self.name}] ERROR in {what}: {msg}", flush=True)
        if tb:
            print(tb, file=sys.stderr, flush=True)
        self.save()

    def note(self, text: str) -> None:
        if text not in self.data["notes"]:
            self.data["notes"].append(text)
        self.save()

    def memory(self, label: str, mb: float) -> None:
        self.data["memory_mb"][label] = round(float(mb), 1)
        self.save()

    def profile(self, label: str, table: str) -> None:
        self.data["profiles"][label] = table
        self.save()

    def info(self, key: str, value) -> None:
        self.data["info"][key] = value
        self.save()

    def save(self, done: bool = False) -> None:
        self.data["wall_s"] = round(self.elapsed(), 2)
        if done:
            self.data["done"] = True
        tmp = self.path.with_suffix(self.path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default))
        os.replace(tmp, self.path)

    # helpers used by several checks
    def attempt(self, what: str, fn, *args, **kw):
        """``fn(*args, **kw)``, or None with the error recorded (one failing measurement must not lose
        the others)."""
        import traceback

        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001
            self.error(what, e, traceback.format_exc())
            return None

    def profile_if_missed(self, fig: dict | None, label: str, fn, dev, steps: int = 5) -> None:
        """Save a profiler table for ``fn`` when ``fig`` missed its target (and time is left)."""
        if fig is None or fig.get("met") is not False:
            return
        if not self.has(10 if not self.small else 2, f"profile of {label}"):
            return
        t = self.attempt(f"profile of {label}", profile_table, fn, dev, steps)
        if t:
            self.profile(label, t)
