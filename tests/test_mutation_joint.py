"""Tests written from the mutation run of strategies/joint.py (issue 19): the union of every experience's
data in order, and ``reset``: the model back at its initial weights (the seen classes kept) with a fresh
optimiser before each experience, or left alone by default."""
from __future__ import annotations

import torch

from cl.core.streams import Experience
from strategies.joint import Joint, JointConfig

from test_strategies_er_family import make


def _exp(lo, n=3):
    x, y = torch.arange(lo, lo + n, dtype=torch.float32)[:, None].repeat(1, 16), torch.arange(lo, lo + n) % 10
    return Experience(x, y, x, y, sorted(set(y.tolist())), 0, 0)


def test_defaults():
    assert JointConfig().reset is False and Joint.state_attrs == ("seen_x", "seen_y")


def test_train_data_is_the_union_of_every_experience_so_far():
    s, _ = make("joint")
    assert s._init is None and (s.seen_x, s.seen_y) == ([], [])
    x, y = s.train_data(_exp(0))
    assert torch.equal(y, torch.tensor([0, 1, 2])) and torch.equal(x, _exp(0).train_x)
    x, y = s.train_data(_exp(3, 2))
    assert torch.equal(y, torch.tensor([0, 1, 2, 3, 4])) and torch.equal(x[:, 0], torch.arange(5.0))
    assert len(s.seen_x) == len(s.seen_y) == 2


def _train(s, lo):
    x, y = s.train_data(_exp(lo))
    for _ in range(3):
        s.train_step(x, y)


def test_without_reset_the_model_and_the_optimiser_carry_on():
    s, _ = make("joint", optimizer="adam", lr=0.01)
    _train(s, 0)
    w, opt = {k: v.clone() for k, v in s.model.state_dict().items()}, s.optimizer
    s.train_data(_exp(3))
    assert s.optimizer is opt and opt.state
    assert all(torch.equal(v, s.model.state_dict()[k]) for k, v in w.items())


def test_reset_restores_the_initial_weights_keeps_the_seen_classes_and_a_fresh_optimiser():
    s, _ = make("joint", reset=True, optimizer="adam", lr=0.01)
    init = {k: v.clone() for k, v in s.model.state_dict().items()}
    assert all(torch.equal(v, s._init[k]) for k, v in init.items())
    _train(s, 0)
    trained = s.model.state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in init if k != "head.seen")
    opt = s.optimizer
    s.train_data(_exp(3))
    now = s.model.state_dict()
    for k, v in init.items():
        if k != "head.seen":
            assert torch.equal(now[k], v), k
    assert now["head.seen"].tolist() == [c < 3 for c in range(10)]  # classes 0..2 were seen, not forgotten
    assert s.optimizer is not opt and not s.optimizer.state
    assert {id(p) for g in s.optimizer.param_groups for p in g["params"]} == {id(p) for p in s.model.parameters()}
    assert all(torch.equal(v, s._init[k]) for k, v in init.items())  # the stored init is a copy, not the live weights
