"""Executors run the runs of a sweep.

- ``local`` (default): worker processes on this machine, one per visible GPU (each pinned to its GPU with
  ``CUDA_VISIBLE_DEVICES``), or a configurable number on CPU (default 1). Each run uses its own torch thread
  count (the run key ``threads``, part of its id), never a share that depends on the number of workers.
  ``workers=0`` runs in the calling process.
- ``ray``: one Ray task per run on an existing cluster (``address``) or on a local Ray instance, with
  ``num_gpus`` per run and automatic retries when a worker or node is lost.  Needs ``pip install .[ray]``.

Both call :func:`execute_run` for each run, which never raises: a crash is recorded in the run's
``failed.json`` with its traceback.  This module imports torch lazily so that a worker can pin its
device before CUDA is initialised.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
from multiprocessing.connection import wait
from pathlib import Path


def _thread_env(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def _write_failed(run_dir: Path, rid: str, resolved: dict, error: str, tb: str = "") -> dict:
    from cl.train.loggers import atomic_write_json

    rec = {"run_id": rid, "config": resolved, "status": "failed", "error": error, "traceback": tb,
           "seed": resolved.get("seed")}
    if not (run_dir / "result.json").exists():  # never touch a finished run
        try:
            atomic_write_json(run_dir / "failed.json", rec)
            rec["saved"] = str(run_dir / "failed.json")
        except OSError as e:  # a full disk or read-only folder: say so instead of pointing at a missing file
            rec["saved"], rec["save_error"] = None, f"cannot write {run_dir / 'failed.json'}: {e.strerror or e}"
    return rec


def _brief(result: dict) -> dict:
    """What an executor sends back to the sweep: the status and the metrics, not the whole result."""
    keep = ("run_id", "status", "error", "traceback", "metrics", "resumed", "device", "threads", "skipped",
            "saved", "save_error")
    return {k: result.get(k) for k in keep if k in result}


def execute_run(resolved: dict, plugins=(), device: str | None = None, threads: int | None = None) -> dict:
    """Run one resolved config to completion, or record why it failed. Never raises."""
    from cl.core.config import run_id

    rid = run_id(resolved)
    run_dir = Path(resolved.get("out") or "results") / rid
    try:
        # the torch thread count is the run's own (resolved["threads"], set by Run), not the executor's, so
        # that a run id gives the same R whatever the executor and the number of workers
        from cl.api import run
        from cl.core.registry import load_plugin_file

        for p in plugins:
            load_plugin_file(p)
        cfg = dict(resolved)
        if device and cfg.get("device") in (None, "auto"):
            cfg["device"] = device
        res = run(cfg, progress=False)  # locks the run: another process computing it -> status "busy"
        return {**_brief(res.raw), "skipped": True} if res.skipped else _brief(res.raw)
    except BaseException as e:  # noqa: BLE001 - a run must never take the sweep down
        if isinstance(e, KeyboardInterrupt):
            raise
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            return _brief(_write_failed(run_dir, rid, resolved, f"{type(e).__name__}: {e}", traceback.format_exc()))
        except Exception:  # pragma: no cover
            return {"run_id": rid, "status": "failed", "error": f"{type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------------------------
# local


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent (the driver, or the fork server that exits with the driver)
    dies, so that a killed sweep leaves no orphan still writing into a run that a restart resumes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass


def _worker_main(conn, gpu, threads, plugins, env=None):
    """Body of a local worker process: pin the device, then run what the parent sends until None.

    ``env``: the driver's environment when it started this worker.  A forkserver child inherits the fork
    server's environment, frozen when the first sweep of the process started it, so variables set later (a
    data root, W&B mode, anything a plugin reads) would not reach the workers of a later sweep."""
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    _die_with_parent()
    from cl.core.signals import sigterm_as_interrupt

    sigterm_as_interrupt()  # the driver stops a busy worker with SIGTERM: its run ends as interrupted
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    _thread_env(threads)
    device = "cuda:0" if gpu is not None else "cpu"
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            rec = execute_run(msg, plugins, device, threads)
            try:
                conn.send(rec)
            except (BrokenPipeError, OSError):  # the driver is gone
                return
    except KeyboardInterrupt:  # Ctrl-C or the driver's SIGTERM: a run in progress recorded itself as interrupted
        return


def visible_gpus() -> list[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        n = 0
    if n == 0:
        return []
    if env:
        ids = [s.strip() for s in env.split(",") if s.strip()]
        return ids[:n]  # type: ignore[return-value]
    return list(range(n))


def _preload_modules() -> list[str]:
    """Modules a forkserver imports once: torch, the engine, and every module that registered something."""
    import sys

    from cl.core.registry import backbones, scenarios, strategies

    mods = ["torch", "numpy", "cl.sweeps.executors", "cl.train.engine", "cl.core.config"]
    for reg in (strategies, scenarios, backbones):
        for name in reg.names():
            m = getattr(reg.entries[name].obj, "__module__", None)
            if m and not m.startswith("cl_user_plugin_") and m in sys.modules and m not in mods:
                mods.append(m)
    return mods


class LocalExecutor:
    """Worker processes on this machine. One per visible GPU (pinned), else ``workers`` on CPU (default 1)."""

    name = "local"

    def __init__(self, workers: int | None = None, gpus: list | None = None, threads: int | None = None,
                 max_retries: int = 1, plugins=(), start_method: str | None = None, **_ignored):
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        if start_method is None:
            # forkserver: a clean server process imports torch and the registered strategies / scenarios /
            # backbones once, then forks each worker from itself, so workers start in a fraction of a second.
            # Forking the driver itself is unsafe (OpenMP hangs in a child of a process that already ran
            # parallel torch ops); spawn re-imports everything in every worker.
            # GPU workers are spawned: each sets CUDA_VISIBLE_DEVICES before anything can initialise CUDA.
            start_method = ("forkserver" if not self.gpus and "forkserver" in mp.get_all_start_methods()
                            else "spawn")
        if workers is None:
            workers = len(self.gpus) if self.gpus else 1
        self.workers = max(0, int(workers))
        cores = os.cpu_count() or 1
        self.threads = threads or max(1, cores // max(1, self.workers))
        self.max_retries = int(max_retries)
        self.plugins = list(plugins)
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self.ctx.set_forkserver_preload(_preload_modules())

    def describe(self) -> str:
        if self.workers == 0:
            return "this process"
        where = f"GPUs {self.gpus}" if self.gpus else "CPU"
        return f"{self.workers} local worker(s) on {where}"

    def _device(self, slot: int):
        return self.gpus[slot % len(self.gpus)] if self.gpus else None

    def _start(self, slot: int):
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker_main, args=(child, self._device(slot), self.threads, self.plugins,
                                                        dict(os.environ)),
                             daemon=False, name=f"cl-worker-{slot}")  # a run may start DataLoader workers
        p.start()
        child.close()
        return {"proc": p, "conn": parent, "spec": None, "slot": slot}

    def run(self, specs, on_done) -> None:
        if self.workers == 0:
            import torch

            torch.set_num_threads(self.threads)
            dev = "cuda:0" if self.gpus else None
            for spec in specs:
                rec = execute_run(spec.config, self.plugins, dev, self.threads)
                on_done(spec, rec)
                if rec.get("status") == "interrupted":  # Ctrl-C stops the sweep, not just this run
                    raise KeyboardInterrupt
            return
        queue = list(specs)
        tries = {s.id: 0 for s in specs}
        workers = [self._start(i) for i in range(min(self.workers, len(queue)))]
        stopping = False
        try:
            while queue or any(w["spec"] is not None for w in workers):
                for w in workers:
                    if w["spec"] is None and queue:
                        if not w["proc"].is_alive():  # died while idle: replace it
                            w.update(self._start(w["slot"]))
                        w["spec"] = queue.pop(0)
                        w["conn"].send(w["spec"].config)
                busy = [w for w in workers if w["spec"] is not None]
                ready = wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy], timeout=5.0)
                for i, w in enumerate(workers):
                    spec = w["spec"]
                    if spec is None:
                        continue
                    if w["conn"] in ready:
                        try:
                            rec = w["conn"].recv()
                        except (EOFError, OSError):
                            rec = None
                        if rec is not None:
                            w["spec"] = None
                            on_done(spec, rec)
                            continue
                    if not w["proc"].is_alive() or w["proc"].sentinel in ready:
                        w["proc"].join(timeout=1)
                        code = w["proc"].exitcode
                        tries[spec.id] += 1
                        w["conn"].close()
                        workers[i] = self._start(w["slot"])
                        print(f"worker {w['slot']} died (exit code {code}) running {spec.id}"
                              + ("; retrying it" if tries[spec.id] <= self.max_retries else ""),
                              file=sys.stderr, flush=True)
                        if tries[spec.id] <= self.max_retries:
                            queue.insert(0, spec)  # it resumes from its last checkpoint
                        else:
                            rec = _write_failed(Path(spec.config["out"]) / spec.id, spec.id, spec.config,
                                                f"worker process died (exit code {code}) {tries[spec.id]} time(s)")
                            on_done(spec, _brief(rec))
        except BaseException:  # Ctrl-C, SIGTERM (cl/core/signals.py), an error of the driver
            stopping = True
            raise
        finally:
            for w in workers:
                if stopping and w["spec"] is not None and w["proc"].is_alive():
                    w["proc"].terminate()  # SIGTERM: its run records itself as interrupted, then it exits
                try:
                    w["conn"].send(None)
                except (OSError, BrokenPipeError):
                    pass
            deadline = time.time() + 10
            for w in workers:
                w["proc"].join(timeout=max(0.1, deadline - time.time()))
                if w["proc"].is_alive():
                    w["proc"].kill()  # still running after 10 s: no orphan outlives the sweep
                    w["proc"].join(timeout=5)


# ------------------------------------------------------------------------------------------------
# ray


def _ray_task(resolved, plugins, threads):
    """A Ray task: run one config on whatever device Ray assigned (CUDA_VISIBLE_DEVICES is set by Ray)."""
    import torch

    _thread_env(threads)
    device = "cuda:0" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"
    rec = execute_run(resolved, plugins, device, threads)
    # the full result travels back, so a driver without a shared file system can still write it
    rid = rec.get("run_id")
    path = Path(resolved.get("out") or "results") / str(rid) / "result.json"
    if rec.get("status") == "finished" and path.exists():
        import json

        rec["result"] = json.loads(path.read_text())
    return rec


class RayExecutor:
    """One Ray task per run; ``address`` None starts a local Ray instance (``workers`` CPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_run: float | None = None,
                 cpus_per_run: float | None = None, max_retries: int | None = None, plugins=(), threads=None,
                 **_ignored):
        try:
            import ray  # noqa: F401
        except ImportError:
            from cl.core.registry import ConfigError

            raise ConfigError("the ray executor needs Ray: pip install 'cl-platform[ray]' (or pip install ray)") from None
        self.address = address
        self.workers = workers
        self.gpus_per_run = gpus_per_run
        self.cpus_per_run = 1.0 if cpus_per_run is None else float(cpus_per_run)
        self.max_retries = 3 if max_retries is None else int(max_retries)
        self.plugins = [str(Path(p).resolve()) for p in plugins]
        self.threads = threads or max(1, int(self.cpus_per_run))

    def describe(self) -> str:
        return f"Ray ({self.address or 'local instance'})"

    def run(self, specs, on_done) -> None:
        import ray

        started = False
        if not ray.is_initialized():
            kw = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                      configure_logging=False)
            if self.address:
                ray.init(address=self.address, **kw)
            else:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, **kw)
            started = True
        try:
            gpus = self.gpus_per_run
            if gpus is None:
                gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
            task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=gpus, max_retries=self.max_retries,
                              retry_exceptions=False)(_ray_task)
            # absolute output folders: Ray workers need not share the driver's working directory
            refs = {task.remote({**s.config, "out": str(Path(s.config.get("out") or "results").resolve())},
                                self.plugins, self.threads): s for s in specs}
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    spec = refs.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except Exception as e:  # the worker or node was lost more than max_retries times
                        rec = _brief(_write_failed(Path(spec.config["out"]) / spec.id, spec.id, spec.config,
                                                   f"Ray task lost: {type(e).__name__}: {e}"))
                    full = rec.pop("result", None)
                    if full is not None:
                        path = Path(spec.config["out"]) / spec.id / "result.json"
                        if not path.exists():  # no shared file system: write the driver's copy
                            from cl.train.loggers import atomic_write_json

                            atomic_write_json(path, full)
                    on_done(spec, rec)
        finally:
            if started:
                ray.shutdown()


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(kind: str = "local", **kw):
    from cl.core.registry import unknown

    if kind not in EXECUTORS:
        raise unknown("executor", kind, EXECUTORS)
    return EXECUTORS[kind](**kw)
