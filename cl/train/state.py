"""The state a run carries from experience to experience, as typed dataclasses.

Everything here is made of plain values (numbers, strings, lists, dicts, None) and tensors, so that
``to_dict()`` goes into a checkpoint that loads with ``torch.load(weights_only=True)`` and
``from_dict()`` reads it back (unknown keys are ignored, missing ones take their defaults).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


def _fill(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass
class OnlineCursor:
    """Where the online stream stands: counters that schedules (logging, anytime evaluation, real-time
    accounting, near-future accuracy) continue from across experiences and resumes."""

    batches: int = 0  #: stream batches consumed so far (trained or skipped)
    free_at: float = 0.0  #: real-time accounting: the batch index at which the learner is free again
    nf_correct: int = 0  #: near-future predictions that were right
    nf_count: int = 0  #: near-future predictions made
    next_log: int = 0  #: samples seen at which the next online-curve point is due
    next_eval: int = 0  #: samples seen at which the next anytime evaluation is due
    seen_classes: list = field(default_factory=list)  #: classes seen in the stream so far
    task_correct: list | None = None  #: right online predictions per sample task id (train_t)
    task_count: list | None = None  #: online predictions per sample task id


@dataclass
class OnlineState:
    """The online protocol's state: per-sample correctness, counters and every curve (see cl.train.online)."""

    correct: list = field(default_factory=list)  #: per experience (n, bit-packed uint8 tensor of correctness)
    seen: int = 0  #: stream samples seen
    trained_batches: int = 0
    skipped_batches: int = 0  #: real-time accounting: batches the busy learner did not train on
    cursor: OnlineCursor = field(default_factory=OnlineCursor)
    times: dict = field(default_factory=dict)  #: seconds per phase: predict, train, near_future, anytime
    online_acc_curve: list = field(default_factory=list)  #: (samples seen, online accuracy so far)
    online_acc_window_curve: list = field(default_factory=list)  #: (samples seen, accuracy in the last window)
    online_acc_time_curve: list = field(default_factory=list)  #: (stream time, online accuracy) on timed streams
    anytime: list = field(default_factory=list)  #: (samples seen, accuracy on the seen classes' test data)
    anytime_time: list = field(default_factory=list)  #: (stream time, anytime accuracy) on timed streams
    anytime_matrix: list = field(default_factory=list)  #: per evaluation point, accuracy per experience (None: unseen)
    anytime_forgetting_curve: list = field(default_factory=list)  #: (samples seen, anytime forgetting)
    near_future_curve: list = field(default_factory=list)  #: (samples seen, near-future accuracy so far)
    realtime_cost: float | None = None  #: real-time accounting: step cost C in stream intervals
    realtime_cost_measured: float | None = None  #: the measured ratio before rounding
    online_acc_per_task: list | None = None  #: online accuracy per sample task id

    @classmethod
    def from_dict(cls, d: dict) -> "OnlineState":
        st = _fill(cls, d)
        st.cursor = _fill(OnlineCursor, d.get("cursor") or {})
        st.correct = [(int(n), torch.as_tensor(np.asarray(bits), dtype=torch.uint8)) for n, bits in st.correct]
        return st

    def public(self) -> dict:
        """The state as the result file shows it: no per-sample bits, no unset optional fields."""
        d = {k: v for k, v in asdict(self).items() if k != "correct" and v is not None}
        d["cursor"] = {k: v for k, v in d["cursor"].items() if v is not None}
        return d


@dataclass
class RunState:
    """What a run has computed so far; a checkpoint holds it, a resume continues from it."""

    R: list = field(default_factory=list)  #: R[i][j]: accuracy on experience j's test data after training on i (None: not evaluated)
    next_exp: int = 0  #: the experience to train next
    train_time: float = 0.0  #: seconds in training (hooks included), summed over experiences
    eval_time: float = 0.0  #: seconds in the evaluations after each experience
    samples: int = 0  #: training samples processed (times epochs offline)
    per_experience: list = field(default_factory=list)  #: per experience: avg_acc, forgetting, train_time
    random_init: list | None = None  #: accuracy of the untrained model per experience (protocol.fwt)
    online: OnlineState | None = None  #: the online protocol's state (None offline)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        st = _fill(cls, d)
        if st.online is not None:
            st.online = OnlineState.from_dict(st.online)
        return st
