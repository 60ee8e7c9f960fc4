"""Check ``sweep``: 16 small online runs (ER, reduced ResNet-18, batch 10, on the ``gpu-bench`` stream)
through ``cl sweep`` with 1, 4 and 8 local workers sharing the one GPU; runs per hour, GPU utilisation
and GPU memory sampled with pynvml (or ``nvidia-smi``) while each sweep runs.

Each configuration gets an equal share of the budget; one that does not finish in its share is stopped
and its rate is counted from the runs that finished.  This process never initialises CUDA (the sweeps
are subprocesses), so it holds no GPU memory itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STREAMS = Path(__file__).with_name("streams.py")

SWEEP = """name: gpu-sweep-{workers}
out: {out}
base:
  scenario: {{name: gpu-bench, train_per_class: {per_class}, test_per_class: {test_per_class}}}
  backbone: {{name: resnet18r, nf: 20}}
  protocol: {{name: online, batch_size: 10, checkpoint: false}}
  strategy: {{name: er, buffer_size: 200}}
  wandb: off
grid:
  seed: [{seeds}]
"""


class GpuSampler(threading.Thread):
    """Samples GPU utilisation (%) and memory used (MiB) of GPU 0 every ``period`` seconds."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.util, self.mem = period, [], []
        self.stop_ev = threading.Event()
        self.how = None
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.read = lambda: (pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                                 pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)
            self.read()
            self.how = "pynvml"
        except Exception:  # noqa: BLE001 - fall back to nvidia-smi, else no sampling
            def smi():
                out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                u, m = out.stdout.strip().splitlines()[0].split(",")
                return float(u), float(m)

            try:
                smi()
                self.read, self.how = smi, "nvidia-smi"
            except Exception:  # noqa: BLE001
                self.read = None

    def run(self):
        while self.read is not None and not self.stop_ev.is_set():
            try:
                u, m = self.read()
                self.util.append(float(u))
                self.mem.append(float(m))
            except Exception:  # noqa: BLE001
                pass
            self.stop_ev.wait(self.period)

    def stop(self) -> dict:
        self.stop_ev.set()
        if self.is_alive():
            self.join(timeout=5)
        if not self.util:
            return {}
        return {"util_mean": sum(self.util) / len(self.util), "util_max": max(self.util),
                "mem_max_mib": max(self.mem), "samples": len(self.util), "sampler": self.how}


def one_sweep(rec, workers: int, n_runs: int, per_class: int, cap: float, tmp: Path, log) -> dict:
    out = tmp / f"w{workers}"
    f = tmp / f"sweep-w{workers}.yaml"
    f.write_text(SWEEP.format(workers=workers, out=out, per_class=per_class, test_per_class=20 if not rec.small else 2,
                              seeds=", ".join(str(s) for s in range(n_runs))))
    cmd = [sys.executable, "-m", "cl", "sweep", str(f), "-j", str(workers), "--plugin", str(STREAMS),
           "--no-report", "--no-wandb"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p]))
    sampler = GpuSampler()
    sampler.start()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    capped = False
    try:
        p.wait(timeout=max(1.0, cap))
    except subprocess.TimeoutExpired:
        capped = True
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    wall = time.perf_counter() - t0
    gpu = sampler.stop()
    results = [json.loads(r.read_text()) for r in out.glob("*/result.json")]
    peaks = [r["metrics"].get("peak_memory_mb", 0.0) for r in results]
    return {"workers": workers, "wall_s": wall, "finished": len(results), "runs": n_runs, "capped": capped,
            "returncode": p.returncode, "runs_per_hour": 3600 * len(results) / wall if wall else 0.0,
            "mean_run_wall_s": (sum(r["metrics"]["wall_time"] for r in results) / len(results)) if results else None,
            "run_peak_memory_mb_max": max(peaks) if peaks else None, **gpu}


def run(rec) -> None:
    small = rec.small
    try:  # this check's process never initialises CUDA; ask nvidia-smi whether a GPU is there
        has_gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        has_gpu = False
    rec.data["device"] = "GPU 0 (see env)" if has_gpu else "cpu"
    rec.data["cuda"] = has_gpu
    configs = [1, 4, 8] if not small else [1, 2]
    n_runs = 16 if not small else 3
    per_class = 100 if not small else 3
    rec.info("sweep", f"{n_runs} runs: ER (buffer 200) on gpu-bench ({per_class * 10} stream samples each), "
                      f"resnet18r nf=20, online, batch 10, graphs off (the default); workers {configs}; "
                      f"threads per worker = cores / workers")
    if not has_gpu:
        rec.skip("GPU utilisation and memory sampling", "no GPU (nvidia-smi absent or failing)")
    tmp = Path(tempfile.mkdtemp(prefix="cl-gpu-sweep-"))
    rows = []
    log_path = tmp / "sweeps.log"
    with open(log_path, "w") as log:
        for i, w in enumerate(configs):
            cap = rec.left() / (len(configs) - i)
            if not rec.has(5 if not small else 2, f"sweep with {w} worker(s)"):
                continue
            r = rec.attempt(f"sweep with {w} worker(s)", one_sweep, rec, w, n_runs, per_class, cap, tmp, log)
            if r is None:
                continue
            rows.append(r)
            rec.info(f"workers_{w}", r)
            note = (f"{r['finished']}/{r['runs']} runs in {r['wall_s']:.1f} s"
                    + (f" (stopped at its budget share of {cap:.0f} s)" if r["capped"] else "")
                    + (f"; exit code {r['returncode']}" if r["returncode"] not in (0, None) and not r["capped"] else ""))
            rec.figure(f"workers{w}.runs_per_hour", r["runs_per_hour"], "runs/h", f"{w} worker(s): runs per hour",
                       note=note)
            if "util_mean" in r:
                rec.figure(f"workers{w}.gpu_util_mean", r["util_mean"], "%", f"{w} worker(s): mean GPU utilisation",
                           note=f"max {r['util_max']:.0f}%, {r['samples']} samples ({r['sampler']})")
                rec.figure(f"workers{w}.gpu_mem_max", r["mem_max_mib"], "MiB",
                           f"{w} worker(s): peak GPU memory used (all processes)")
                rec.memory(f"{w} worker(s), all processes", r["mem_max_mib"])
            if r["run_peak_memory_mb_max"] is not None:
                rec.memory(f"{w} worker(s), largest run's own peak", r["run_peak_memory_mb_max"])
    tail = log_path.read_text()[-4000:] if log_path.exists() else ""
    print(tail)
    done = [r for r in rows if r["finished"]]
    if done:
        best = max(done, key=lambda r: r["runs_per_hour"])
        rec.figure("best_workers", best["workers"], "workers", "local workers that pay most (runs per hour)",
                   note="; ".join(f"{r['workers']}: {r['runs_per_hour']:.0f}/h" for r in done))
