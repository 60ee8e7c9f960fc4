"""Tests written from the mutation run of strategies/mir.py (issue 19): MIR's defaults (the official
scripts' subsample 50, replay batch 10), the validation bounds, the task-free declaration, the candidate
draw (distinct samples, at most ``subsample``, the current experience left out on request), the step's
objective ``CE(B_t) + CE(retrieved)`` on a zero head (2 log 2), and the saved experience index."""
from __future__ import annotations

import math

import pytest
import torch

from cl.core.config import resolve
from cl.core.registry import ConfigError
from strategies.mir import MIR, MIRConfig

from conftest import tiny
from test_ocl1 import E1, E2, make


def mir(**kw):
    return make(MIR, MIRConfig, **kw)


def test_defaults_are_the_papers_and_mir_is_task_free():
    c = MIRConfig()
    assert (c.buffer_size, c.replay_batch_size, c.subsample, c.exclude_current) == (500, 10, 50, False)
    assert c.score_moves_bn  # both codes' live pre-update scoring pass
    assert MIR.task_free and MIR.runs_task_free()


def test_exclude_current_is_refused_only_without_visible_boundaries():
    assert mir(boundaries="visible", exclude_current=True).exp_index == 0
    assert mir(boundaries="hidden", exclude_current=False).exp_index == 0
    with pytest.raises(ConfigError, match="exclude_current=true needs experience boundaries.*'hidden'"):
        mir(boundaries="hidden", exclude_current=True)


def test_candidates_are_distinct_and_at_most_subsample():
    s = mir(buffer_size=20, subsample=4, replay_batch_size=2)
    assert s.candidates() == {} and s.retrieve() == {}  # empty buffer
    s.buffer.add(x=torch.arange(6.0)[:, None].repeat(1, 2), y=torch.zeros(6, dtype=torch.long))
    for _ in range(20):
        c = s.candidates()["x"][:, 0].tolist()
        assert len(c) == 4 and len(set(c)) == 4
    s = mir(buffer_size=20, subsample=10, replay_batch_size=10)
    s.buffer.add(x=torch.arange(3.0)[:, None].repeat(1, 2), y=torch.zeros(3, dtype=torch.long))
    assert sorted(s.candidates()["x"][:, 0].tolist()) == [0.0, 1.0, 2.0]  # fewer than subsample: all, once each


def test_excluding_the_current_experience_draws_at_most_subsample_distinct_past_samples():
    s = mir(exclude_current=True, buffer_size=20, subsample=3, replay_batch_size=2)
    assert s.candidates() == {} and s.retrieve() == {}  # empty buffer (no stored fields yet)
    s.before_experience(type("E", (), {"index": 0})())
    s.after_step(torch.arange(5.0)[:, None].repeat(1, 2), torch.zeros(5, dtype=torch.long))
    assert s.buffer.items()["e"].tolist() == [0] * 5
    s.before_experience(type("E", (), {"index": 1})())
    assert s.exp_index == 1
    s.after_step(torch.full((2, 2), 9.0), torch.ones(2, dtype=torch.long))
    assert s.buffer.items()["e"].tolist() == [0] * 5 + [1] * 2
    for _ in range(20):
        c = s.candidates()
        xs = c["x"][:, 0].tolist()
        assert len(xs) == 3 and len(set(xs)) == 3 and 9.0 not in xs and c["e"].tolist() == [0, 0, 0]
    plain = mir(buffer_size=20)
    plain.after_step(torch.randn(2, 2), torch.tensor([0, 1]))
    assert set(plain.buffer.items()) == {"x", "y"}  # no experience index stored without exclude_current


def test_step_loss_is_incoming_ce_plus_retrieved_ce():
    """Zero head over two seen classes: every CE is log 2 before the step, so the step returns 2 log 2 with a
    replay and log 2 without; the update is -lr (g_in + g_replay)."""
    s = mir(buffer_size=10, subsample=2, replay_batch_size=1, lr=0.5)
    x, y = torch.stack([E1, E2]), torch.tensor([0, 1])
    s.model.observe(torch.tensor([0, 1]))
    loss = s.train_step(x, y)  # empty buffer: incoming only
    assert float(loss) == pytest.approx(math.log(2)) and not loss.requires_grad
    s = mir(buffer_size=10, subsample=1, replay_batch_size=1, lr=0.5)
    s.model.observe(torch.tensor([0, 1]))
    s.buffer.add(x=(3 * E1)[None], y=torch.tensor([1]))
    loss = s.train_step(torch.stack([E1]), torch.tensor([0]))
    assert float(loss) == pytest.approx(2 * math.log(2))
    # gradient of CE at a zero head: (softmax - onehot) x^T = [[-1/2], [1/2]] e1 (incoming), [[3/2], [-3/2]] e1 (replay)
    want = -0.5 * torch.tensor([[-0.5 + 1.5, 0.0], [0.5 - 1.5, 0.0]])
    assert torch.allclose(s.model.head.fc.weight.detach(), want, atol=1e-6)


def test_experience_index_is_saved_and_defaults_to_zero():
    s = mir(exclude_current=True)
    s.exp_index = 3
    st = s.extra_state()
    assert st["exp_index"] == 3 and "buffer" in st
    t = mir(exclude_current=True)
    t.exp_index = 5
    t.load_extra_state(st)
    assert t.exp_index == 3
    t.load_extra_state({"buffer": st["buffer"]})  # a checkpoint from before the index was saved
    assert t.exp_index == 0


def test_validation_bounds():
    def ok(**kw):
        return resolve(tiny({"name": "mir", **kw}))["strategy"]

    assert ok(subsample=10, replay_batch_size=10)["subsample"] == 10  # equal is allowed
    assert ok(subsample=1, replay_batch_size=1)["replay_batch_size"] == 1
    for bad, words in (({"subsample": 9, "replay_batch_size": 10}, "subsample=9 must be >= replay_batch_size=10"),
                       ({"replay_batch_size": 0, "subsample": 5}, "replay_batch_size=0"),
                       ({"subsample": 0, "replay_batch_size": 1}, "subsample=0")):
        with pytest.raises(ConfigError, match=words):
            ok(**bad)
