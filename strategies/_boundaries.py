"""The check of strategies that need visible experience boundaries (a frozen teacher taken at a boundary,
a memory kept per experience) with a reason the user can act on.  On a task-free stream (``scenario.boundaries``
hidden, blurry or gradual) the engine hands the boundary hooks a ``HiddenBoundary`` (the evaluation point's
index only) and refuses any strategy that overrides them without declaring ``task_free``
(cl/core/strategy.py); a strategy whose need depends on an option (A-GEM's memory, PEC's lr decay) or that
wants to say why calls ``require_boundaries`` in ``setup``."""
from __future__ import annotations

from cl.core.registry import ConfigError


def registered_name(strategy) -> str:
    """The name the strategy's class is registered under (its class name if none)."""
    from cl.core.registry import strategies

    for name, entry in strategies.entries.items():
        if entry.obj is type(strategy):
            return name
    return type(strategy).__name__


def require_boundaries(strategy, why: str, alternative: str = "") -> None:
    """ConfigError naming ``scenario.boundaries`` unless the run's boundaries are visible."""
    name, got = registered_name(strategy), strategy.info.boundaries
    if got != "visible":
        raise ConfigError(f"strategy {name!r} needs experience boundaries ({why}), got scenario.boundaries={got!r}; "
                          f"valid choice: scenario.boundaries=visible{alternative}")
