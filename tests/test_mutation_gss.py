"""Tests written from the mutation run of strategies/gss.py (issue 19): GSS-Greedy's defaults (Mai et al.'s
configs), the validation bounds, ``max_cosine`` on hand values (small norms, a zero gradient), the random
subsets the scores are computed against, the strict similarity threshold, and the two draws of an update
(slots by min-max normalised score, without replacement; replacement by ``c_i / (c_i + c_new)``), read
through a recording ``torch.multinomial``."""
from __future__ import annotations

import pytest
import torch

import strategies.gss as gss
from cl.core.config import resolve
from cl.core.registry import ConfigError
from strategies.gss import GSS, GSSConfig, max_cosine

from conftest import tiny
from test_ocl1 import E1, E2, make


def make_gss(**kw):
    return make(GSS, GSSConfig, **kw)


def test_defaults_are_mai_et_als():
    c = GSSConfig()
    assert (c.buffer_size, c.mem_strength, c.gss_batch_size, c.sim_threshold) == (500, 10, 10, 0.0)
    assert c.replay_batch_size == 10 and gss._FLOOR == 1e-12


def test_max_cosine_hand_values():
    G = torch.tensor([[0.1, 0.0], [0.0, 0.2], [-0.03, -0.04]])  # norms below 1: the eps must not matter
    g = torch.tensor([[0.05, 0.0], [0.0, -0.3], [0.3, 0.4], [0.0, 0.0]])
    got = max_cosine(G, g)
    # rows: e1 (1 to G_0); -e2 (-1 to G_1, 0.8 to G_2); (0.6, 0.8) (0.6, 0.8, -1); a zero gradient: 0, not NaN
    assert got.tolist() == pytest.approx([1.0, 0.8, 0.8, 0.0], abs=1e-6)
    assert max_cosine(G[2:], g[:1]).tolist() == pytest.approx([-0.6], abs=1e-6)


def test_vectorised_gradients_only_on_a_gpu():
    s = make_gss()
    assert s.vectorize is False
    s.device = torch.device("cuda")
    assert s.vectorize is True
    s.device = torch.device("mps")  # sorts after "cuda"
    assert s.vectorize is False


def _spy_groups(monkeypatch):
    seen = []
    orig = gss.group_grads

    def spy(model, xs, ys, vectorize=True):
        seen.append((xs.clone(), ys.clone(), model.training))
        return orig(model, xs, ys, vectorize)

    monkeypatch.setattr(gss, "group_grads", spy)
    return seen


@pytest.mark.parametrize("n,strength,bs,want", [(5, 10, 2, (2, 2)), (7, 2, 3, (2, 3)), (3, 4, 5, (1, 3)),
                                                 (1, 10, 10, (1, 1))])
def test_memory_subsets_are_disjoint_random_groups(monkeypatch, n, strength, bs, want):
    s = make_gss(buffer_size=10, mem_strength=strength, gss_batch_size=bs)
    s.model.observe(torch.tensor([0, 1]))
    s.buffer.add(x=torch.arange(n, dtype=torch.float)[:, None].repeat(1, 2), y=torch.zeros(n, dtype=torch.long))
    seen = _spy_groups(monkeypatch)
    G = s.memory_grads()
    xs = seen[0][0]
    assert tuple(xs.shape[:2]) == want and G.shape == (want[0], 4)
    vals = xs[..., 0].flatten().tolist()
    assert len(set(vals)) == len(vals)  # disjoint: no slot twice


def test_admission_runs_in_eval_mode_and_restores_the_mode(monkeypatch):
    for training in (True, False):
        s = make_gss(buffer_size=4, mem_strength=2, gss_batch_size=1)
        s.model.observe(torch.tensor([0, 1]))
        s.model.train(training)
        s.buffer.add(x=torch.stack([E1, E1]), y=torch.zeros(2, dtype=torch.long), score=torch.tensor([0.1, 0.1]))
        seen = _spy_groups(monkeypatch)
        s.after_step(torch.stack([E2]), torch.tensor([0]))
        assert seen and not any(m for _, _, m in seen) and s.model.training is training


def test_an_empty_capacity_buffer_admits_nothing():
    s = make_gss(buffer_size=0)
    s.after_step(torch.stack([E1]), torch.tensor([0]))
    assert len(s.buffer) == 0


def _full(scores, x=E1):
    s = make_gss(buffer_size=len(scores), mem_strength=2, gss_batch_size=2)
    s.model.observe(torch.tensor([0, 1]))
    s.buffer.add(x=torch.stack([x] * len(scores)), y=torch.zeros(len(scores), dtype=torch.long),
                 score=torch.tensor(scores))
    return s


def test_a_batch_is_considered_only_strictly_below_the_threshold():
    """Buffer of (e1, class 0), incoming (e2, class 0): at a zero head the gradients are orthogonal
    (similarity exactly 0), so the default threshold 0 rejects the batch and 0.01 lets it in."""
    s = _full([0.2, 0.4, 0.6, 0.8])
    before = s.buffer.items()["x"].clone()
    for _ in range(12):  # considered, each would replace its slot with probability > 1/2
        s.after_step(torch.stack([E2]), torch.tensor([0]))
    assert torch.equal(s.buffer.items()["x"], before)
    s.cfg.sim_threshold = 0.01
    for _ in range(20):
        s.after_step(torch.stack([E2]), torch.tensor([0]))
    assert (s.buffer.items()["x"][:, 1] == 1).any()


def _spy_multinomial(monkeypatch):
    calls = []
    orig = torch.multinomial

    def spy(w, k, replacement=False):
        calls.append((w.clone(), k, replacement))
        return orig(w, k, replacement)

    monkeypatch.setattr(torch, "multinomial", spy)
    return calls


def test_update_draws_slots_by_normalised_score_and_replaces_with_the_cosine_odds(monkeypatch):
    """Scores [-0.8, -0.6, -0.4, -0.2] (max + min < 0), incoming (-e1, class 0): its gradient opposes the
    buffer's (score -1, c_new = 0). Slot weights (s - min) / (max - min + 0.01) = [0, 0.2, 0.4, 0.6] / 0.61;
    replacement odds [c_new, c_slot] = [0, (s_slot + 1) / 2]: always replaced."""
    s = _full([-0.8, -0.6, -0.4, -0.2])
    calls = _spy_multinomial(monkeypatch)
    s.after_step(torch.stack([-E1]), torch.tensor([0]))
    (w, k, rep), (pair, k2, _) = calls
    assert (k, rep, k2) == (1, False, 1)
    assert (w / w.sum()).tolist() == pytest.approx([0.0, 1 / 6, 2 / 6, 3 / 6], abs=1e-6)
    slot = s.buffer.items()["x"][:, 0].tolist().index(-1.0)
    assert slot != 0  # the lowest-scored slot has weight 0 (the 1e-12 floor): never drawn
    c = s.buffer.items()["score"].tolist()
    assert c[slot] == pytest.approx(-1.0, abs=1e-5)
    old = [-0.8, -0.6, -0.4, -0.2][slot]
    assert pair[0].tolist() == pytest.approx([0.0, (old + 1) / 2], abs=1e-6)


@pytest.mark.parametrize("scores,want", [([0.5] * 4, [0.25] * 4),  # all equal: every weight 0, the floor draws uniformly
                                         ([0.5, 0.502, 0.504, 0.506], [0.0, 1 / 6, 2 / 6, 3 / 6])])  # spread < 0.01
def test_update_slot_weights_with_equal_or_close_scores(monkeypatch, scores, want):
    s = _full(scores)
    calls = _spy_multinomial(monkeypatch)
    s.after_step(torch.stack([-E1]), torch.tensor([0]))  # opposing: always replaces its slot
    w = calls[0][0]
    assert (w / w.sum()).tolist() == pytest.approx(want, abs=1e-4)  # float32 differences of 0.002
    assert (s.buffer.items()["x"][:, 0] == -1).sum() == 1


def test_update_pair_odds_of_an_aligned_sample(monkeypatch):
    """Incoming (e1 + e2, class 0): at a zero head its gradient has cosine 1/sqrt(2) to the buffer's (e1), so
    c_new = (1 + 1/sqrt(2)) / 2; with a threshold of 1.0 the batch is considered, and it replaces its slot
    (score 0.5, c_slot = 0.75) with probability c_slot / (c_slot + c_new)."""
    s = _full([0.0, 0.5, 0.5, 0.5])
    s.cfg.sim_threshold = 1.0
    calls = _spy_multinomial(monkeypatch)
    s.after_step(torch.stack([E1 + E2]), torch.tensor([0]))
    (w, _, _), (pair, _, _) = calls
    assert (w / w.sum()).tolist() == pytest.approx([0.0, 1 / 3, 1 / 3, 1 / 3], abs=1e-6)
    assert pair[0].tolist() == pytest.approx([(1 + 0.5 ** 0.5) / 2, 0.75], abs=1e-6)


def test_every_drawn_slot_is_distinct(monkeypatch):
    """Four incoming samples opposing the buffer (each always replaces its slot) into a full buffer of four
    whose lowest slot has weight 0: the four draws are distinct slots, so all four samples are stored (drawn
    with replacement, two would share a slot)."""
    s = _full([-0.8, -0.6, -0.4, -0.2])
    x = torch.stack([-1 * E1, -2 * E1, -3 * E1, -4 * E1])
    s.after_step(x, torch.zeros(4, dtype=torch.long))
    assert sorted(s.buffer.items()["x"][:, 0].tolist()) == [-4.0, -3.0, -2.0, -1.0]
    assert s.buffer.items()["score"].tolist() == pytest.approx([-1.0] * 4, abs=1e-5)


def test_a_larger_batch_than_the_buffer_offers_only_its_first_capacity_samples():
    s = _full([-0.8, -0.6])
    x = torch.stack([-1 * E1, -2 * E1, -3 * E1])
    s.after_step(x, torch.zeros(3, dtype=torch.long))
    got = sorted(s.buffer.items()["x"][:, 0].tolist())
    assert len(got) == 2 and set(got) <= {-1.0, -2.0}


def test_filling_scores_are_cosines_against_the_buffer_and_the_rest_is_dropped():
    s = make_gss(buffer_size=3, mem_strength=1, gss_batch_size=1)
    s.model.observe(torch.tensor([0, 1]))
    s.after_step(torch.stack([E1]), torch.tensor([0]))
    assert s.buffer.items()["score"].tolist() == pytest.approx([0.1])
    s.after_step(torch.stack([-E1, E2, E1]), torch.tensor([0, 0, 0]))
    assert s.buffer.items()["score"].tolist() == pytest.approx([0.1, -1.0, 0.0], abs=1e-6)
    assert s.buffer.items()["x"].tolist() == [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]



@pytest.mark.parametrize("key,ok,bad", [("mem_strength", [1], [0]), ("gss_batch_size", [1], [0]),
                                        ("sim_threshold", [-1.0, 1.0], [-1.01, 1.01])])
def test_validation_bounds(key, ok, bad):
    for v in ok:
        assert resolve(tiny({"name": "gss", key: v}))["strategy"][key] == v
    for v in bad:
        with pytest.raises(ConfigError, match=f"{key}={v}"):
            resolve(tiny({"name": "gss", key: v}))
