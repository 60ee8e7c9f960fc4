"""Tests written from the mutation run of strategies/lwf.py and strategies/lwf_mc.py (issue 19): the defaults,
LwF's distillation at another temperature and weight on the augmented batch, the seen and old classes the
shared base keeps (and re-reads after each boundary), the state a checkpoint restores, the refusal of a
task-free stream, and LwF.MC's iCaRL BCE on hand-built logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from strategies.lwf import LwFConfig
from strategies.lwf_mc import icarl_bce

from test_baselines_reg import X, Y, exp_of, make

pytestmark = pytest.mark.usefixtures("restore_registry")


def test_lwf_defaults_are_the_papers():
    c = LwFConfig()
    assert (c.alpha, c.temperature) == (1.0, 2.0)


def _hand_kd(student, teacher, T):
    p_t, logp_s = torch.softmax(teacher / T, 1), torch.log_softmax(student / T, 1)
    return (p_t * (p_t.log() - logp_s)).sum(1).mean()


def test_lwf_loss_is_ce_plus_alpha_kd_at_temperature_on_the_augmented_batch():
    s = make("lwf", seen=[0, 1], alpha=0.5, temperature=3.0)
    y = torch.tensor([2, 2, 0, 1])
    assert s.loss(X, y).item() == pytest.approx(F.cross_entropy(s.model(X), y).item(), abs=1e-6)  # no teacher yet
    s.before_experience(exp_of(X, Y.clamp(max=1)))
    s.after_experience(exp_of(X, Y.clamp(max=1)))
    s.model.head.observe(torch.tensor([2]))
    s.augment = lambda v: v * 2 - 1
    xa = X * 2 - 1
    old = s.model(xa).detach()[:, :2]
    with torch.no_grad():
        s.model.head.fc.weight[1].add_(torch.tensor([0.5, -0.4]))
    new = s.model(xa)
    want = F.cross_entropy(new, y) + 0.5 * _hand_kd(new[:, :2], old, 3.0)
    assert _hand_kd(new[:, :2], old, 3.0).item() > 1e-3
    assert s.loss(X, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_seen_and_old_classes_follow_the_boundaries():
    s = make("lwf", n_classes=5, seen=[1, 3])
    assert s.old_classes == [] and not s.teacher
    s.before_experience(exp_of(X, torch.tensor([3, 1, 3, 1])))
    assert s.seen_classes == [1, 3] and s.seen_idx().tolist() == [1, 3]
    s.after_experience(None)
    assert s.old_classes == [1, 3] and s.old_idx().tolist() == [1, 3]
    s.before_experience(exp_of(X, torch.tensor([0, 4, 0, 4]), index=1))
    assert s.seen_classes == [0, 1, 3, 4] and s.seen_idx().tolist() == [0, 1, 3, 4]  # not the cached [1, 3]
    s.model.head.observe(torch.tensor([0, 4]))
    s.after_experience(None)
    assert s.old_idx().tolist() == [0, 1, 3, 4]  # re-read after the boundary
    s.before_experience(exp_of(X, torch.tensor([1, 2, 1, 2]), index=2))  # an old class comes back with a new one
    assert s.seen_classes == [0, 1, 2, 3, 4]


def test_lwf_state_restores_the_teacher_and_the_old_classes():
    s = make("lwf", seen=[0, 1])
    s.before_experience(exp_of(X, Y.clamp(max=1)))
    s.after_experience(None)
    s.model.head.observe(torch.tensor([2]))
    with torch.no_grad():
        s.model.head.fc.weight.add_(0.3)
    y = torch.tensor([2, 2, 0, 1])
    want = s.loss(X, y).item()
    t = make("lwf", seen=[0, 1, 2])
    t.old_idx()  # a cached index of the fresh strategy, which loading must drop
    t.model.load_state_dict(s.model.state_dict())
    t.load_extra_state(s.extra_state())
    assert t.old_classes == [0, 1] and t.old_idx().tolist() == [0, 1]
    assert torch.equal(t.teacher(X), s.teacher(X))
    assert t.loss(X, y).item() == pytest.approx(want)


@pytest.mark.parametrize("name", ["lwf", "lwf-mc"])
def test_a_task_free_stream_is_refused_naming_scenario_boundaries(name):
    from cl.core.registry import strategies
    from cl.core.strategy import RunInfo

    s = make(name)
    cls = strategies.get(name)
    info = RunInfo(n_classes=3, input_shape=(2,), device=torch.device("cpu"), seed=0, boundaries="hidden")
    t = cls.obj(cls.config(), s.model, info)
    with pytest.raises(ConfigError, match=r"scenario.boundaries='hidden'.*valid choice: scenario.boundaries=visible"):
        t.setup()


def test_icarl_bce_targets_one_hot_new_and_teacher_sigmoid_old():
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.3, -0.7, 1.0]])
    y = torch.tensor([3, 0])
    seen, old = torch.tensor([0, 1, 3]), torch.tensor([1])
    teacher = torch.tensor([[2.0, -0.5, float("-inf"), float("-inf")], [0.1, 1.2, float("-inf"), float("-inf")]])
    zs = z[:, [0, 1, 3]]
    target = torch.tensor([[0.0, torch.sigmoid(torch.tensor(-0.5)).item(), 1.0],
                           [1.0, torch.sigmoid(torch.tensor(1.2)).item(), 0.0]])
    want = -(target * torch.sigmoid(zs).log() + (1 - target) * (1 - torch.sigmoid(zs)).log()).mean()
    assert icarl_bce(z, y, teacher, seen, old).item() == pytest.approx(want.item(), rel=1e-5)
    onehot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    want0 = -(onehot * torch.sigmoid(zs).log() + (1 - onehot) * (1 - torch.sigmoid(zs)).log()).mean()
    assert icarl_bce(z, y, None, seen, old[:0]).item() == pytest.approx(want0.item(), rel=1e-5)
    assert icarl_bce(z, y, None, seen, old).item() == pytest.approx(want0.item(), rel=1e-5)  # no teacher: one-hot
    assert icarl_bce(z, y, teacher, seen, old[:0]).item() == pytest.approx(want0.item(), rel=1e-5)  # no old class


def test_lwf_mc_before_its_first_boundary_is_plain_bce_over_the_seen_classes():
    s = make("lwf-mc", seen=[0, 1])
    s.before_experience(exp_of(X, Y.clamp(max=1)))
    y = Y.clamp(max=1)
    z = s.model(X)[:, :2]
    onehot = F.one_hot(y, 2).float()
    want = -(onehot * torch.sigmoid(z).log() + (1 - onehot) * (1 - torch.sigmoid(z)).log()).mean()
    assert s.loss(X, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_lwf_validation_bounds():
    make("lwf", alpha=0.0, temperature=1e-6)  # the bounds: alpha = 0 is valid, T must be positive
    for bad in ({"alpha": -1e-6}, {"temperature": 0.0}, {"temperature": -2.0}, {"alpha": -1.0, "temperature": 0.0}):
        with pytest.raises(ConfigError, match=r"lwf: alpha must be >= 0 and temperature > 0, got .*"
                                              + str(list(bad.values())[-1])):
            make("lwf", **bad)
