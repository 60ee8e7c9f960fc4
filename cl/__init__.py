"""A continual-learning experiment platform: scenario streams -> strategy plugins -> metrics -> loggers.

Python API: :func:`cl.fit` (see :mod:`cl.api`); the strategy API: :mod:`cl.strategy`, :mod:`cl.buffers`,
:mod:`cl.heads`, :mod:`cl.models`, :mod:`cl.registry`.
"""
__version__ = "0.1.0"

from cl.api import Metrics, RunResult, Timings, fit  # noqa: E402

__all__ = ["Metrics", "RunResult", "Timings", "fit"]
