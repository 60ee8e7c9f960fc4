"""The interface the run lifecycle drives a protocol through, and what every loop is given.

A loop trains one experience at a time (:meth:`Loop.run_experience`); the :class:`~cl.train.engine.Run`
around it does everything else (hooks at the boundaries, evaluation, checkpoints, loggers).  The
offline loop (:mod:`cl.train.offline`) and the online loop (:mod:`cl.train.online`) implement it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from cl.core.config import ProtocolConfig
from cl.core.strategy import Strategy
from cl.core.streams import Scenario
from cl.train.state import RunState


class NonFiniteLoss(RuntimeError):
    """A loss turned NaN or infinite: the run stops and keeps what was computed up to then."""


def nonfinite_message(i: int, where: str) -> str:
    """What a run that stopped on a non-finite loss in experience ``i`` says it kept."""
    kept = f"accuracies up to experience {i - 1} are kept in failed.json" if i > 0 else "no experience was completed"
    return f"non-finite loss in experience {i}, {where}: stopping; {kept}"


def check_finite(losses: torch.Tensor, where: str, i: int) -> None:
    """One host read: raise :class:`NonFiniteLoss` if any of ``losses`` is not finite."""
    if not torch.isfinite(losses).all().item():
        raise NonFiniteLoss(nonfinite_message(i, where))


@dataclass
class RunContext:
    """What a loop works with: built once by the run's set-up phase."""

    strategy: Strategy
    scenario: Scenario
    protocol: ProtocolConfig
    preprocess: Callable[[torch.Tensor], torch.Tensor]  #: the model's batch transform on the device
    device: torch.device
    evaluate: Callable[[list], list]  #: experiences -> accuracy on each one's test data
    events: object  #: cl.train.loggers.Events: progress, W&B (guarded: a logger never fails the run)


class Loop:
    """One protocol's training loop over the experiences of a stream."""

    def __init__(self, ctx: RunContext, state: RunState):
        self.ctx, self.state = ctx, state

    def run_experience(self, i: int, exp) -> int:
        """Train on experience ``i``; returns the number of training samples processed."""
        raise NotImplementedError

    def log_step(self, i: int) -> int:
        """The logger step of experience ``i``'s row (offline: its index)."""
        return i

    def log_fields(self) -> dict:
        """Extra fields of an experience's logged row."""
        return {}

    def summary(self) -> dict:
        """The protocol's own metrics, added to the result's metrics."""
        return {}

    def result(self) -> dict | None:
        """The protocol's own section of the result file (``result["online"]``)."""
        return None
