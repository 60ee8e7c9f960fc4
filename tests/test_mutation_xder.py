"""Tests written from the mutation run of strategies/xder.py (issue 19): the defaults and their source, the
logit-update rule at a tie, the step's objective as the sum of its terms (present CE, alpha MSE, beta CE on the
past classes, future and past constraints over the samples where they are positive), the training-time update
probability 1 / count, the class-balanced memory and the checkpointed state, each on a constructed case."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.streams import Experience
from strategies.xder import XDERConfig, past_constraint, update_logits

from test_baselines_replay import build


def _exp(i, classes, y):
    return Experience(torch.zeros(len(y), 3), y, torch.zeros(1, 3), torch.zeros(1), classes, i, i)


def test_defaults_are_mammoths():
    """mammoth models/config/xder.yaml (seq-CIFAR-100, buffer 500): lr 0.03, alpha 0.3, beta 0.8, gamma 0.85;
    --constr_margin 0.3, --constr_eta 0.1; replay batch 32; the past constraint on."""
    c = XDERConfig()
    assert (c.lr, c.buffer_size, c.replay_batch_size, c.alpha, c.beta, c.gamma, c.margin, c.eta,
            c.past_constraint) == (0.03, 500, 32, 0.3, 0.8, 0.85, 0.3, 0.1, True)


def test_validation_bounds():
    build("xder", buffer_size=0, replay_batch_size=1, eta=0.0, gamma=1.0)  # the smallest / largest valid values
    build("xder", gamma=1e-3)
    for bad in ({"buffer_size": -1}, {"replay_batch_size": 0}, {"buffer_size": -1, "replay_batch_size": 0}):
        with pytest.raises(ConfigError, match="buffer_size must be >= 0 and strategy.replay_batch_size >= 1"):
            build("xder", **bad)
    for bad in ({"eta": -0.1}, {"gamma": 0.0}, {"gamma": -0.5}, {"gamma": 1.01}, {"eta": -1.0, "gamma": 2.0}):
        with pytest.raises(ConfigError, match=r"eta must be >= 0 and strategy.gamma in \(0, 1\]"):
            build("xder", **bad)


def test_update_logits_at_a_tie_copies_and_uses_each_rows_true_class():
    old = torch.tensor([[2.0, 7.0, 0.0], [1.0, 4.0, 0.0], [3.0, 0.0, 0.0]])
    new = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 8.0], [0.0, 0.0, 1.0]])
    cols = torch.tensor([False, False, True])
    out = update_logits(old, new, torch.tensor([0, 1, 0]), cols, gamma=0.5)
    # row 0: max 2 == true-class logit 2: copied unscaled; row 1: true class 1 (4), max 8 > 4: 8 * 0.5 * 4 / 8;
    # row 2: max 1 < 3: copied unscaled
    assert torch.equal(out, torch.tensor([[2.0, 7.0, 2.0], [1.0, 4.0, 2.0], [3.0, 0.0, 1.0]]))
    assert torch.equal(old[:, 2], torch.zeros(3))  # the input is not edited in place


def test_setup_and_before_experience_state():
    s = build("xder", n_classes=5, n_exp=3, buffer_size=6)
    assert torch.equal(s.class_task, torch.full((5,), -1)) and s.cur == 0 and s.mem is None
    assert s.counter is None and s.to_offer == 0 and s.pending.capacity == 6
    s.before_experience(_exp(1, [3, 1], torch.zeros(7, dtype=torch.long)))
    assert s.cur == 1 and s.to_offer == 7 and s.counter is None
    assert torch.equal(s.class_task, torch.tensor([-1, 1, -1, 1, -1]))
    assert not s.past().any()
    s.mem = {"x": torch.zeros(3, 3), "y": torch.zeros(3, dtype=torch.long), "logits": torch.zeros(3, 5)}
    s.class_task[:] = torch.tensor([0, 1, 2, 1, -1])
    s.before_experience(_exp(2, [2], torch.zeros(2, dtype=torch.long)))
    assert torch.equal(s.counter, torch.zeros(3)) and s.to_offer == 2
    assert torch.equal(s.past(), torch.tensor([True, True, False, True, False]))  # earlier, seen, not current



def test_an_experience_without_classes_marks_no_class():
    s = build("xder", n_classes=4, n_exp=2, buffer_size=4)
    s.before_experience(_exp(0, [], torch.zeros(0, dtype=torch.long)))  # an empty list indexed as floats crashed
    assert s.cur == 0 and s.to_offer == 0 and torch.equal(s.class_task, torch.full((4,), -1))

def test_first_task_loss_is_present_ce_plus_future_constraint_over_positive_samples():
    s = build("xder", n_classes=4, n_exp=2, eta=0.7, margin=0.5)
    s.before_experience(_exp(0, [0, 1], torch.zeros(1, dtype=torch.long)))
    with torch.no_grad():
        s.model.head.fc.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, -1.0]]))
        s.model.head.fc.bias.zero_()
    s.augment = lambda x: 2 * x
    x = torch.tensor([[1.0, 0, 0], [0, 0.5, 0.3], [0, 0, 2.0], [0.5, 0, 0.25]])
    y = torch.tensor([0, 1, 0, 0])
    raw = 2 * x @ s.model.head.fc.weight.T
    ce = F.cross_entropy(raw[:, :2], y)
    h = raw[:, 2:].max(1).values + 0.5 - raw[:, :2].max(1).values  # [-1.5, 0.6, 4.5, 0]: two positive
    assert (h > 0).sum() == 2 and h[3] == 0  # an exact 0 is not counted in the mean
    want = ce + 0.7 * h[h > 0].mean()
    assert torch.allclose(s.loss(x, y), want)
    s.cfg.eta = 0.0
    assert torch.allclose(s.loss(x, y), ce)


def test_loss_with_memory_is_the_sum_of_its_terms():
    """Second task, memory of task-0 samples: CE on the present classes + alpha MSE to the stored logits +
    beta CE on the past classes + eta * future constraint (incoming: present max; replayed: own task's max)
    + eta * past constraint, each constraint averaged over its positive samples."""
    torch.manual_seed(0)
    s = build("xder", n_classes=6, n_exp=3, alpha=0.3, beta=0.8, eta=0.4, margin=0.3, replay_batch_size=5)
    s.class_task[:] = torch.tensor([0, 0, 1, 1, -1, -1])
    s.cur = 1
    with torch.no_grad():
        s.model.head.fc.weight.copy_(torch.randn(6, 3))
        s.model.head.fc.bias.copy_(torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0, 0.0]))
    mem = {"x": torch.randn(4, 3), "y": torch.tensor([0, 1, 1, 0]), "logits": torch.randn(4, 6)}
    s.mem = {k: v.clone() for k, v in mem.items()}
    s.counter = torch.zeros(4)
    s.augment = lambda x: 2 * x
    x, y = torch.randn(6, 3), torch.tensor([2, 3, 2, 3, 2, 3])
    torch.manual_seed(5)
    got = s.loss(x, y)
    torch.manual_seed(5)
    i1, i2 = torch.randint(4, (5,)), torch.randint(4, (5,))
    f = s.model.head.fc
    with torch.no_grad():
        raw, o1, o2 = f(2 * x), f(2 * mem["x"][i1]), f(2 * mem["x"][i2])
    ce = F.cross_entropy(raw[:, 2:4], y - 2)
    mse = ((o1 - mem["logits"][i1]) ** 2).mean()
    ce2 = F.cross_entropy(o2[:, :2], mem["y"][i2])
    fut = torch.cat([raw[:, 4:], o1[:, 4:], o2[:, 4:]]).max(1).values + 0.3 - torch.cat(
        [raw[:, 2:4], o1[:, :2], o2[:, :2]]).max(1).values
    p = torch.softmax(raw[:, :4], 1)
    pc = (p[:, :2].max(1).values + 0.3 - p[:, 2:4].max(1).values).clamp_min(0)
    assert 0 < (fut > 0).sum() < len(fut) and 0 < (pc > 0).sum() < len(pc)  # means over positives matter
    want = ce + 0.3 * mse + 0.8 * ce2 + 0.4 * fut[fut > 0].mean() + 0.4 * pc[pc > 0].mean()
    assert torch.allclose(got, want, atol=1e-6)
    s.cfg.past_constraint = False
    s.mem, s.counter = {k: v.clone() for k, v in mem.items()}, torch.zeros(4)
    torch.manual_seed(5)
    assert torch.allclose(s.loss(x, y), want - 0.4 * pc[pc > 0].mean(), atol=1e-6)


def test_last_task_has_no_future_constraint():
    s = build("xder", n_classes=4, n_exp=2, eta=0.5, past_constraint=False)
    s.class_task[:] = torch.tensor([0, 0, 1, 1])
    s.cur = 1
    x, y = torch.randn(4, 3), torch.tensor([2, 3, 3, 2])
    raw = s.model.head.fc(x)
    assert torch.allclose(s.loss(x, y), F.cross_entropy(raw[:, 2:], y - 2))


def test_loss_revisits_each_drawn_slot_once_with_its_first_draw():
    """Duplicate draws (in either replay batch) count once, and the slot takes the outputs of its first draw
    (here the augmentation adds the draw's position, so draws of one slot differ)."""
    s = build("xder", n_classes=4, n_exp=2, replay_batch_size=6, gamma=0.85)
    s.class_task[:] = torch.tensor([0, 0, 1, 1])
    s.cur = 1
    mem = {"x": torch.randn(3, 3), "y": torch.tensor([0, 1, 0]), "logits": torch.full((3, 4), 5.0)}
    s.mem = {k: v.clone() for k, v in mem.items()}
    s.counter = torch.zeros(3)
    s.augment = lambda x: x + torch.arange(len(x), dtype=x.dtype)[:, None]
    x = torch.randn(2, 3)
    torch.manual_seed(1)
    s.loss(x, torch.tensor([2, 3]))
    torch.manual_seed(1)
    i1, i2 = torch.randint(3, (6,)), torch.randint(3, (6,))
    idx = torch.cat([i1, i2]).tolist()
    drawn = sorted(set(idx))
    want_counter = torch.zeros(3)
    want_counter[drawn] = 1
    assert torch.equal(s.counter, want_counter)  # once per slot, however many draws
    f = s.model.head.fc
    with torch.no_grad():
        outs = torch.cat([f(mem["x"][i1] + torch.arange(6.0)[:, None]), f(mem["x"][i2] + torch.arange(6.0)[:, None])])
    cols = torch.tensor([False, False, True, True])
    for j in range(3):
        if j in drawn:  # count 1: always updated, with the first draw's outputs
            first = idx.index(j)
            want = update_logits(mem["logits"][j:j + 1], outs[first:first + 1], mem["y"][j:j + 1], cols, 0.85)
            assert torch.allclose(s.mem["logits"][j], want[0])
        else:
            assert torch.equal(s.mem["logits"][j], mem["logits"][j])


def test_revisit_updates_with_probability_one_over_the_count():
    n = 2000
    s = build("xder", n_classes=4, n_exp=2, gamma=0.85)
    s.class_task[:] = torch.tensor([0, 0, 1, 1])
    s.cur = 1
    logits = torch.full((n, 4), 5.0)
    s.mem = {"x": torch.zeros(n, 3), "y": torch.zeros(n, dtype=torch.long), "logits": logits.clone()}
    s.counter = torch.full((n,), 3.0)
    outs = torch.tensor([9.0, 9.0, 10.0, 1.0]).expand(n, 4)
    idx = torch.arange(n)
    torch.manual_seed(2)
    s.revisit(idx, outs)
    torch.manual_seed(2)
    chosen = torch.rand(n) * 4 < 1  # the fourth update of each slot: probability 1 / 4
    assert torch.equal(s.counter, torch.full((n,), 4.0))
    changed = (s.mem["logits"] != logits).any(1)
    assert torch.equal(changed, chosen) and 0.2 < chosen.float().mean() < 0.3
    # current and future classes replaced, scaled by gamma * 5 / 10; the past classes kept
    assert torch.allclose(s.mem["logits"][chosen], torch.tensor([5.0, 5.0, 4.25, 0.425]))
    s.counter = torch.zeros(n)
    s.revisit(idx[:3], outs[:3])  # a slot's first update: always
    assert (s.mem["logits"][:3, 2] == 4.25).all() and torch.equal(s.counter[:4], torch.tensor([1.0, 1, 1, 0]))


def test_after_step_offers_only_the_first_pass():
    s = build("xder", n_classes=4, buffer_size=20)
    s.before_experience(_exp(0, [0, 1], torch.zeros(5, dtype=torch.long)))
    x = torch.arange(12.0).view(4, 3)
    s.after_step(x, torch.tensor([0, 1, 0, 1]))
    assert s.to_offer == 1 and s.pending.n_seen == 4
    s.after_step(x + 100, torch.tensor([1, 0, 1, 0]))
    assert s.to_offer == 0 and s.pending.n_seen == 5
    assert torch.equal(s.pending.items()["x"][4], x[0] + 100)
    s.after_step(x, torch.tensor([0, 1, 0, 1]))
    assert s.pending.n_seen == 5


def test_logits_of_is_in_eval_mode_in_chunks_and_restores_the_mode():
    s = build("xder", n_classes=4)
    s.model.backbone = nn.Dropout(0.9)
    x = torch.randn(600, 3)
    s.model.train()
    got = s.logits_of(x)
    assert s.model.training and torch.allclose(got, s.model.head.fc(x))  # no dropout: eval mode
    assert not got.requires_grad
    s.model.eval()
    s.logits_of(x[:2])
    assert not s.model.training


def test_memory_is_class_balanced_with_the_remainder_to_random_classes():
    s = build("xder", n_classes=6, n_exp=2, buffer_size=7)
    y = torch.tensor([0, 0, 0, 0, 1, 2, 2])  # class 0 comes first: the pending buffer keeps all 7
    e = _exp(0, [0, 1, 2], y)
    s.before_experience(e)
    s.after_step(torch.arange(21.0).view(7, 3), y)
    assert s.pending.class_counts() == {0: 4, 1: 1, 2: 2}
    torch.manual_seed(2)
    s.after_experience(e)
    torch.manual_seed(2)
    extra = [0, 1, 2][int(torch.randperm(3)[0])]
    assert extra == 0  # 7 // 3 = 2 slots each, the seventh to class 0, which has 4 samples: it keeps 3
    have = {0: 4, 1: 1, 2: 2}
    want = {c: min(have[c], 2 + (c == extra)) for c in range(3)}
    got = {c: int((s.mem["y"] == c).sum()) for c in range(3)}
    assert got == want
    for c in range(3):  # the first samples of each class, in stream order
        rows = (y == c).nonzero().squeeze(1)[: want[c]]
        assert torch.equal(s.mem["x"][s.mem["y"] == c], torch.arange(21.0).view(7, 3)[rows])
    assert torch.equal(s.counter, torch.zeros(len(s.mem["y"])))


def test_nothing_offered_leaves_the_memory_empty():
    s = build("xder", n_classes=4, buffer_size=4)
    e = _exp(0, [0, 1], torch.zeros(3, dtype=torch.long))
    s.before_experience(e)
    s.after_experience(e)
    assert s.mem is None and s.counter is None


def test_second_task_cuts_old_classes_and_scales_new_samples_past_logits():
    s = build("xder", n_classes=4, n_exp=2, buffer_size=4, gamma=0.5)
    y0 = torch.tensor([0, 1, 1, 0])
    e0 = _exp(0, [1, 0], y0)  # class 1 first in the memory
    s.before_experience(e0)
    x0 = torch.randn(4, 3)
    s.after_step(x0, y0)
    s.after_experience(e0)
    assert sorted(s.mem["y"].tolist()) == [0, 0, 1, 1]
    y1 = torch.tensor([2, 3, 3, 2])
    e1 = _exp(1, [2, 3], y1)
    s.before_experience(e1)
    with torch.no_grad():  # the past classes win on every sample by far
        s.model.head.fc.weight.copy_(torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0], [0, 0, -1.0]]))
        s.model.head.fc.bias.copy_(torch.tensor([20.0, 20.0, 1.0, 1.0]))
    x1 = torch.randn(4, 3)
    s.after_step(x1, y1)
    s.after_experience(e1)
    assert sorted(s.mem["y"].tolist()) == [0, 1, 2, 3]  # 4 // 4 = 1 per class
    assert torch.equal(s.mem["x"][s.mem["y"] == 0][0], x0[0]) and torch.equal(s.mem["x"][s.mem["y"] == 1][0], x0[1])
    new = s.mem["y"] >= 2
    z = s.model.head.fc(s.mem["x"][new]).detach()
    yn = s.mem["y"][new]
    gt = z[torch.arange(2), yn]
    want = z.clone()
    want[:, :2] = z[:, :2] * (0.5 * gt / z[:, :2].max(1).values)[:, None]
    assert torch.allclose(s.mem["logits"][new], want)  # past entries scaled under the true class's
    assert torch.equal(s.counter, torch.zeros(4))


def test_extra_state_round_trip():
    s = build("xder", n_classes=4, n_exp=2, buffer_size=4)
    y0 = torch.tensor([0, 1, 1])
    e0 = _exp(0, [0, 1], y0)
    s.before_experience(e0)
    s.after_step(torch.randn(3, 3), y0)
    s.after_experience(e0)
    s.before_experience(_exp(1, [2, 3], torch.tensor([2, 3])))
    s.after_step(torch.randn(2, 3), torch.tensor([2, 3]))
    s.counter[1] = 2.0
    st = s.extra_state()
    t = build("xder", n_classes=4, n_exp=2, buffer_size=4)
    t.load_extra_state(st)
    assert all(torch.equal(t.mem[k], s.mem[k]) for k in ("x", "y", "logits"))
    assert torch.equal(t.class_task, s.class_task) and t.cur == 1 and torch.equal(t.counter, s.counter)
    assert t.pending.class_counts() == {2: 1, 3: 1}
    u = build("xder", n_classes=4, n_exp=2, buffer_size=4)
    u.load_extra_state({**u.extra_state(), "counter": None})
    assert u.mem is None and u.counter is None
    st = dict(st)
    del st["pending"], st["counter"]
    v = build("xder", n_classes=4, n_exp=2, buffer_size=4)
    v.load_extra_state(st)  # an older checkpoint: no pending, no counter
    assert v.counter is None and len(v.pending) == 0


def test_one_seen_class_keeps_the_whole_memory():
    """K // n_seen with one class seen (a second experience of the same class): the old samples keep all K
    slots and no new sample is taken."""
    s = build("xder", n_classes=2, n_exp=2, buffer_size=4)
    for i in range(2):
        y = torch.zeros(4, dtype=torch.long)
        e = _exp(i, [0], y)
        s.before_experience(e)
        s.after_step(torch.full((4, 3), float(i)), y)
        s.after_experience(e)
    assert len(s.mem["y"]) == 4 and (s.mem["x"] == 0).all()
