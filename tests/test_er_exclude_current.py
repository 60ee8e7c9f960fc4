"""ER's ``exclude_current`` (the ER of MIR's official code): the replay batch holds distinct samples of past
experiences only, none during the first experience; it needs visible boundaries, turns the CUDA-graph path
off for the instance, is refused by a subclass whose replay does not go through ER's draw, and saves the
experience index. At its default (false) the run ids of older configs are unchanged (test_evaluate_text)."""
from __future__ import annotations

import math

import pytest
import torch

from cl.core.registry import ConfigError
from cl.train.graphs import is_graph_safe
from strategies.er import ER, ERConfig
from strategies.er_ace import ERACE, ERACEConfig

from test_ocl1 import E1, E2, make


def er(**kw):
    s = make(ER, ERConfig, **kw)
    s.model.observe(torch.tensor([0, 1]))  # both classes seen: a zero head gives CE = log 2 on any batch
    return s


def exp(i):
    return type("E", (), {"index": i})()


def test_no_replay_in_the_first_experience_and_only_past_samples_after_it():
    s = er(exclude_current=True, buffer_size=20, replay_batch_size=3)
    plain = er(buffer_size=20, replay_batch_size=3)
    s.before_experience(exp(0))
    for strat in (s, plain):
        strat.after_step(torch.stack([E1, 2 * E1, 3 * E1, 4 * E1]), torch.tensor([0, 0, 0, 0]))
    x, y = torch.stack([E2]), torch.tensor([1])
    assert float(s.loss(x, y)) == pytest.approx(math.log(2))  # the stored samples are the current experience's
    assert float(plain.loss(x, y)) == pytest.approx(2 * math.log(2))
    assert s.draw(3) == {} and s.buffer.items()["e"].tolist() == [0, 0, 0, 0]
    assert set(plain.buffer.items()) == {"x", "y"}  # no experience index stored without exclude_current
    s.before_experience(exp(1))
    assert s.exp_index == 1
    s.after_step(torch.stack([9 * E2, 8 * E2]), torch.tensor([1, 1]))
    assert s.buffer.items()["e"].tolist() == [0, 0, 0, 0, 1, 1]
    for _ in range(20):
        d = s.draw(3)
        xs = d["x"][:, 0].tolist()
        assert len(xs) == 3 and len(set(xs)) == 3 and set(xs) <= {1.0, 2.0, 3.0, 4.0} and d["e"].tolist() == [0] * 3
    assert sorted(s.draw(10)["x"][:, 0].tolist()) == [1.0, 2.0, 3.0, 4.0]  # fewer past samples than asked: all
    assert float(s.loss(x, y)) == pytest.approx(2 * math.log(2))


def test_the_step_trains_on_the_incoming_batch_alone_in_the_first_experience():
    """Zero head, lr 1: in experience 0 the update is the incoming batch's gradient only; plain ER adds the
    stored class-1 sample's, which has the opposite sign along e1."""
    s = er(exclude_current=True, buffer_size=10, replay_batch_size=1, lr=1.0)
    plain = er(buffer_size=10, replay_batch_size=1, lr=1.0)
    s.before_experience(exp(0))
    for strat in (s, plain):
        strat.after_step(torch.stack([E1]), torch.tensor([1]))
        strat.train_step(torch.stack([E1]), torch.tensor([0]))
    # CE gradient at a zero head: (softmax - onehot) x^T: incoming class 0 at e1 gives [[-1/2], [1/2]] e1
    want = -torch.tensor([[-0.5, 0.0], [0.5, 0.0]])
    assert torch.allclose(s.model.head.fc.weight.detach(), want, atol=1e-6)
    assert torch.allclose(plain.model.head.fc.weight.detach(), torch.zeros(2, 2), atol=1e-6)  # cancelled


def test_boundaries_graphs_and_subclasses():
    with pytest.raises(ConfigError, match=r"strategy.exclude_current=true needs experience boundaries, got "
                                          r"scenario.boundaries='hidden' \(valid: visible"):
        er(exclude_current=True, boundaries="hidden")
    assert er(boundaries="hidden").exp_index == 0
    with pytest.raises(ConfigError, match=r"exclude_current=true is not supported by ERACE.*valid: strategies er, mir"):
        make(ERACE, ERACEConfig, exclude_current=True)
    assert not is_graph_safe(er(exclude_current=True)) and is_graph_safe(er())
    assert ER.graph_safe  # the class's declaration is untouched


def test_the_experience_index_is_saved_and_an_older_checkpoint_reads_as_zero():
    s = er(exclude_current=True)
    s.before_experience(exp(3))
    st = s.extra_state()
    assert st["exp_index"] == 3 and "buffer" in st
    t = er(exclude_current=True)
    t.load_extra_state(st)
    assert t.exp_index == 3
    t.load_extra_state({"buffer": st["buffer"]})
    assert t.exp_index == 0


def test_an_empty_buffer_gives_no_replay_and_a_single_past_sample_is_replayed():
    """Before any sample is stored the draw is empty (the loss is the incoming batch's CE alone); once the
    buffer holds one sample of a past experience, that one sample is the replay batch."""
    s = er(exclude_current=True, buffer_size=5, replay_batch_size=3)
    s.before_experience(exp(0))
    x, y = torch.stack([E2]), torch.tensor([1])
    assert s.draw(3) == {} and float(s.loss(x, y)) == pytest.approx(math.log(2))
    s.after_step(torch.stack([7 * E1]), torch.tensor([0]))
    s.before_experience(exp(1))
    d = s.draw(3)
    assert d["x"][:, 0].tolist() == [7.0] and d["y"].tolist() == [0] and d["e"].tolist() == [0]
    assert float(s.loss(x, y)) == pytest.approx(2 * math.log(2))
