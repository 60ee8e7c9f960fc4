"""SIGTERM stops a run or a sweep the way Ctrl-C does.

``kill PID``, a batch scheduler's preemption or a container stop send SIGTERM, whose default action ends the
process at once: no ``interrupted.json``, a run lock left to go stale, a sweep's workers left running.  With
:func:`sigterm_as_interrupt` the signal raises ``KeyboardInterrupt`` in the main thread instead, so the same
path as Ctrl-C runs: the run is recorded as interrupted (resumable from its last checkpoint), the sweep stops
its workers and the command exits with status 130.
"""
from __future__ import annotations

import signal
import threading


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> bool:
    """Make SIGTERM raise KeyboardInterrupt in this process; False (nothing changed) off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return True
