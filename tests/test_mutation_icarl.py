"""Tests written from the mutation run of strategies/icarl.py (issue 19): the paper's defaults, the budget bound,
the loss (one-hot BCE before the first boundary; teacher sigmoid targets on the old classes after it, on the
augmented batch), the training set (data, then every exemplar), the total budget K // n_seen per class, a class
coming back, classification (network outputs before the first boundary or with nme off, NME after) and the state
a checkpoint restores."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.models.herding import class_means, herding, nme_logits
from strategies.icarl import ICaRLConfig

from test_baselines_reg import X, exp_of, make

pytestmark = pytest.mark.usefixtures("restore_registry")


def _bce(z, target):
    return -(target * torch.sigmoid(z).log() + (1 - target) * (1 - torch.sigmoid(z)).log()).mean()


def test_icarl_defaults_are_the_papers():
    c = ICaRLConfig()
    assert (c.buffer_size, c.weight_decay, c.nme) == (2000, 1e-5, True)


def test_icarl_buffer_size_must_be_positive():
    make("icarl", buffer_size=1)  # the bound itself is valid
    for bad in (0, -3):
        with pytest.raises(ConfigError, match=rf"icarl: buffer_size must be >= 1, got {bad}"):
            make("icarl", buffer_size=bad)


def test_icarl_loss_is_one_hot_bce_then_teacher_targets_on_old_classes_of_the_augmented_batch():
    s = make("icarl", seen=[0, 1], buffer_size=4)
    y0 = torch.tensor([0, 1, 1, 0])
    e0 = exp_of(X, y0)
    s.before_experience(e0)
    z = s.model(X)[:, :2]
    assert s.loss(X, y0).item() == pytest.approx(_bce(z, F.one_hot(y0, 2).float()).item(), rel=1e-5)
    s.after_experience(e0)
    s.model.head.observe(torch.tensor([2]))
    y1 = torch.tensor([2, 2, 0, 1])
    s.before_experience(exp_of(X, y1, classes=[2], index=1))
    s.augment = lambda v: v * 2 - 1
    xa = X * 2 - 1
    old = s.model(xa).detach()[:, :2]
    with torch.no_grad():
        s.model.head.fc.weight[1].add_(torch.tensor([0.5, -0.4]))
    new = s.model(xa)
    target = torch.stack([torch.sigmoid(old[:, 0]), torch.sigmoid(old[:, 1]), (y1 == 2).float()], 1)
    assert not torch.allclose(target[:, :2], F.one_hot(y1, 3).float()[:, :2])
    assert s.loss(X, y1).item() == pytest.approx(_bce(new, target).item(), rel=1e-5)


def test_icarl_trains_on_the_data_then_every_exemplar():
    s = make("icarl", seen=[0, 1], buffer_size=4)
    x0 = torch.tensor([[0.0, 1], [2.0, 1], [1.0, -3], [1.0, -1]])
    y0 = torch.tensor([0, 0, 1, 1])
    e0 = exp_of(x0, y0)
    s.before_experience(e0)
    tx, ty = s.train_data(e0)
    assert torch.equal(tx, x0) and torch.equal(ty, y0)  # no memory yet: the data alone
    s.after_experience(e0)
    e1 = exp_of(X[:2], torch.tensor([2, 2]), index=1)
    s.before_experience(e1)
    tx, ty = s.train_data(e1)
    assert torch.equal(tx, torch.cat([X[:2], s.memory.x])) and torch.equal(ty, torch.cat([e1.train_y, s.memory.y]))


def test_icarl_budget_is_k_over_the_seen_classes_and_a_returning_class_is_not_reherded():
    s = make("icarl", seen=[0], buffer_size=3)
    x = torch.tensor([[0.0, 1], [2.0, 1], [-2.0, 1], [0.5, 1], [10.0, 1]])
    y = torch.zeros(5, dtype=torch.long)
    e = exp_of(x, y)
    s.before_experience(e)
    s.after_experience(e)
    assert torch.equal(s.memory.x, x[herding(x, 3)])  # one class seen: all K = 3 slots
    s.model.head.observe(torch.tensor([1]))
    x2 = torch.tensor([[1.0, -3], [1.0, -1], [1.0, -2], [3.0, 0.5], [-1.0, -1]])
    y2 = torch.tensor([1, 1, 0, 0, 1])  # class 0 comes back with new samples
    e2 = exp_of(x2, y2, index=1)
    s.before_experience(e2)
    s.after_experience(e2)  # 3 // 2 = 1 per class
    assert torch.equal(s.memory.x[s.memory.y == 0], x[herding(x, 3)][:1])  # cut, not re-herded on the new samples
    i1 = (y2 == 1).nonzero().flatten()
    assert torch.equal(s.memory.x[s.memory.y == 1], x2[i1[herding(x2[i1], 1)]])


def test_icarl_classifies_by_the_network_until_the_first_boundary_or_with_nme_off():
    q = torch.tensor([[-1.5, -1.2], [0.4, 0.9]])
    for nme in (True, False):
        s = make("icarl", seen=[0, 1], buffer_size=4, nme=nme)
        assert torch.equal(s.predict(q), s.model(q))
        x0 = torch.tensor([[0.0, 1], [2.0, 1], [1.0, -3], [1.0, -1]])
        e0 = exp_of(x0, torch.tensor([0, 0, 1, 1]))
        s.before_experience(e0)
        s.after_experience(e0)
        want = nme_logits(q, class_means(s.memory.x, s.memory.y, 3)) if nme else s.model(q)
        assert not torch.allclose(nme_logits(q, class_means(s.memory.x, s.memory.y, 3)).clamp_min(-9),
                                  s.model(q).clamp_min(-9))
        assert torch.equal(s.predict(q), want)


def test_icarl_state_restores_memory_means_and_teacher():
    s = make("icarl", seen=[0, 1], buffer_size=4)
    fresh = make("icarl", seen=[0, 1], buffer_size=4)
    st = fresh.extra_state()
    assert st["means"] is None and st["memory"]["y"] is None
    x0 = torch.tensor([[0.0, 1], [2.0, 1], [1.0, -3], [1.0, -1]])
    e0 = exp_of(x0, torch.tensor([0, 0, 1, 1]))
    s.before_experience(e0)
    s.after_experience(e0)
    t = make("icarl", seen=[0, 1], buffer_size=4)
    t.load_extra_state(s.extra_state())
    assert torch.equal(t.memory.x, s.memory.x) and torch.equal(t.memory.y, s.memory.y)
    assert torch.equal(t.means.nan_to_num(), s.means.nan_to_num()) and t.old_classes == [0, 1]
    q = torch.tensor([[-1.5, -1.2], [0.4, 0.9]])
    assert torch.equal(t.predict(q), s.predict(q))
    u = make("icarl", seen=[0, 1], buffer_size=4)
    u.means = torch.zeros(3, 2)
    u.load_extra_state(st)  # a state from before the first boundary: no means, the network classifies
    assert u.means is None and torch.equal(u.predict(q), u.model(q))
