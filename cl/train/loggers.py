"""Loggers: console progress, atomic result files, and Weights & Biases.

A run sends its events to an :class:`Events` fan-out; every logger implements the events it cares
about (the no-op defaults of :class:`Logger`)::

    experience_start(i, n_exp, steps)   a loop starts training experience i (steps: progress total)
    step(n=1, **postfix)                n training steps done (postfix: running values to show)
    log(data, step)                     a row of scalars (experience rows, online curve points)
    finish(result)                      the run ended (finished, failed or interrupted)
    close()                             release terminals and files

A logger observes the run and can never end it: an exception in a logger is reported once and that
logger is dropped for the rest of the run.  W&B follows its own conventions (``WANDB_MODE``,
``wandb login``): with no credentials it runs offline.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from cl.core.files import atomic_write


def atomic_write_json(path: str | Path, obj) -> None:
    """Write JSON to a temporary file in the same folder, then rename over ``path``. The file gets the
    permissions of any new file of the user (0666 minus the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: json.dump(_jsonable(obj), f, indent=1, allow_nan=True), fsync=True)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else o
    return o


class Logger:
    """The events a run sends (no-op defaults)."""

    def experience_start(self, i: int, n_exp: int, steps: int) -> None:
        pass

    def step(self, n: int = 1, **postfix) -> None:
        pass

    def log(self, data: dict, step: int | None = None) -> None:
        pass

    def finish(self, result: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Events:
    """Fan-out of a run's events to its loggers; a logger that raises is reported and dropped."""

    def __init__(self, loggers):
        self.loggers = [lg for lg in loggers if lg is not None]
        # the per-step hot path only visits loggers that show steps
        self._stepping = [lg for lg in self.loggers if getattr(type(lg), "step", Logger.step) is not Logger.step]

    def _call(self, group, name, *a, **kw):
        for lg in list(group):
            fn = getattr(lg, name, None)  # a logger implements the events it cares about
            if fn is None:
                continue
            try:
                fn(*a, **kw)
            except BaseException as e:  # noqa: BLE001 - a logger never fails the run (SystemExit included)
                if not _guarded(e):  # the user's Ctrl-C goes on
                    raise
                warnings.warn(f"logger {type(lg).__name__} disabled for this run: {name}: {type(e).__name__}: {e}")
                for g in (self.loggers, self._stepping):
                    if lg in g:
                        g.remove(lg)

    def experience_start(self, i, n_exp, steps):
        self._call(self.loggers, "experience_start", i, n_exp, steps)

    def step(self, n=1, **postfix):
        if self._stepping:
            self._call(self._stepping, "step", n, **postfix)

    def log(self, data, step=None):
        self._call(self.loggers, "log", data, step=step)

    def finish(self, result):
        self._call(self.loggers, "finish", result)

    def close(self):
        self._call(self.loggers, "close")


class ResultFile(Logger):
    """The run's outcome file, written atomically (cl.train.results.write_outcome): ``result.json`` when it finished,
    else ``interrupted.json`` / ``failed.json`` (what was computed), never touching a finished run's ``result.json``."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    def finish(self, result: dict) -> None:
        from cl.train.results import write_outcome

        write_outcome(self.dir, result)  # result/interrupted/failed.json; never raises OSError; may set status


class Progress(Logger):
    """One progress bar per run: experience, step, ETA, running accuracy."""

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=0, desc=desc, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True)

    def experience_start(self, i: int, n_exp: int, steps: int):
        if self.bar is not None:
            self.bar.reset(total=steps)
            self.bar.set_description(f"{self.bar.desc.split(' [')[0]} [exp {i + 1}/{n_exp}]")

    def step(self, n: int = 1, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


#: seconds W&B may take to start online before the run falls back to offline logging (CL_WANDB_INIT_TIMEOUT)
INIT_TIMEOUT_S = 5.0
#: a failed online start is remembered for this long, in this process and in a marker file in the results
#: folder (shared by a sweep's workers), so that a sweep pays the start-up wait at most once
OUTAGE_MARKER, OUTAGE_TTL_S = ".wandb-unreachable", 3600.0
_outage_in_process = False


def _init_timeout() -> float:
    try:
        return float(os.environ.get("CL_WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))
    except ValueError:
        return INIT_TIMEOUT_S


def _guarded(e: BaseException) -> bool:
    """A logger's failure of any kind (SystemExit included) is absorbed; only the user's Ctrl-C goes on."""
    return not isinstance(e, KeyboardInterrupt)


class WandbLogger(Logger):
    """One W&B run per platform run. Every call is guarded: a W&B failure of any kind (an exception,
    SystemExit, a stalled start) disables W&B, never the run. An online start is bounded by
    ``CL_WANDB_INIT_TIMEOUT`` seconds (default 5), then the run logs offline, and later runs of the same
    process or results folder go offline at once."""

    def __init__(self, resolved: dict, run_id: str, out_dir: Path):
        self.run = None
        setting = resolved.get("wandb", "auto")
        if setting in (False, "off", "false", "disabled", None) or os.environ.get("WANDB_MODE") == "disabled":
            return
        self.marker = Path(resolved.get("out") or "results") / OUTAGE_MARKER
        mode = _wandb_mode()
        if mode == "online" and self._outage_known():
            mode = "offline"
        try:
            self.run = self._init(resolved, run_id, out_dir, mode)
        except BaseException as e:  # noqa: BLE001
            if not _guarded(e):
                raise
            if mode != "online":
                self._fail(e)
                return
            self._remember_outage(e)
            try:
                self.run = self._init(resolved, run_id, out_dir, "offline")
            except BaseException as e2:  # noqa: BLE001
                if not _guarded(e2):
                    raise
                self._fail(e2)

    @staticmethod
    def _init(resolved, run_id, out_dir, mode):
        import wandb

        tags = list(resolved.get("tags") or []) + [resolved["strategy"]["name"], resolved["scenario"]["name"]]
        return wandb.init(project=resolved.get("project") or "cl", group=resolved.get("group"),
                          name=resolved.get("name") or run_id, id=None, tags=tags, config=resolved,
                          dir=str(out_dir), mode=mode, reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off", init_timeout=_init_timeout()))

    def _outage_known(self) -> bool:
        if _outage_in_process:
            return True
        try:
            return time.time() - self.marker.stat().st_mtime < OUTAGE_TTL_S
        except OSError:
            return False

    def _remember_outage(self, e) -> None:
        global _outage_in_process
        _outage_in_process = True
        warnings.warn(f"W&B could not start online ({type(e).__name__}: {str(e)[:200]}); logging offline "
                      f"(wandb sync later), and the next runs of this sweep go offline at once")
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"{type(e).__name__}: {e}\n")
        except OSError:
            pass

    def _fail(self, e):
        warnings.warn(f"W&B disabled for this run: {type(e).__name__}: {e}")
        self.run = None

    def log(self, data: dict, step: int | None = None):
        if self.run is None:
            return
        try:
            self.run.log(data, step=step)
        except BaseException as e:  # noqa: BLE001
            if not _guarded(e):
                raise
            self._fail(e)

    def finish(self, result: dict):
        if self.run is None:
            return
        try:
            import wandb

            R = result.get("R") or []
            if R:
                T = max(len(r) for r in R)
                table = wandb.Table(columns=["after_exp"] + [f"task_{j}" for j in range(T)],
                                    data=[[i] + list(r) + [None] * (T - len(r)) for i, r in enumerate(R)])
                self.run.log({"R": table})
            for k, v in (result.get("metrics") or {}).items():
                if isinstance(v, (int, float)):
                    self.run.summary[f"final/{k}"] = v
            self.run.summary["status"] = result.get("status")
            self.run.finish(exit_code=0 if result.get("status") == "finished" else 1)
        except BaseException as e:  # noqa: BLE001
            if not _guarded(e):
                raise
            self._fail(e)
        self.run = None

    @property
    def dir(self) -> str | None:
        return None if self.run is None else self.run.dir
