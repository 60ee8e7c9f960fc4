"""Check ``overhead``: engine vs hand-written loop vs Avalanche Replay (``benchmarks/overhead.py``'s
workload: ER, 5 class-incremental experiences, buffer 500, one epoch), at batch 10 and 128, for the
MLP and timm resnet18 at 32 px, side by side in this process.

The engine runs twice: with bf16 autocast off (the same fp32 arithmetic as the loop: the overhead
comparison the target is about) and with the default (``protocol.amp=true``: bf16 on CUDA).
Targets: engine (fp32) >= 0.95x the loop at both batch sizes; engine >= 3x Avalanche at batch 128 on the
MLP (H200 references in ../shared/reference/gpu-anchors.md).
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.gpu_checks.common import device, peak_mb, reset_peak, try_import

REF = {("mlp", 10): (5896, 4615), ("mlp", 128): (67091, 16414),  # (hand loop, Avalanche) on the H200
       ("resnet18", 10): (1228, 1014), ("resnet18", 128): (13006, 9060)}


def _resnet18():
    import timm

    return timm.create_model("resnet18", num_classes=10)


def engine_rate(ov, backbone: dict, n_per_exp: int, bs: int, dev, amp: bool, tmp: str):
    from cl.core.config import resolve
    from cl.train.engine import run

    cfg = resolve({"strategy": {"name": "er", "buffer_size": ov.BUFFER, "replay_batch_size": bs, "lr": ov.LR},
                   "scenario": {"name": "bench-tensors", "n_per_exp": n_per_exp}, "backbone": backbone,
                   "protocol": {"name": "offline", "batch_size": bs, "checkpoint": False, "amp": amp},
                   "device": str(dev), "wandb": "off"})
    res = run(cfg, progress=False, out_dir=Path(tmp) / f"engine-{time.time_ns()}")
    if res["status"] != "finished":
        raise RuntimeError(res.get("error"))
    return res["metrics"]["train_samples_per_s"]


def run(rec) -> None:
    import torch

    from benchmarks import overhead as ov  # registers the bench-tensors scenario

    warnings.filterwarnings("ignore")
    dev = device()
    rec.set_device(dev)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    av, why = try_import("avalanche")
    if av is None:
        rec.skip("Avalanche Replay (every batch size and model)", f"avalanche-lib not importable: {why}")
    tmp = tempfile.mkdtemp(prefix="cl-gpu-overhead-")
    small = rec.small
    n_big = 2000 if not small else 24
    repeats = 2 if not small else 1
    models = [("mlp", ov.mlp, {"name": "mlp", "hidden": ov.HIDDEN}),
              ("resnet18", _resnet18, {"name": "timm:resnet18", "input_size": 32})]
    plan = [(m, bs) for m in models for bs in (128, 10)]
    mlp_orig = ov.mlp
    for (kind, make, bb), bs in plan:
        n = n_big if bs >= 64 else max(200 if not small else 12, n_big // 4)
        tag = f"{kind}.bs{bs}"
        if not rec.has(8 if not small else 1, f"{tag} (all runners)"):
            continue
        ov.mlp = make  # the hand loop and the Avalanche runner build their model through overhead.mlp()
        runners = [("hand", lambda: ov.hand_loop(n, bs, dev)),
                   ("engine_fp32", lambda: engine_rate(ov, bb, n, bs, dev, False, tmp)),
                   ("engine_amp", lambda: engine_rate(ov, bb, n, bs, dev, True, tmp))]
        if av is not None:
            runners.append(("avalanche", lambda: ov.avalanche(n, bs, dev)))
        best: dict = {}
        try:
            for r in range(repeats):
                for name, fn in runners:
                    if r and not rec.has(4, f"{tag} {name} repeat {r + 1}"):
                        continue
                    reset_peak(dev)
                    v = rec.attempt(f"{tag} {name}", fn)
                    if v is None:
                        continue
                    best[name] = max(best.get(name, 0.0), v)
                    rec.memory(f"{tag} {name}", peak_mb(dev))
        finally:
            ov.mlp = mlp_orig
        href, aref = REF[(kind, bs)]
        labels = {"hand": "hand-written loop", "engine_fp32": "engine, fp32", "engine_amp": "engine, default amp",
                  "avalanche": "Avalanche Replay"}
        for name, v in best.items():
            rec.figure(f"{tag}.{name}", v, "samples/s", f"{kind} bs {bs}: {labels[name]} ({5 * n} samples)",
                       ref={"hand": href, "avalanche": aref}.get(name))
        figs = {}
        if "hand" in best and "engine_fp32" in best:
            figs["hand"] = rec.figure(f"{tag}.engine_vs_hand", best["engine_fp32"] / best["hand"], "x",
                                      f"{kind} bs {bs}: engine (fp32) / hand loop", target=(">=", 0.95))
        if "hand" in best and "engine_amp" in best:
            rec.figure(f"{tag}.engine_amp_vs_hand", best["engine_amp"] / best["hand"], "x",
                       f"{kind} bs {bs}: engine (default amp) / hand loop")
        if "avalanche" in best and "engine_fp32" in best:
            target = (">=", 3.0) if (kind, bs) == ("mlp", 128) else None
            figs["avalanche"] = rec.figure(f"{tag}.engine_vs_avalanche",
                                           max(best["engine_fp32"], best.get("engine_amp", 0)) / best["avalanche"],
                                           "x", f"{kind} bs {bs}: engine (faster of fp32/amp) / Avalanche",
                                           target=target, ref=round(href / aref, 2))
        missed = [w for w, f in figs.items() if f.get("met") is False]
        if missed:
            def prof(bb=bb, n=n, bs=bs):  # the measured engine run (fp32): where its time goes
                engine_rate(ov, bb, n, bs, dev, False, tmp)

            rec.profile_if_missed(figs[missed[0]], f"overhead {tag}: engine, fp32 (missed vs {', '.join(missed)})",
                                  prof, dev, steps=1)
