"""Tests written from the (partial) mutation run of strategies/agem.py (issue 19): defaults, the validation
bounds of both memories, which memory each option builds, the per-experience slot count, the task-free
declaration, and the reservoir mode's reference batch (none while empty, drawn without replacement)."""
from __future__ import annotations

import pytest
import torch

from cl.core.registry import ConfigError, strategies
from cl.core.strategy import RunInfo
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
import torch.nn as nn
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


# -- project_from: Mai et al.'s code projects only once the first task is over --------------------------
def _exp(index):
    from cl.core.streams import Experience

    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    return Experience(x, y, x, y, [0, 1], index, index)


def _conflicting_grad(s):
    """Store 4 samples, then set the parameters' gradient to minus the reference gradient on all of them
    (replay_batch_size >= 4: the reference batch is the whole buffer), a conflict (g . g_ref < 0)."""
    torch.manual_seed(1)
    s.model.observe(torch.arange(4))  # the classes seen (the train step does this): finite logits
    s.after_step(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    params = s.params()
    loss = s.memory_loss(*(s.buffer.items()[k] for k in ("x", "y")))
    g_ref = torch.autograd.grad(loss, params)
    assert sum(float(g.norm()) for g in g_ref) > 0.1  # a gradient to conflict with
    for p, g in zip(params, g_ref):
        p.grad = -g.clone()
    return params, g_ref


@pytest.mark.parametrize("project_from, projects_in_first", [(None, True), ("first_step", True),
                                                               ("second_experience", False)])
def test_project_from_decides_whether_the_first_experience_projects(project_from, projects_in_first):
    """g = -g_ref projects to g - (g . g_ref / |g_ref|^2) g_ref = 0; left alone it stays -g_ref."""
    s = build("agem", memory="reservoir", buffer_size=10, replay_batch_size=8, project_from=project_from)
    s.before_experience(_exp(0))
    params, g_ref = _conflicting_grad(s)
    s.before_optimizer_step(None, None)
    for p, g in zip(params, g_ref):
        assert torch.allclose(p.grad, torch.zeros_like(g) if projects_in_first else -g, atol=1e-6)
    s.before_experience(_exp(1))  # from the second experience on, every setting projects
    for p, g in zip(params, g_ref):
        p.grad = -g.clone()
    s.before_optimizer_step(None, None)
    assert all(torch.allclose(p.grad, torch.zeros_like(p.grad), atol=1e-6) for p in params)


def test_project_from_is_saved_with_the_experience_index_and_its_bad_values_are_refused():
    s = build("agem", memory="reservoir", buffer_size=10, replay_batch_size=8, project_from="second_experience")
    s.before_experience(_exp(1))
    state = s.extra_state()
    r = build("agem", memory="reservoir", buffer_size=10, replay_batch_size=8, project_from="second_experience")
    r.load_extra_state(state)
    r.after_step(torch.randn(2, 3), torch.tensor([0, 1]))
    assert r.exp_index == 1 and r.reference_batch() is not None  # resumed in experience 1: projects
    with pytest.raises(ConfigError, match="strategy.project_from.*first_step, second_experience"):
        build("agem", memory="reservoir", project_from="second")
    with pytest.raises(ConfigError, match="project_from=first_step needs strategy.memory=reservoir"):
        build("agem", project_from="first_step")
    assert build("agem", project_from="second_experience").per_task == 250  # the episodic memory's own


def test_project_from_second_experience_needs_visible_boundaries():
    import importlib

    importlib.import_module("strategies.agem")
    entry = strategies.get("agem")
    model = Model(nn.Identity(), IncrementalLinear(3, 4))
    for b in ("hidden", "blurry"):
        info = RunInfo(n_classes=4, input_shape=(3,), device=torch.device("cpu"), seed=0, n_experiences=2,
                       boundaries=b)
        entry.obj(entry.config(memory="reservoir"), model, info).setup()  # the default is task-free
        s = entry.obj(entry.config(memory="reservoir", project_from="second_experience"), model, info)
        with pytest.raises(ConfigError, match=f"needs experience boundaries.*got scenario.boundaries='{b}'"):
            s.setup()
