"""Tests written from the mutation run of strategies/_task_il.py (issue 19): the task-incremental base of PNN,
PackNet, HAT, RMN and HNET, on a stand-in strategy whose task-conditioned logits are a plain linear map: the
state after setup, what a boundary sets (task index, class mask, a fresh optimiser), the training loss as the
cross-entropy over the task's classes only (with the run's augmentation) and prediction with the task id."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo, StrategyConfig
from cl.core.streams import Experience
from strategies._task_il import TaskILStrategy


class Lin(TaskILStrategy):
    """Task t's logits: W x + t (so the task id visibly reaches them)."""

    name = "test-mut-task-il"

    def logits(self, x, t):
        self.seen_t = t
        return self.model(x) + float(t)


class Net(nn.Linear):
    def observe(self, y):
        pass


def _make(setting="task", n_classes=4, **cfg):
    torch.manual_seed(0)
    model = Net(2, n_classes, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])[:n_classes])
    info = RunInfo(n_classes=n_classes, input_shape=(2,), device=torch.device("cpu"), seed=0, setting=setting)
    s = Lin(StrategyConfig(**cfg), model, info)
    s.setup()
    return s


def _exp(classes, task_id):
    return Experience(torch.zeros(2, 2), torch.tensor(classes[:1] * 2), torch.zeros(1, 2), torch.zeros(1),
                      list(classes), task_id, task_id)


def test_setup_refuses_a_run_without_task_ids_and_starts_at_task_0_with_every_class():
    with pytest.raises(ConfigError, match="needs task ids.*setting='class'.*scenario.setting=task"):
        _make(setting="class")
    s = _make()
    assert s.task == 0 and s.task_mask.dtype == torch.bool and s.task_mask.tolist() == [True] * 4


def test_a_boundary_sets_the_task_its_classes_and_a_fresh_optimiser():
    s = _make(momentum=0.9)
    s.before_experience(_exp([2, 3], 1))
    assert s.task == 1 and s.task_mask.tolist() == [False, False, True, True]
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([3])
    opt = s.optimizer
    s.train_step(x, y, 1)
    assert opt.state  # momentum buffers exist now
    s.before_experience(_exp([0, 1], 0))
    assert s.optimizer is not opt and not s.optimizer.state and s.task == 0
    assert s.task_mask.tolist() == [True, True, False, False]
    assert s.optimizer.param_groups[0]["momentum"] == 0.9


def test_loss_is_cross_entropy_over_the_tasks_classes_of_the_augmented_batch():
    s = _make()
    s.before_experience(_exp([2, 3], 1))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([3])
    # logits W x + 1 = [2, 3, 4, 4]; over classes 2 and 3 only: CE = log(e^4 + e^4) - 4 = log 2
    assert math.isclose(s.loss(x, y, 1).item(), math.log(2.0), rel_tol=1e-6)
    assert s.seen_t == 1 and isinstance(s.seen_t, int)
    assert math.isclose(s.loss(x, y, torch.tensor([1, 1])).item(), math.log(2.0), rel_tol=1e-6)  # a tensor of ids
    s.augment = lambda v: v * torch.tensor([1.0, 0.0])  # x -> [1, 0]: logits [2, 1, 2, 0] + 1
    want = math.log(math.exp(3.0) + math.exp(1.0)) - 1.0
    assert math.isclose(s.loss(x, y, 1).item(), want, rel_tol=1e-6)
    # the loss of a half-precision forward is computed in float32
    s.augment = None
    s.model.half()
    assert s.loss(x.half(), y, 1).dtype == torch.float32


def test_predict_runs_the_task_conditioned_logits_with_the_task_id_unmasked():
    s = _make()
    s.before_experience(_exp([2, 3], 1))
    x = torch.tensor([[1.0, 2.0]])
    assert s.predict(x, 0).tolist() == [[1.0, 2.0, 3.0, 3.0]]
    assert s.predict(x, torch.tensor(1)).tolist() == [[2.0, 3.0, 4.0, 4.0]] and s.seen_t == 1
    with pytest.raises(ConfigError, match="needs task ids"):
        s.predict(x, None)


class _Scenario:
    """What the isolation strategies' build_model reads of a scenario."""

    def __init__(self, n_tasks, n_classes, experiences=()):
        from cl.core.streams import default_preprocess

        self.n_tasks, self.n_classes, self.experiences = n_tasks, n_classes, list(experiences)
        self.preprocess_fn = lambda device: default_preprocess

    def __len__(self):
        return self.n_tasks


def build_iso(name, backbone=None, n_tasks=2, n_classes=4, input_shape=(3,), experiences=(), **cfg):
    """A task-incremental strategy ``name`` on ``backbone`` (default: an MLP 3 -> 4 -> 4), built as the engine
    builds it, without a scenario's data."""
    import importlib

    from cl.core.registry import strategies
    from cl.models.backbones.small import MLP, MLPConfig

    importlib.import_module("strategies." + name.replace("-", "_").replace("_rnn", ""))
    entry = strategies.get(name)
    torch.manual_seed(0)
    bb = backbone if backbone is not None else MLP(MLPConfig(hidden=4, layers=2), input_shape)
    c = entry.config(**cfg)
    model = entry.obj.build_model(c, bb, _Scenario(n_tasks, n_classes, experiences))
    info = RunInfo(n_classes=n_classes, input_shape=input_shape, device=torch.device("cpu"), seed=0, setting="task",
                   n_experiences=n_tasks)
    s = entry.obj(c, model, info)
    s.setup()
    return s


def exp_of(x, y, classes, task):
    return Experience(x, y, x, y, list(classes), task, task)


def assert_batchnorm_trained_on_the_first_task_only(s, bn, x):
    """One step of task 0 moves ``bn``'s statistics and gives its affine parameters a gradient; one step of task 1
    changes neither (eval-mode statistics, no gradient), while the model itself stays in training mode."""
    y = torch.tensor([0, 1, 0, 1])
    e0 = exp_of(x, y, [0, 1], 0)
    stats = bn.running_mean.clone()
    s.before_experience(e0)
    s.train_step(x, y, 0)
    assert not torch.equal(bn.running_mean, stats) and bn.weight.grad is not None
    s.after_experience(e0)
    stats, w = bn.running_mean.clone(), bn.weight.detach().clone()
    s.before_experience(exp_of(x, y + 2, [2, 3], 1))
    s.train_step(x, y + 2, 1)
    assert torch.equal(bn.running_mean, stats) and torch.equal(bn.weight, w) and bn.weight.grad is None
    assert s.model.training and not bn.training


def test_class_mask_is_true_on_the_classes_and_takes_an_empty_list():
    from cl.models.multihead import class_mask

    assert class_mask([3, 1], 5, torch.device("cpu")).tolist() == [False, True, False, True, False]
    assert class_mask((), 3, torch.device("cpu")).tolist() == [False, False, False]  # no float index tensor
