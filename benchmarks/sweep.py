"""Benchmark: a 12-run CPU sweep with the local executor at 1 and 2 workers.

    python benchmarks/sweep.py [--repeats 1] [--out benchmarks/results/sweep.md]

The sweep: finetune, er, joint on split digits (scikit-learn's 1,797 images: loading costs little, so the
runs' compute dominates), MLP 256x2, 10 epochs, seeds 0-3 - 12 runs, W&B off.  Each configuration runs the
whole sweep from an empty results folder, timed from the executor's start (worker start-up included) to the
last result; configurations alternate (ABAB...) and the best of ``--repeats`` counts, which matters on a
machine shared with other processes.  Configurations:

- 1 worker, 1 thread   (the baseline the 2-worker time is compared with: same per-run work)
- 2 workers, 1 thread each (the local executor's default split of 2 cores)
- with ``--threads-too``: 1 worker using every core through torch intra-op threads

The 1-thread configurations must give identical results (same run ids, same accuracy matrices); the script
checks it (a different thread count may change the last bits of the results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWEEP = """
name: bench-sweep
out: {out}
base:
  backbone: {{name: mlp, hidden: 256, layers: 2}}
  protocol: {{name: offline, epochs: 10, batch_size: 32}}
  strategy: {{lr: 0.05}}
  wandb: off
grid:
  strategy: [finetune, er, joint]
  scenario: [split-digits]
  seed: [0, 1, 2, 3]
strategies:
  er: {{buffer_size: 200}}
"""


def loadavg() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


BURN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(15_000_000):\n    x += i\nprint(time.perf_counter() - t)"


def control() -> float:
    """How much parallelism the machine offers right now: 2 x (time of one CPU burner alone) / (time of each
    of two burners run at once).  2.0 on an idle 2-core machine, 1.0 when no second core is to be had."""
    import subprocess

    def burn(n):
        ps = [subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return max(float(p.communicate()[0]) for p in ps)

    one = burn(1)
    two = burn(2)
    return 2 * one / two


def run_once(tmp: Path, workers: int, threads: int) -> tuple[float, dict]:
    from cl.sweeps.executors import LocalExecutor
    from cl.sweeps.runner import run_sweep
    from cl.sweeps.spec import load_sweep

    out = tmp / f"w{workers}t{threads}"
    shutil.rmtree(out, ignore_errors=True)
    f = tmp / "sweep.yaml"
    f.write_text(textwrap.dedent(SWEEP.format(out=out)))
    sw = load_sweep(str(f))
    assert len(sw.runs) == 12
    ex = LocalExecutor(workers=workers, threads=threads)
    t0 = time.perf_counter()
    summary = run_sweep(sw, ex, log=lambda s: None)
    wall = time.perf_counter() - t0
    assert not summary["failed"], summary["failed"]
    res = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/result.json")}
    return wall, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads-too", action="store_true", help="also 1 worker x all cores")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.md"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    configs = [(1, 1), (2, max(1, cores // 2))] + ([(1, cores)] if args.threads_too else [])
    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-sweep-"))
    load_before = loadavg()
    ctrl = [control()]
    print(f"control: parallelism available {ctrl[0]:.2f} (2.0 = two free cores)", flush=True)
    times = {c: [] for c in configs}
    info = {}
    ref = None
    for rep in range(args.repeats):
        for workers, threads in configs:
            wall, res = run_once(tmp, workers, threads)
            times[(workers, threads)].append(wall)
            Rs = {k: v["R"] for k, v in res.items()}
            ref = Rs if ref is None else ref
            info[(workers, threads)] = (sum(v["metrics"]["wall_time"] for v in res.values()), Rs == ref)
            print(f"[{rep + 1}/{args.repeats}] {workers} worker(s) x {threads} thread(s): {wall:.1f} s; "
                  f"sum of per-run times {info[(workers, threads)][0]:.1f} s; same results: {Rs == ref} "
                  f"(load {loadavg()})", flush=True)
    load_after = loadavg()
    ctrl.append(control())
    print(f"control: parallelism available {ctrl[1]:.2f}", flush=True)
    base = min(times[configs[0]])
    lines = [
        "# Sweep benchmark: 12 runs, local executor, 1 vs 2 workers",
        "",
        f"Machine: 2-core CPU, no GPU ({platform.machine()}, {cores} logical cores, Python "
        f"{platform.python_version()}, torch {__import__('torch').__version__}).  The two cores were **shared "
        f"with other processes** (other engineers' test suites) during the measurement: load average "
        f"{load_before} before and {load_after} after (1 / 5 / 15 min), so absolute times are noisy and the "
        f"speed-up is below what an idle machine gives.",
        "",
        "Sweep: finetune, er (buffer 200), joint on split digits (1,347 training images, MLP 256x2, 10 epochs, "
        "batch 32), seeds 0-3: 12 runs, W&B off.  Wall time from the executor's start (worker start-up included) "
        f"to the last result; configurations alternated, best of {args.repeats}.  Command: "
        "`python benchmarks/sweep.py`.",
        "",
        f"Control (same machine, same minutes): two pure-Python CPU burners run at once vs one alone gave an "
        f"available parallelism of {ctrl[0]:.2f} before and {ctrl[1]:.2f} after the sweeps (2.0 = two free "
        f"cores, 1.0 = no second core to be had): the 2-worker speed-up cannot exceed it.",
        "",
        "| workers | torch threads / worker | sweep wall time (s), best | all tries (s) | speed-up vs 1 worker | "
        "sum of per-run times (s), last try | same results as 1 worker x 1 thread |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        best = min(times[c])
        run_time, same = info[c]
        lines.append(f"| {c[0]} | {c[1]} | {best:.1f} | {', '.join(f'{t:.1f}' for t in times[c])} | "
                     f"{base / best:.2f}x | {run_time:.1f} | {'yes' if same else 'no (other thread count)'} |")
    lines += ["", "Target: the 2-worker wall time close to half the 1-worker time.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"written {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
