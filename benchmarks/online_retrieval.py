"""Online train_step cost of the replay selection / retrieval strategies (mir, gss, aser, rar) against ER, at
batch 10, on the reduced ResNet-18 (nf=20) and 32x32x3 inputs, in one process.

    python benchmarks/online_retrieval.py                          # CPU, 1 thread, random uint8 images
    python benchmarks/online_retrieval.py --steps 50 --device cuda
    python benchmarks/online_retrieval.py --strategies er,mir --set mir.subsample=100

Every strategy gets the same class-incremental stream (5 tasks x 2 classes, random pixels), batch 10,
buffer 500 (total), replay batch 10, SGD lr 0.1, each method's paper defaults otherwise (RAR: 10 iterations,
RandAugment 1/14). Each buffer is first filled directly with the first 500 of ``--warm`` samples, the stream
count set to ``--warm`` (untimed, no training: GSS and ASER are then on their full-buffer paths, ASER
retrieves by Shapley values; GSS's stored scores are drawn uniformly in [-1, 1]); two untimed steps follow,
then ``--steps`` steps are timed. Rounds are interleaved across strategies (load from other processes hits them alike) and
the best round of each is reported, as samples/s of the incoming stream and as the cost ratio against ER.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from benchmarks.common import machine, table  # noqa: E402
from benchmarks.online import make_stream, sync  # noqa: E402

BS, BUFFER = 10, 500


def make(name: str, device, overrides: dict):
    import importlib

    from cl.core.registry import strategies
    from cl.core.strategy import RunInfo
    from cl.models.backbones import build_backbone
    from cl.models.backbones.small import ResNetConfig

    importlib.import_module("strategies." + name)
    entry = strategies.get(name)
    torch.manual_seed(0)
    bb = build_backbone("resnet18r", ResNetConfig(nf=20), (3, 32, 32))
    info = RunInfo(n_classes=10, input_shape=(3, 32, 32), device=device, seed=0, protocol="online",
                   boundaries="hidden", n_experiences=5)
    cfg = entry.config(buffer_size=BUFFER, **overrides)
    model = entry.obj.build_model(cfg, bb, type("S", (), {"n_classes": 10, "mean": None, "std": None})())
    s = entry.obj(cfg, model.to(device), info)
    s.setup()
    return s


def prefill(s, x, y):
    """Put ``x, y`` in the strategy's buffer as if they had streamed by: the first ``capacity`` are stored and
    the stream count is ``len(y)`` (ASER then retrieves by Shapley values); GSS's scores drawn in [-1, 1]."""
    buf, cap = s.buffer, s.buffer.capacity
    extra = {"score": torch.rand(cap, device=x.device) * 2 - 1} if s.cfg.__class__.__name__ == "GSSConfig" else {}
    buf.add(x=x[:cap], y=y[:cap], **extra)
    buf.advance_host(len(y) - cap)


def run(s, x, y, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(y), BS):
        s.train_step(x[i:i + BS].float().div_(255), y[i:i + BS])
    sync(device)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default="er,mir,gss,aser,rar")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warm", type=int, default=520, help="untimed samples first (fill the buffer)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="name.key=value override, e.g. rar.iterations=1")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    names = a.strategies.split(",")
    over: dict = {n: {} for n in names}
    for kv in a.set:
        k, v = kv.split("=", 1)
        n, key = k.split(".", 1)
        over.setdefault(n, {})[key] = type(getattr(make(n, device, {}).cfg, key))(v)
    x, y = make_stream(a.warm + 2 * BS + a.rounds * a.steps * BS, "random")
    x, y = x.to(device), y.to(device)
    runs = {n: make(n, device, over.get(n, {})) for n in names}
    for n, s in runs.items():  # fill the buffers directly (untimed, no training)
        prefill(s, x[:a.warm].float().div_(255), y[:a.warm])
        run(s, x[a.warm:a.warm + 2 * BS], y[a.warm:a.warm + 2 * BS], device)  # first steps: allocation, warm-up
    best = {n: float("inf") for n in names}
    for r in range(a.rounds):
        lo = a.warm + 2 * BS + r * a.steps * BS
        for n, s in runs.items():
            best[n] = min(best[n], run(s, x[lo:lo + a.steps * BS], y[lo:lo + a.steps * BS], device))
    er = best.get("er")
    rows = [{"strategy": n + "".join(f" {k}={v}" for k, v in over.get(n, {}).items()),
             "samples/s": a.steps * BS / t, "ms/step": 1000 * t / a.steps,
             "cost vs ER": (t / er) if er else float("nan")} for n, t in best.items()]
    print(f"{machine()}; {a.steps} steps x {a.rounds} rounds after {a.warm} warm-up samples; batch {BS}, buffer {BUFFER}")
    print(table(rows, ["strategy", "samples/s", "ms/step", "cost vs ER"]))


if __name__ == "__main__":
    main()
