"""Tests written from the mutation run of strategies/_exemplars.py (issue 19): the class-wise herding memory
shared by iCaRL, LUCIR, BiC and PODNet, on constructed features whose herding order is known by hand: the
empty memory, adding classes (herding order, ranks, old classes first), reducing to a prefix, and the
state round trip (plain tensors, moved to the memory's device)."""
from __future__ import annotations

import torch

from strategies._exemplars import ExemplarMemory

# class 5: features at angles 0, 90, 45 degrees (normalised); their mean points at 45 degrees, so herding takes
# sample 2 (45) first, then 0 and 1 in argmin order (a tie: 0 first); class 3: one feature far from the other two
F5 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
F3 = torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 0.0]])


def _memory():
    """x holds the sample's position so that every selection can be read off it."""
    mem = ExemplarMemory(torch.device("cpu"))
    x = torch.arange(6.0)[:, None] * 10  # 0, 10, .., 50
    y = torch.tensor([5, 3, 5, 3, 5, 3])
    feats = torch.empty(6, 2)
    feats[y == 5], feats[y == 3] = F5, F3
    return mem, x, y, feats


def test_an_empty_memory_has_no_samples_no_classes_and_plain_none_state():
    mem = ExemplarMemory(torch.device("cpu"))
    assert len(mem) == 0 and mem.classes() == []
    mem.reduce(0)  # nothing to reduce: no error, still empty
    assert len(mem) == 0 and mem.x is None and mem.y is None and mem.rank is None
    assert mem.state_dict() == {"x": None, "y": None, "rank": None}
    mem.load_state_dict(mem.state_dict())
    assert len(mem) == 0 and mem.classes() == []


def test_add_herds_each_class_in_priority_order_with_ranks():
    mem, x, y, feats = _memory()
    mem.add(x, y, feats, 2)
    # classes in y.unique() order (3 then 5); class 3 (rows 1, 3, 5): mean of its normalised features, the
    # first pick is the one closest to it (row 1: feature (1, .1), distance .42 against .50 and .92), then the
    # one that brings the running mean closest (row 3: (0, 1), .25 against .46 for (1, 0)); class 5 (rows 0, 2,
    # 4): row 4 (45 degrees) first, then row 0
    assert mem.x.flatten().tolist() == [10.0, 30.0, 40.0, 0.0]
    assert mem.y.tolist() == [3, 3, 5, 5]
    assert mem.rank.tolist() == [0, 1, 0, 1]
    assert len(mem) == 4 and mem.classes() == [3, 5]


def test_a_budget_larger_than_the_class_keeps_every_sample():
    mem, x, y, feats = _memory()
    mem.add(x[y == 5], y[y == 5], feats[y == 5], 10)
    assert mem.x.flatten().tolist() == [40.0, 0.0, 20.0] and mem.rank.tolist() == [0, 1, 2]


def test_later_classes_follow_the_old_ones_and_reduce_keeps_each_classes_prefix():
    mem, x, y, feats = _memory()
    mem.add(x[y == 5], y[y == 5], feats[y == 5], 3)
    new_x = torch.tensor([[100.0], [200.0], [300.0], [400.0]])
    new_y = torch.tensor([7, 7, 1, 1])
    mem.add(new_x, new_y, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.2]]), 2)
    # old samples first, then the new classes in label order (1, then 7)
    assert mem.y.tolist() == [5, 5, 5, 1, 1, 7, 7]
    assert mem.x.flatten().tolist()[:3] == [40.0, 0.0, 20.0]
    assert sorted(mem.x.flatten().tolist()[3:5]) == [300.0, 400.0]
    assert mem.rank.tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert mem.classes() == [1, 5, 7] and len(mem) == 7
    mem.reduce(2)  # the first 2 of each class in herding order
    assert mem.y.tolist() == [5, 5, 1, 1, 7, 7] and mem.x.flatten().tolist()[:2] == [40.0, 0.0]
    assert mem.rank.tolist() == [0, 1, 0, 1, 0, 1]
    mem.reduce(1)
    assert mem.y.tolist() == [5, 1, 7] and mem.x.flatten().tolist()[0] == 40.0 and mem.rank.tolist() == [0, 0, 0]
    mem.reduce(1)  # already at the budget: unchanged
    assert mem.y.tolist() == [5, 1, 7]


def test_state_round_trip_is_plain_cpu_tensors_restored_on_the_memorys_device():
    mem, x, y, feats = _memory()
    mem.add(x, y, feats, 2)
    s = mem.state_dict()
    assert set(s) == {"x", "y", "rank"} and all(type(v) is torch.Tensor and v.device.type == "cpu" for v in s.values())
    other = ExemplarMemory(torch.device("meta"))
    other.load_state_dict(s)
    assert other.x.device.type == other.y.device.type == other.rank.device.type == "meta"
    back = ExemplarMemory(torch.device("cpu"))
    back.load_state_dict(s)
    assert torch.equal(back.x, mem.x) and torch.equal(back.y, mem.y) and torch.equal(back.rank, mem.rank)
    back.load_state_dict({"x": None, "y": None, "rank": None})  # an empty memory's state empties it
    assert len(back) == 0 and back.x is None and back.rank is None


def test_the_memory_holds_no_autograd_graph_of_what_it_was_given():
    """Samples that require grad (a transformed input, say) are stored detached: the memory keeps no graph."""
    mem, x, y, feats = _memory()
    x = (x * 1.0).requires_grad_(True)
    mem.add(x * 2, y, feats.requires_grad_(True), 2)
    assert not mem.x.requires_grad and mem.x.grad_fn is None
    assert mem.x.flatten().tolist() == [20.0, 60.0, 80.0, 0.0]
