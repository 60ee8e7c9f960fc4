"""Online train_step cost of the contrastive strategies (scr, pcr, ocm, onpro) against ER, one process, batch 10.

    python benchmarks/ocl2_step.py                      # CPU, 1 thread, reduced ResNet-18 (nf=20), 32x32x3
    python benchmarks/ocl2_step.py --device cuda --steps 50

Each runner is a strategy built as the engine builds it (``build_model`` + ``setup``) on random normalised
32x32x3 images of 10 classes, buffer 500. Before timing, every runner is warmed up on ``--warm`` batches of
all 10 classes and then passes an experience boundary (``after_experience``), so that OCM/OnPro time their
later-experience step (replay + distillation / APF) at its full replay batch (min(64, 7 x 10 seen classes))
and every buffer holds samples. Then ``--steps`` train steps, in interleaved rounds (load from other processes hits all runners alike);
the best round of each is reported as ms per step and incoming samples/s, and the ratio to ER's step.
Runners: ER (replay 10), and each method at its paper's defaults; SCR and PCR also with replay 10 (the extra
cost of the second view alone), OCM and OnPro also with 4 rotations (not the paper's setting).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from cl.core.registry import strategies
from cl.core.strategy import RunInfo
from cl.models.backbones import build_backbone
from cl.models.backbones.small import ResNetConfig

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2615]
RUNNERS = [
    ("er", {}),
    ("scr", {}),
    ("scr", {"replay_batch_size": 10}),
    ("pcr", {}),
    ("ocm", {}),
    ("ocm", {"rotations": 4}),
    ("onpro", {}),
    ("onpro", {"rotations": 4}),
]


def build(name, over, device, nf):
    entry = strategies.get(name)
    cfg = entry.config(**{"buffer_size": 500, **over})
    scen = SimpleNamespace(n_classes=10, mean=MEAN, std=STD)
    backbone = build_backbone("resnet18r", ResNetConfig(nf=nf), (3, 32, 32))
    model = entry.obj.build_model(cfg, backbone, scen).to(device)
    info = RunInfo(n_classes=10, input_shape=(3, 32, 32), device=device, seed=0, protocol="online", n_experiences=5)
    s = entry.obj(cfg, model, info)
    s.setup()
    model.train()
    return s


def batches(classes, n, device, g):
    for _ in range(n):
        x = torch.randn(10, 3, 32, 32, generator=g).to(device)
        y = torch.tensor(classes, dtype=torch.long)[torch.randint(len(classes), (10,), generator=g)].to(device)
        yield x, y


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm", type=int, default=12)
    ap.add_argument("--nf", type=int, default=20)
    ap.add_argument("--only", default="", help="comma-separated runner names to keep (e.g. er,scr)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    runners = [(n, o) for n, o in RUNNERS if not a.only or n in a.only.split(",")]
    built = []
    for name, over in runners:
        s = build(name, over, device, a.nf)
        g = torch.Generator().manual_seed(1)
        for x, y in batches(list(range(10)), a.warm, device, g):
            s.train_step(x, y)
        s.after_experience(SimpleNamespace(index=0))  # the strategies read only the experience's index
        s.before_experience(SimpleNamespace(index=1))
        built.append((name, over, s))
    best = {i: float("inf") for i in range(len(built))}
    for r in range(a.rounds):
        for i, (name, over, s) in enumerate(built):
            g = torch.Generator().manual_seed(100 + r)
            data = list(batches(list(range(10)), a.steps, device, g))
            sync(device)
            t0 = time.perf_counter()
            for x, y in data:
                s.train_step(x, y)
            sync(device)
            best[i] = min(best[i], (time.perf_counter() - t0) / a.steps)
    er = best[0] if built[0][0] == "er" else None
    load = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch "
          f"{torch.__version__}, threads {a.threads}, device {device}, resnet18r nf={a.nf}")
    print(f"# uptime: {load}")
    print(f"# best of {a.rounds} rounds x {a.steps} steps (warm-up {a.warm} steps + one boundary)")
    print("| runner | ms / step | samples/s | x ER |")
    print("|---|---:|---:|---:|")
    rows = []
    for i, (name, over, _) in enumerate(built):
        label = name + (" " + " ".join(f"{k}={v}" for k, v in over.items()) if over else "")
        ratio = f"{best[i] / er:.1f}" if er else "-"
        print(f"| {label} | {1000 * best[i]:.0f} | {10 / best[i]:.1f} | {ratio} |")
        rows.append((label, best[i]))
    return rows


if __name__ == "__main__":
    main()
