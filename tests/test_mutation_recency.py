"""Tests written from the mutation run of strategies/recency.py (issue 19): the decayed label counts by
hand (decay before the batch's counts are added), the scores (log counts, ties to the lowest class, -inf for a
class never seen, uniform before any label), the frozen backbone and the inert optimiser."""
from __future__ import annotations

import math

import pytest
import torch

from strategies.recency import Recency, RecencyConfig, RecencyModel

from test_strategies_er_family import make


def test_defaults_and_flags():
    assert RecencyConfig().decay == 0.9
    assert Recency.frozen_features is True
    m = RecencyModel(torch.nn.Identity(), 4)
    assert m.counts.dtype == torch.float64 and torch.equal(m.counts, torch.zeros(4, dtype=torch.float64))
    assert m.seen.dtype == torch.bool and not m.seen.any()
    assert {"counts", "seen"} <= set(m.state_dict())  # checkpointed with the model


def test_counts_decay_then_add_the_batch_and_scores_are_log_counts():
    s, _ = make("recency", backbone="identity", decay=0.5)
    s.train_step(torch.zeros(4, 16), torch.tensor([3, 3, 3, 1]))
    assert s.model.counts.tolist() == [0, 1, 0, 3, 0, 0, 0, 0, 0, 0]
    s.train_step(torch.zeros(4, 16), torch.tensor([5, 5, 5, 5]))
    assert s.model.counts.tolist() == [0, 0.5, 0, 1.5, 0, 4, 0, 0, 0, 0]
    assert s.model.seen.tolist() == [c in (1, 3, 5) for c in range(10)]
    out = s.model(torch.zeros(3, 16))
    assert out.shape == (3, 10) and torch.equal(out[0], out[2])
    expect = [math.log(c) - 1e-6 * i if c else -math.inf for i, c in enumerate([0, 0.5, 0, 1.5, 0, 4, 0, 0, 0, 0])]
    assert torch.allclose(out[0], torch.tensor(expect), atol=1e-7)
    assert out[0].argmax().item() == 5
    s.train_step(torch.zeros(2, 16), torch.tensor([3, 3]))  # 1.5 * 0.5 + 2 = 2.75 > 4 * 0.5 = 2
    assert s.model(torch.zeros(1, 16)).argmax(1).tolist() == [3]


def test_ties_go_to_the_lowest_class_and_before_any_label_scores_are_uniform():
    s, _ = make("recency", backbone="identity")
    before = s.model(torch.zeros(2, 16))
    assert torch.equal(before, torch.zeros(2, 10))
    s.train_step(torch.zeros(4, 16), torch.tensor([7, 2, 7, 2]))
    assert s.model(torch.zeros(1, 16)).argmax(1).tolist() == [2]
    s.train_step(torch.zeros(1, 16), torch.tensor([9]))
    assert s.model.counts[[2, 7, 9]].tolist() == [0.9 * 2, 0.9 * 2, 1.0]
    zero, _ = make("recency", backbone="identity", decay=0.0)  # the previous batch's majority only
    zero.train_step(torch.zeros(3, 16), torch.tensor([1, 1, 1]))
    zero.train_step(torch.zeros(3, 16), torch.tensor([4, 4, 6]))
    assert zero.model.counts.tolist() == [0, 0, 0, 0, 2, 0, 1, 0, 0, 0]


def test_nothing_is_learned_from_the_input():
    s, _ = make("recency")  # an MLP backbone
    assert not any(p.requires_grad for p in s.model.backbone.parameters())
    (group,) = s.optimizer.param_groups
    assert type(s.optimizer) is torch.optim.SGD and group["lr"] == 0.0 and group["params"][0].shape == ()
    loss = s.train_step(torch.randn(2, 16), torch.tensor([0, 1]))
    assert loss.shape == () and loss.item() == 0.0 and not loss.requires_grad
    x = torch.randn(4, 16)
    assert torch.equal(s.model(x), s.model(torch.randn(4, 16)))  # the input is ignored


def test_class_zero_is_predicted_when_it_is_the_most_frequent():
    s, _ = make("recency", backbone="identity")
    s.train_step(torch.zeros(6, 16), torch.tensor([0, 0, 0, 0, 0, 3]))
    out = s.model(torch.zeros(1, 16))[0]
    assert out.argmax().item() == 0
    assert out[0].item() == pytest.approx(math.log(5.0), rel=1e-7)
    assert out[3].item() == pytest.approx(-3e-6, rel=1e-6)  # log 1 - 1e-6 * 3
