"""Tests written from the mutation run of strategies/aser.py (issue 19): ASER's defaults (Mai et al.'s
CIFAR-10 configs), the validation bounds, the features (eval mode, flattened), when retrieval turns from
random to Shapley-valued, the scores without a cooperative set, the memory fill and the stream count, and
the update's evaluation set (minority classes strictly below the drawn threshold) and candidate count, on
constructed cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import strategies.aser as aser
from cl.core.config import resolve
from cl.core.registry import ConfigError
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
from strategies.aser import ASER, ASER_TYPES, ASERConfig

from conftest import tiny
from test_ocl1 import brute_shapley, make


def make_aser(**kw):
    return make(ASER, ASERConfig, **kw)


def test_defaults_are_mai_et_als():
    c = ASERConfig()
    assert (c.buffer_size, c.replay_batch_size, c.aser_type, c.k, c.n_smp_cls) == (500, 10, "asvm", 3, 9)
    assert ASER_TYPES == ("asvm", "asv", "neg_sv")


def test_features_are_flattened_in_eval_mode_and_the_mode_is_restored():
    s = make_aser()
    modes = []

    def feats(x):
        modes.append(s.model.training)
        return x.double().view(len(x), 1, 2)

    s.model.features = feats
    x = torch.randn(3, 2)
    for training in (True, False):
        s.model.train(training)
        f = s.features(x)
        assert f.shape == (3, 2) and f.dtype == torch.float32 and torch.allclose(f, x)
        assert s.model.training is training and not f.requires_grad
    assert modes == [False, False]
    bb = torch.nn.Linear(2, 3)
    bb.out_dim = 3
    t = make_aser(model=Model(bb, IncrementalLinear(3, 2)))
    f = t.features(x)
    assert f.shape == (3, 3) and not f.requires_grad and f.grad_fn is None  # scores keep no graph


def _spy_cbi(monkeypatch):
    drawn = []
    orig = aser.class_balanced_index
    monkeypatch.setattr(aser, "class_balanced_index", lambda *a, **kw: drawn.append(orig(*a, **kw)) or drawn[-1])
    return drawn


def test_retrieval_is_random_and_distinct_until_more_than_the_memory_was_offered(monkeypatch):
    s = make_aser(n_classes=3, buffer_size=12, replay_batch_size=10, n_smp_cls=2)
    s.model.observe(torch.tensor([0, 1, 2]))
    x, y = torch.randn(2, 2), torch.tensor([0, 1])
    assert s.retrieve(x, y) == {}  # empty buffer
    drawn = _spy_cbi(monkeypatch)
    s.buffer.add(x=torch.arange(11.0)[:, None].repeat(1, 2), y=torch.arange(3).repeat(4)[:11])
    assert len(s.retrieve(x, y)["x"]) == 10 and drawn == []  # n_seen below the capacity: random
    s = make_aser(n_classes=3, buffer_size=12, replay_batch_size=10, n_smp_cls=2)
    s.model.observe(torch.tensor([0, 1, 2]))
    s.buffer.add(x=torch.arange(12.0)[:, None].repeat(1, 2), y=torch.arange(3).repeat(4))
    for _ in range(10):
        mem = s.retrieve(x, y)  # n_seen == capacity: still random
        vals = mem["x"][:, 0].tolist()
        assert len(vals) == 10 and len(set(vals)) == 10
    assert drawn == []
    s.buffer.advance_host(1)
    mem = s.retrieve(x, y)  # Shapley-valued from now on: the 6 candidates (2 per class), fewer than 10
    assert drawn and sorted(mem["index"].tolist()) == sorted(drawn[0].tolist())


@pytest.mark.parametrize("kind", ["asvm", "asv"])
def test_scores_combine_the_cooperative_and_adversarial_values(kind, monkeypatch):
    """A cooperative set of 3 slots and 4 candidates (different sizes), k = 2: asvm = mean_coop - mean_adv,
    asv = max_coop - min_adv, over the evaluation points of each set."""
    s = make_aser(n_classes=2, buffer_size=7, n_smp_cls=2, k=2, aser_type=kind)
    torch.manual_seed(3)
    bx, by = torch.randn(7, 2), torch.tensor([0, 1, 0, 1, 0, 1, 0])
    s.buffer.add(x=bx, y=by)
    ev = torch.tensor([4, 5, 6])
    monkeypatch.setattr(aser, "class_balanced_index", lambda y, n, exclude=None: ev)
    x, y = torch.randn(2, 2), torch.tensor([0, 1])
    cand = torch.tensor([0, 1, 2, 3])
    got = s.retrieval_scores(x, y, cand, s.buffer.items())
    adv = brute_shapley(x, y, bx[cand], by[cand], 2)
    coop = brute_shapley(bx[ev], by[ev], bx[cand], by[cand], 2)
    want = coop.mean(0) - adv.mean(0) if kind == "asvm" else coop.max(0).values - adv.min(0).values
    assert torch.allclose(got, want, atol=1e-6)


def test_neg_sv_scores_are_minus_the_summed_adversarial_values(monkeypatch):
    s = make_aser(n_classes=2, buffer_size=6, n_smp_cls=2, k=1, aser_type="neg_sv")
    torch.manual_seed(0)
    bx, by = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    s.buffer.add(x=bx, y=by)
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 1])
    cand = torch.tensor([4, 1, 2, 3])
    drawn = []
    monkeypatch.setattr(aser, "class_balanced_index", lambda *a, **kw: drawn.append(a) or torch.tensor([0, 5]))
    got = s.retrieval_scores(x, y, cand, s.buffer.items())
    assert torch.allclose(got, -brute_shapley(x, y, bx[cand], by[cand], 1).sum(0), atol=1e-6)
    assert drawn == []  # no cooperative set is drawn (nor the RNG advanced) for neg_sv


@pytest.mark.parametrize("kind", ["asvm", "asv"])
def test_without_a_cooperative_set_its_value_is_zero(kind, monkeypatch):
    """Every slot is a candidate (2 per class, 2 classes, buffer of 4): no cooperative evaluation set."""
    s = make_aser(n_classes=2, buffer_size=4, n_smp_cls=2, k=1, aser_type=kind)
    torch.manual_seed(0)
    bx, by = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    s.buffer.add(x=bx, y=by)
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 1])
    cand = torch.tensor([3, 0, 1, 2])
    got = s.retrieval_scores(x, y, cand, s.buffer.items())
    adv = brute_shapley(x, y, bx[cand], by[cand], 1)
    want = -adv.mean(0) if kind == "asvm" else -adv.min(0).values
    assert torch.allclose(got, want, atol=1e-6)


def test_retrieval_replays_the_top_scored_candidates_then_trains_on_both(monkeypatch):
    s = make_aser(n_classes=2, buffer_size=4, n_smp_cls=2, replay_batch_size=2)
    s.buffer.add(x=torch.arange(4.0)[:, None].repeat(1, 2), y=torch.tensor([0, 1, 0, 1]))
    s.buffer.advance_host(1)
    monkeypatch.setattr(aser, "class_balanced_index", lambda y, n, exclude=None: torch.tensor([0, 1, 2, 3]))
    s.retrieval_scores = lambda x, y, cand, items: torch.tensor([0.1, 0.4, -0.2, 0.3])
    mem = s.retrieve(torch.randn(1, 2), torch.tensor([0]))
    assert mem["index"].tolist() == [1, 3] and mem["x"][:, 0].tolist() == [1.0, 3.0]
    # the step: one mean cross-entropy over [retrieved; incoming] (zero head: log 2 each)
    s.model.observe(torch.tensor([0, 1]))
    with torch.no_grad():
        s.model.head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    x, y = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    logits = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    want = F.cross_entropy(logits, torch.tensor([1, 1, 1]))
    assert s.loss(x, y).item() == pytest.approx(float(want), abs=1e-6)


def test_memory_fills_first_and_counts_every_offered_sample(monkeypatch):
    s = make_aser(n_classes=2, buffer_size=5, n_smp_cls=1)
    s.model.observe(torch.tensor([0, 1]))
    updates = []
    s.update_by_sv = lambda x, y: updates.append(x[:, 0].tolist())
    s.after_step(torch.arange(3.0)[:, None].repeat(1, 2), torch.tensor([0, 1, 0]))
    assert len(s.buffer) == 3 and updates == [] and s.buffer.n_seen == 3
    s.after_step(torch.arange(3.0, 5.0)[:, None].repeat(1, 2), torch.tensor([1, 0]))  # exactly fills it
    assert s.buffer.items()["x"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and updates == []
    s.after_step(torch.arange(5.0, 8.0)[:, None].repeat(1, 2), torch.tensor([1, 0, 1]))
    assert updates == [[5.0, 6.0, 7.0]] and s.buffer.n_seen == 8
    t = make_aser(n_classes=2, buffer_size=4, n_smp_cls=1)
    t.update_by_sv = lambda x, y: updates.append(x[:, 0].tolist())
    t.after_step(torch.arange(6.0)[:, None].repeat(1, 2), torch.tensor([0, 1, 0, 1, 0, 1]))  # 4 fill, 2 update
    assert t.buffer.items()["x"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0] and updates[-1] == [4.0, 5.0]
    assert t.buffer.n_seen == 6
    one = make_aser(n_classes=2, buffer_size=3, n_smp_cls=1)  # room for exactly one
    one.update_by_sv = lambda x, y: updates.append(x[:, 0].tolist())
    one.after_step(torch.arange(2.0)[:, None].repeat(1, 2), torch.tensor([0, 1]))
    one.after_step(torch.arange(2.0, 4.0)[:, None].repeat(1, 2), torch.tensor([0, 1]))
    assert one.buffer.items()["x"][:, 0].tolist() == [0.0, 1.0, 2.0] and updates[-1] == [3.0]
    empty = make_aser(buffer_size=0)
    empty.after_step(torch.randn(2, 2), torch.tensor([0, 1]))
    assert len(empty.buffer) == 0 and empty.buffer.n_seen == 0


def test_update_evaluates_on_minority_incoming_classes_and_n_smp_cls_per_class_candidates(monkeypatch):
    """Buffer of 8: class 0 x5, class 1 x2, class 2 x1 (shares 0.625, 0.25, 0.125, 0); 4 classes; the drawn
    threshold is U / 4 with U fixed to 1: 0.25. Incoming classes [0, 1, 2, 3]: classes 2 and 3 are minorities
    (class 1's share equals the threshold). Evaluation set: 1 per class of the buffer (3) + the class-2 and
    class-3 samples; candidates: n_smp_cls * n_classes = 4 buffer slots outside it + the 4 incoming."""
    s = make_aser(n_classes=4, buffer_size=8, n_smp_cls=1, k=1)
    s.buffer.add(x=torch.randn(8, 2), y=torch.tensor([0, 0, 0, 0, 0, 1, 1, 2]))
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.ones(()))
    seen = []
    s.sv = lambda ex, ey, cx, cy: seen.append((ey.clone(), cy.clone())) or torch.zeros(len(ey), len(cy))
    s.update_by_sv(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]))
    ey, cy = seen[0]
    assert sorted(ey.tolist()) == [0, 1, 2, 2, 3] and ey[-2:].tolist() == [2, 3]
    assert len(cy) == 8 and cy[-4:].tolist() == [0, 1, 2, 3]
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.full((), 0.4))  # threshold 0.1: class 3 only
    s.update_by_sv(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]))
    assert sorted(seen[1][0].tolist()) == [0, 1, 2, 3]


def test_update_candidates_come_from_outside_the_evaluation_set(monkeypatch):
    s = make_aser(n_classes=2, buffer_size=6, n_smp_cls=1, k=1)
    s.buffer.add(x=torch.arange(6.0)[:, None].repeat(1, 2), y=torch.tensor([0, 0, 0, 1, 1, 1]))
    seen = []
    s.sv = lambda ex, ey, cx, cy: seen.append((ex.clone(), cx.clone())) or torch.zeros(len(ey), len(cy))
    for _ in range(10):
        s.update_by_sv(torch.full((1, 2), 9.0), torch.tensor([0]))
    for ex, cx in seen:
        ev, cand = set(ex[:, 0].tolist()) - {9.0}, set(cx[:-1, 0].tolist())
        assert len(ev) == 2 and len(cand) == 2 and not ev & cand and cx[-1, 0] == 9.0



def test_update_puts_every_top_ranked_incoming_sample_in_a_lower_ranked_candidates_slot(monkeypatch):
    """Slots hold x = 0..5; the evaluation set is fixed to slots 0 and 3, so the candidates are slots 1, 2, 4, 5
    (n_smp_cls * n_classes = 4, in a random order) and the incoming 10, 11. Summed values by x: 10: 0.9,
    11: 0.8, slot 4: 0.4, slot 1: 0.3, slot 5: 0.2, slot 2: 0.1. The top four hold both incoming samples:
    the best (10) takes the best of the two candidates below them (slot 5), 11 takes slot 2."""
    value = {1.0: 0.3, 2.0: 0.1, 4.0: 0.4, 5.0: 0.2, 10.0: 0.9, 11.0: 0.8}
    for _ in range(5):
        s = make_aser(n_classes=2, buffer_size=6, n_smp_cls=2, k=1)
        s.buffer.add(x=torch.arange(6.0)[:, None].repeat(1, 2), y=torch.tensor([0, 0, 0, 1, 1, 1]))
        monkeypatch.setattr(aser, "class_balanced_index", lambda y, n, exclude=None: torch.tensor([0, 3]))
        s.sv = lambda ex, ey, cx, cy: torch.tensor([[value[float(v)] for v in cx[:, 0]]])
        s.update_by_sv(torch.tensor([[10.0, 10.0], [11.0, 11.0]]), torch.tensor([1, 0]))
        items = s.buffer.items()
        assert items["x"][:, 0].tolist() == [0.0, 1.0, 11.0, 3.0, 4.0, 10.0] and items["y"].tolist() == [0, 0, 0, 1, 1, 1]


def test_a_one_sample_buffer_is_retrieved():
    s = make_aser(buffer_size=5, replay_batch_size=3)
    s.buffer.add(x=torch.ones(1, 2), y=torch.tensor([1]))
    mem = s.retrieve(torch.randn(2, 2), torch.tensor([0, 1]))
    assert mem["x"].tolist() == [[1.0, 1.0]] and mem["y"].tolist() == [1]


@pytest.mark.parametrize("key", ["replay_batch_size", "k", "n_smp_cls"])
def test_validation_bounds(key):
    assert resolve(tiny({"name": "aser", key: 1}))["strategy"][key] == 1
    with pytest.raises(ConfigError, match=f"{key}=0"):
        resolve(tiny({"name": "aser", key: 0}))
    for kind in ASER_TYPES:
        assert resolve(tiny({"name": "aser", "aser_type": kind}))["strategy"]["aser_type"] == kind
