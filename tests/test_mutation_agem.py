"""Tests written from the (partial) mutation run of strategies/agem.py (issue 19): defaults, the validation
bounds of both memories, which memory each option builds, the per-experience slot count, the task-free
declaration, and the reservoir mode's reference batch (none while empty, drawn without replacement)."""
from __future__ import annotations

import pytest
import torch

from cl.core.registry import ConfigError
from cl.models.buffers import ReservoirBuffer
from strategies.agem import AGEM, AGEMConfig

from test_baselines_replay import build


def test_defaults():
    """lr 0.03 (mammoth utils/best_args.py, seq-CIFAR-10), 500 samples in total, memory batch 32,
    the paper's episodic memory."""
    c = AGEMConfig()
    assert (c.lr, c.buffer_size, c.replay_batch_size, c.memory) == (0.03, 500, 32, "episodic")


def test_episodic_validation_and_slots_per_experience():
    assert build("agem", buffer_size=0).per_task == 0  # the smallest valid memory
    with pytest.raises(ConfigError, match="buffer_size must be >= 0, got -1"):
        build("agem", buffer_size=-1)
    s = build("agem", buffer_size=10, n_exp=3)
    assert s.per_task == 3 and isinstance(s.per_task, int)  # 10 // 3, whole slots
    assert build("agem", buffer_size=10, n_exp=1).per_task == 10
    assert not s.reservoir and s.mem_x is None and not hasattr(s, "buffer")


@pytest.mark.parametrize("bad", [{"buffer_size": -1, "replay_batch_size": 1}, {"buffer_size": 0, "replay_batch_size": 0},
                                 {"buffer_size": 5, "replay_batch_size": 0}, {"buffer_size": -1, "replay_batch_size": 4}])
def test_reservoir_validation_bounds(bad):
    with pytest.raises(ConfigError, match="buffer_size must be >= 0 and strategy.replay_batch_size >= 1"):
        build("agem", memory="reservoir", **bad)


def test_reservoir_mode_builds_one_reservoir_and_is_task_free():
    s = build("agem", memory="reservoir", buffer_size=0, replay_batch_size=1)  # the smallest valid values
    assert s.reservoir and isinstance(s.buffer, ReservoirBuffer) and not hasattr(s, "per_task")
    assert AGEM.runs_task_free()
    with pytest.raises(ConfigError, match="strategy.memory"):
        build("agem", memory="ring")


def test_reservoir_reference_batch_is_none_while_empty_then_distinct_samples():
    s = build("agem", memory="reservoir", buffer_size=10, replay_batch_size=6)
    assert s.reference_batch() is None
    s.after_step(torch.randn(1, 3), torch.tensor([2]))
    x, y = s.reference_batch()
    assert len(y) == 1 and int(y[0]) == 2  # one stored sample is a batch
    s.after_step(torch.arange(15.0).view(5, 3), torch.arange(5))
    torch.manual_seed(0)
    for _ in range(5):
        x, y = s.reference_batch()  # 6 slots filled, 6 asked: each exactly once (no replacement)
        assert sorted(y.tolist()) == sorted(s.buffer.items()["y"].tolist())


def test_episodic_memory_offers_exactly_the_experiences_samples_in_its_first_pass():
    """to_offer counts down the experience's samples: with 5 samples in batches of 4, the second batch
    offers its single remaining sample, and a second pass offers nothing."""
    from cl.core.streams import Experience

    s = build("agem", buffer_size=20, n_exp=2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])
    s.before_experience(Experience(x, y, x, y, [0, 1], 0, 0))
    s.after_step(x[:4], y[:4])
    assert s.to_offer == 1 and len(s.pending.items()["y"]) == 4
    s.after_step(x[4:], y[4:])
    assert s.to_offer == 0 and len(s.pending.items()["y"]) == 5
    s.after_step(x[:4], y[:4])  # a second epoch's batch: nothing more
    assert len(s.pending.items()["y"]) == 5
