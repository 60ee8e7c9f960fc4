"""What a run leaves on disk, read back and written safely.

- :func:`finished_result`: a run is finished only if its ``result.json`` parses, is a mapping and says
  this run id and ``status: finished``; any other ``result.json`` is moved aside (kept, renamed
  ``result.json.bad-<time>``) so that the run is computed again.
- :class:`RunLock`: one process at a time computes a run. An ``flock`` on ``<run>/.lock``: the kernel
  releases it when the holder exits or is killed (kill -9 included), so a crashed holder never leaves a
  stale lock; another process skips the run (sweeps) or waits for it (``cl run``).
- :func:`write_outcome`: ``result.json`` (finished), ``interrupted.json`` (resumable) or ``failed.json``,
  written atomically; a write that fails (disk full, read-only folder) is reported in the returned record
  (``saved``), never raised, and leaves no temporary file behind.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

RESULT, FAILED, INTERRUPTED, LOCK = "result.json", "failed.json", "interrupted.json", ".lock"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def move_aside(path: Path, why: str) -> Path | None:
    """Rename a bad file to ``<name>.bad-<time>`` (kept for inspection); None if that is impossible."""
    dest = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, dest)
    except OSError as e:
        print(f"warning: {path} is {why} and cannot be moved aside ({e.strerror}); it is ignored",
              file=sys.stderr)
        return None
    print(f"warning: {path} is {why}: moved aside to {dest.name}; the run is computed again", file=sys.stderr)
    return dest


def result_problem(rec, run_id: str | None) -> str | None:
    """Why a parsed result.json does not count as this run's finished result (None: it does)."""
    if rec is None:
        return "not valid JSON"
    if not isinstance(rec, dict):
        return f"JSON of the wrong shape ({type(rec).__name__}, not a mapping)"
    if run_id is not None and rec.get("run_id") != run_id:
        return f"the result of another run ({rec.get('run_id')!r})"
    if rec.get("status") != "finished":
        return f"not finished (status {rec.get('status')!r})"
    if not isinstance(rec.get("R"), list):
        return "missing its accuracy matrix R"
    return None


def finished_result(run_dir: str | Path, run_id: str | None, move: bool = True) -> dict | None:
    """The run's finished result, or None. A result.json that does not qualify is moved aside (``move``)."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    rec = _read_json(path)
    why = result_problem(rec, run_id)
    if why is None:
        return rec
    if move and result_problem(rec, None) is not None:  # damaged; another run's valid result stays untouched
        move_aside(path, why)
    return None


def run_state(run_dir: str | Path, run_id: str | None) -> str:
    """finished | running | partial | interrupted | failed | pending (never modifies anything)."""
    d = Path(run_dir)
    if finished_result(d, run_id, move=False) is not None:
        return "finished"
    if RunLock.held_elsewhere(d):
        return "running"
    if (d / "checkpoint.pt").exists():
        return "partial"
    if (d / INTERRUPTED).exists():
        return "interrupted"
    if (d / FAILED).exists():
        return "failed"
    return "pending"


# -- writing ------------------------------------------------------------------------------------------
def write_outcome(run_dir: Path, result: dict) -> dict:
    """Write the run's outcome file; returns ``result`` with ``saved`` (the path written, or None and
    ``save_error``). A finished result that cannot be written turns the run into a failed one."""
    from cl.train.loggers import atomic_write_json

    run_dir = Path(run_dir)
    status = result.get("status")
    name = RESULT if status == "finished" else (INTERRUPTED if status == "interrupted" else FAILED)
    try:
        atomic_write_json(run_dir / name, result)
    except OSError as e:
        result["saved"], result["save_error"] = None, f"cannot write {run_dir / name}: {e.strerror or e}"
        if status == "finished":  # computed, but not kept: say so, and try to leave a failed.json
            result["status"], result["error"] = "failed", result["save_error"]
            try:
                atomic_write_json(run_dir / FAILED, {k: v for k, v in result.items() if k != "traceback"})
                result["saved"] = str(run_dir / FAILED)
            except OSError:
                pass
        return result
    result["saved"] = str(run_dir / name)
    stale = {RESULT: (FAILED, INTERRUPTED), INTERRUPTED: (FAILED,), FAILED: (INTERRUPTED,)}[name]
    for other in stale:
        try:
            (run_dir / other).unlink(missing_ok=True)
        except OSError:
            pass
    return result


def saved_note(result: dict) -> str:
    """'see <file>' or why nothing could be written, for one-line messages."""
    if result.get("saved"):
        return f"see {result['saved']}"
    if result.get("save_error"):
        return f"nothing written: {result['save_error']}"
    return ""


# -- one process per run ------------------------------------------------------------------------------
class RunLock:
    """``with RunLock(run_dir, wait=False) as lock: if lock.acquired: ...``.

    An exclusive ``flock`` on ``<run_dir>/.lock``, held for the whole run. The kernel drops it when the
    holder's process ends in any way, so there is no stale lock after a crash; the file itself stays and
    records who holds it (pid, host, time) for the messages of the processes that find it taken."""

    def __init__(self, run_dir: str | Path, run_id: str = "", wait: bool = False, poll: float = 0.5, log=None):
        self.dir, self.run_id, self.wait, self.poll = Path(run_dir), run_id, wait, poll
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.fd = None
        self.acquired = False
        self.waited = False
        self.holder: dict | None = None

    @staticmethod
    def _open(path: Path):
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)

    @classmethod
    def held_elsewhere(cls, run_dir: Path) -> bool:
        import fcntl

        path = Path(run_dir) / LOCK
        if not path.exists():
            return False
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def _try(self) -> bool:
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            return False

    def __enter__(self) -> "RunLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fd = self._open(self.dir / LOCK)
        told = False
        while not self._try():
            self.holder = _read_json(self.dir / LOCK) or {}
            if not self.wait:
                return self
            if not told:
                self.log(f"{self.run_id or self.dir}: being computed by another process "
                         f"(pid {self.holder.get('pid', '?')} on {self.holder.get('host', '?')}); waiting for it")
                told = True
            self.waited = True
            time.sleep(self.poll)
        self.acquired = True
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "since": time.time(), "run_id": self.run_id}).encode())
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self.fd is not None:
            try:
                if self.acquired:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None
        self.acquired = False


def busy_record(run_id: str, holder: dict | None) -> dict:
    h = holder or {}
    return {"run_id": run_id, "status": "busy",
            "error": f"being computed by another process (pid {h.get('pid', '?')} on {h.get('host', '?')})"}

