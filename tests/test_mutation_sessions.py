"""Tests written from the mutation run of strategies/_sessions.py (issue 19): the data repetition, the per-sample
cosine learning rate of a session (hand-computed values), the session counter and class mask, and eval-mode
featurisation, on a bare object holding what the mixin reads (no backbone)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from cl.core.registry import ConfigError
from strategies._sessions import CosineSession, SessionMixin, repeated


def test_repeated_copies_the_data_that_many_times_and_once_is_the_data_itself():
    x, y = torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 2])
    for times in (1, 0):
        xs, ys = repeated(x, y, times)
        assert xs is x and ys is y  # no copy at all
    xs, ys = repeated(x, y, 2)
    assert torch.equal(xs, torch.cat([x, x])) and torch.equal(ys, torch.tensor([0, 1, 2, 0, 1, 2]))
    x3 = torch.arange(8.0).reshape(2, 2, 2)  # every dimension but the first kept
    assert torch.equal(repeated(x3, y[:2], 3)[0], torch.cat([x3, x3, x3]))


def _opt(lr=7.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_session_lr_by_hand():
    opt, s = _opt(), CosineSession()
    s.start(8)
    lrs = []
    for _ in range(5):  # 2 samples a step: done = 0, 2, 4, 6, 8 (the end; then held at min_lr)
        s.step(opt, 1.0, 2, min_lr=0.2)
        lrs.append(opt.param_groups[0]["lr"])
    want = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert lrs == pytest.approx(want, abs=1e-12)
    assert lrs[0] == pytest.approx(1.0) and lrs[2] == pytest.approx(0.6) and lrs[4] == pytest.approx(0.2)
    assert s.done == 10
    s.step(opt, 1.0, 2, min_lr=0.2)  # past the end: the fraction is capped at 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    s.start(4)  # a new session restarts the counters
    assert (s.done, s.total) == (0, 4)
    s.step(opt, 0.5, 1)  # min_lr defaults to 0
    s.step(opt, 0.5, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_cosine_session_is_off_before_start_and_with_total_zero():
    opt, s = _opt(7.0), CosineSession()
    assert (s.done, s.total) == (0, 0)
    s.step(opt, 1.0, 3)
    assert opt.param_groups[0]["lr"] == 7.0 and s.done == 0
    s.start(0)
    s.step(opt, 1.0, 3)
    assert opt.param_groups[0]["lr"] == 7.0 and s.done == 0


class _Holder(SessionMixin):
    def __init__(self, n_classes=5, boundaries="visible"):
        self.info = SimpleNamespace(n_classes=n_classes, boundaries=boundaries)
        self.model = nn.Linear(2, 2)
        self.device = torch.device("cpu")


def test_setup_and_start_session_mask_repetition_and_schedule():
    h = _Holder()
    h.setup_sessions("aper")
    assert h.session == -1 and h._repeat == 1 and (h.schedule.done, h.schedule.total) == (0, 0)
    assert h.current.dtype == torch.bool and h.current.shape == (5,) and not h.current.any()
    assert h.preprocess(torch.tensor([255], dtype=torch.uint8)).item() == pytest.approx(1.0)
    exp = SimpleNamespace(classes=[1, 3], train_y=torch.zeros(6, dtype=torch.long))
    h.start_session(exp, 4)
    assert h.session == 0 and h._repeat == 4 and h.schedule.total == 24
    assert h.current.tolist() == [False, True, False, True, False]
    h.schedule.done = 5
    h.start_session(SimpleNamespace(classes=[0], train_y=torch.zeros(3, dtype=torch.long)), None)
    assert h.session == 1 and h._repeat == 1 and (h.schedule.done, h.schedule.total) == (0, 0)  # constant lr
    assert h.current.tolist() == [True, False, False, False, False]  # the earlier session's classes cleared


def test_setup_refuses_a_task_free_stream_naming_who():
    with pytest.raises(ConfigError, match=r"ease works session by session.*scenario.boundaries='hidden'"):
        _Holder(boundaries="hidden").setup_sessions("ease")


@pytest.mark.parametrize("training", [True, False])
def test_featurise_runs_in_eval_mode_in_batches_and_restores_the_mode(training):
    h = _Holder()
    h.setup_sessions("aper")
    h.preprocess = lambda xb: xb * 10
    h.model.train(training)
    seen = []

    def fn(xb):
        seen.append((h.model.training, len(xb), torch.is_grad_enabled()))
        return xb + 1

    x = torch.arange(5.0).reshape(5, 1)
    out = h.featurise(fn, x, 2)
    assert torch.equal(out, x * 10 + 1)
    assert seen == [(False, 2, False), (False, 2, False), (False, 1, False)]
    assert h.model.training is training

    def boom(xb):
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        h.featurise(boom, x, 2)
    assert h.model.training is training  # restored on an error too
