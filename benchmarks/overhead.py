"""Engine overhead: the same ER workload run three ways side by side in one process.

Workload: MLP 3072-256-10 on 3x32x32 inputs, 5 class-incremental experiences of 2 classes,
reservoir buffer of 500, replay batch = batch size, one epoch, SGD lr 0.01; batch sizes 10 and 128.
  1. a hand-written PyTorch loop (data and buffer on the device),
  2. this platform's engine (`cl.train.engine.Run` with strategy `er`),
  3. Avalanche 0.6.0's `Replay` strategy.
Prints training samples/s (evaluation excluded) and the ratios.

    python benchmarks/overhead.py [--n-per-exp 2000] [--device cpu] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore")

from benchmarks.common import machine, table  # noqa: E402
from cl.core.config import resolve  # noqa: E402
from cl.train.engine import Run  # noqa: E402
from cl.core.registry import scenarios  # noqa: E402
from cl.core.streams import class_incremental  # noqa: E402

BUFFER, LR, HIDDEN = 500, 0.01, 256


def make_data(n_per_exp: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = n_per_exp * 5
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(10).repeat_interleave(n // 10)
    return x, y


@dataclass
class BenchConfig:
    n_per_exp: int = 2000


@scenarios.register("bench-tensors", BenchConfig)
def bench_tensors(cfg: BenchConfig, seed: int):
    """Random uint8 CIFAR-shaped data for the overhead benchmark."""
    x, y = make_data(cfg.n_per_exp)
    return class_incremental("bench-tensors", x, y, x[:100], y[:100], n_tasks=5, seed=None)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, 10))


def hand_loop(n_per_exp, bs, device) -> float:
    """Plain PyTorch ER: device data, device reservoir (batched draw), one forward, CE(new) + CE(replay)."""
    torch.manual_seed(0)
    x, y = make_data(n_per_exp)
    x, y = x.to(device), y.to(device)
    model = mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    bx = torch.zeros(BUFFER, 3, 32, 32, device=device)
    by = torch.zeros(BUFFER, dtype=torch.long, device=device)
    seen, elapsed = 0, 0.0
    for t in range(5):
        m = (y >= 2 * t) & (y < 2 * t + 2)
        ex, ey = x[m], y[m]
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(ey), device=device)
        for i in range(0, len(ey), bs):
            idx = perm[i:i + bs]
            xb, yb = ex[idx].float() / 255, ey[idx]
            opt.zero_grad(set_to_none=True)
            if seen:  # one forward over [incoming; replay], as the engine's ER and Avalanche's Replay do
                r = torch.randint(0, min(seen, BUFFER), (bs,), device=device)
                logits = model(torch.cat([xb, bx[r]]))
                loss = F.cross_entropy(logits[:len(yb)], yb) + F.cross_entropy(logits[len(yb):], by[r])
            else:
                loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            b = len(yb)
            if seen + b <= BUFFER:
                slots = torch.arange(seen, seen + b, device=device)
            else:
                slots = (torch.rand(b, device=device) * (seen + torch.arange(b, device=device) + 1)).long()
                slots = torch.where(slots < BUFFER, slots, BUFFER - 1 + 0 * slots)  # losers overwrite a spare
            keep = slots < BUFFER
            bx[slots[keep]] = xb[keep]
            by[slots[keep]] = yb[keep]
            seen += b
        _sync(device)
        elapsed += time.perf_counter() - t0
    return 5 * n_per_exp / elapsed


def engine(n_per_exp, bs, device, tmp) -> float:
    cfg = resolve({"strategy": {"name": "er", "buffer_size": BUFFER, "replay_batch_size": bs, "lr": LR},
                   "scenario": {"name": "bench-tensors", "n_per_exp": n_per_exp},
                   "backbone": {"name": "mlp", "hidden": HIDDEN}, "protocol": {"name": "offline", "batch_size": bs,
                                                                             "checkpoint": False},
                   "device": str(device), "wandb": "off",
                   # the run's own thread count (part of its id, default 1) = the other runners' count
                   "threads": torch.get_num_threads()})
    res = Run(cfg, progress=False, out_dir=Path(tmp) / f"engine-{bs}-{time.time_ns()}").execute()
    return res["metrics"]["train_samples_per_s"]


def avalanche(n_per_exp, bs, device) -> float:
    from avalanche.benchmarks.scenarios.deprecated.generators import tensors_benchmark
    from avalanche.training import Replay
    from avalanche.training.plugins import EvaluationPlugin

    torch.manual_seed(0)
    x, y = make_data(n_per_exp)
    xf = x.float() / 255
    exps = [((xf[(y >= 2 * t) & (y < 2 * t + 2)]), y[(y >= 2 * t) & (y < 2 * t + 2)]) for t in range(5)]
    bench = tensors_benchmark(train_tensors=exps, test_tensors=exps[:1], task_labels=[0] * 5)
    model = mlp()
    strat = Replay(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                   criterion=nn.CrossEntropyLoss(), mem_size=BUFFER, train_mb_size=bs, train_epochs=1,
                   device=device, evaluator=EvaluationPlugin(loggers=[]), eval_every=-1)
    elapsed = 0.0
    for exp in bench.train_stream:
        _sync(device)
        t0 = time.perf_counter()
        strat.train(exp, num_workers=0)
        _sync(device)
        elapsed += time.perf_counter() - t0
    return 5 * n_per_exp / elapsed


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-per-exp", type=int, default=2000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each measurement")
    ap.add_argument("--batch-sizes", default="10,128")
    args = ap.parse_args()
    import tempfile

    tmp = tempfile.mkdtemp()
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        n = args.n_per_exp if bs >= 64 else max(200, args.n_per_exp // 4)
        best = lambda f: max(f() for _ in range(args.repeats))  # noqa: E731
        h = best(lambda: hand_loop(n, bs, args.device))
        e = best(lambda: engine(n, bs, args.device, tmp))
        a = best(lambda: avalanche(n, bs, args.device))
        rows.append({"batch": bs, "samples": 5 * n, "hand loop": h, "engine": e, "avalanche": a,
                     "engine/hand": e / h, "engine/avalanche": e / a})
        print(rows[-1], flush=True)
    print(f"\nmachine: {machine()}\n")
    print(table(rows, ["batch", "samples", "hand loop", "engine", "avalanche", "engine/hand", "engine/avalanche"]))


if __name__ == "__main__":
    main()
