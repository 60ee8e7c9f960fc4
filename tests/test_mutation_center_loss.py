"""Tests written from the mutation run of strategies/center_loss.py (issue 19): the defaults, the penalty
and the centre update rule on hand-made features (a centre starts at its class's first-batch mean, then
``c_j -= alpha * sum_i (c_j - h_i) / (1 + n_j)``; frozen centres stay), the loss with and without replay,
the classifier rows restored after each step once frozen, the freezing at the end of a class's first
experience, the boundary requirement, and the state round trip."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.streams import Experience
from strategies.center_loss import CenterLoss, CenterLossConfig

from test_strategies_er_family import make


def _exp(classes):
    x, y = torch.randn(len(classes), 16), torch.tensor(classes)
    return Experience(x, y, x, y, sorted(set(classes)), 0, 0)


def test_defaults():
    c = CenterLossConfig()
    assert (c.buffer_size, c.lambda_c, c.alpha, c.freeze, c.center_on_replay) == (0, 0.1, 0.5, True, True)
    assert CenterLoss.task_free is True and CenterLoss.transient_attrs == ("_h", "_y")
    s, _ = make("center-loss", backbone="identity")
    assert s.centers.shape == (10, 16) and not s.centers.any()
    assert s.frozen.dtype == s.initialised.dtype == s.active.dtype == torch.bool
    assert not (s.frozen.any() or s.initialised.any() or s.active.any())
    assert set(s._snap) == {"fc.weight", "fc.bias"}


def test_freezing_needs_visible_boundaries_and_freeze_false_does_not():
    s, _ = make("center-loss", backbone="identity", freeze=False)
    s.info.boundaries = "hidden"
    s.setup()  # no error
    s.info.boundaries = "visible"
    s.cfg.freeze = True
    s.setup()
    s.info.boundaries = "blurry"
    with pytest.raises(ConfigError, match="strategy 'center-loss' needs experience boundaries .*; or strategy.freeze=false"):
        s.setup()


def test_penalty_by_hand():
    s, _ = make("center-loss", backbone="identity", lambda_c=0.4)
    s.centers[1, :2] = torch.tensor([1.0, 2.0])
    h = torch.zeros(2, 16)
    h[0, 0], h[1, 1] = 3.0, -1.0
    y = torch.tensor([1, 0])
    # sample 0: ||(3, 0) - (1, 2)||^2 = 8; sample 1: ||(0, -1) - 0||^2 = 1; mean 4.5; * lambda / 2
    assert s.center_penalty(h, y).item() == pytest.approx(0.2 * 4.5)


def test_centre_update_rule_by_hand():
    s, _ = make("center-loss", backbone="identity", alpha=0.5)
    h = torch.zeros(3, 16)
    h[:, 0] = torch.tensor([1.0, 3.0, 5.0])
    s._update_centers(h, torch.tensor([2, 2, 4]))  # first batch: the class means
    assert s.centers[2, 0].item() == 2.0 and s.centers[4, 0].item() == 5.0 and s.centers[[0, 1, 3]].abs().sum() == 0
    assert s.initialised.tolist() == [c in (2, 4) for c in range(10)]
    h2 = torch.zeros(2, 16)
    h2[:, 0] = torch.tensor([6.0, 0.0])
    s._update_centers(h2, torch.tensor([2, 3]))
    # class 2: c -= 0.5 * (c - 6) / (1 + 1) = 2 + 1 = 3; class 3 (new): its first-batch mean 0; class 4 unchanged
    assert s.centers[2, 0].item() == 3.0 and s.centers[4, 0].item() == 5.0 and s.centers[3].abs().sum() == 0
    assert s.initialised[3]
    h3 = torch.zeros(2, 16)
    h3[:, 0] = torch.tensor([7.0, 5.0])
    s._update_centers(h3, torch.tensor([2, 2]))  # two samples: sum (3 - 7) + (3 - 5) = -6; 0.5 * -6 / 3 = -1
    assert s.centers[2, 0].item() == 4.0
    s.frozen[2] = True
    s._update_centers(h3, torch.tensor([2, 2]))  # frozen: unchanged
    assert s.centers[2, 0].item() == 4.0
    s.cfg.freeze = False  # without freezing every centre learns
    s._update_centers(h3, torch.tensor([2, 2]))
    assert s.centers[2, 0].item() == pytest.approx(4.0 - 0.5 * ((4 - 7) + (4 - 5)) / 3)


def test_loss_is_ce_plus_penalty_and_the_replay_terms():
    for on_replay in (True, False):
        s, _ = make("center-loss", backbone="identity", lambda_c=0.3, buffer_size=10, center_on_replay=on_replay)
        s.model.observe(torch.arange(4))
        torch.manual_seed(1)
        s.centers.normal_()
        x, y = torch.randn(3, 16), torch.tensor([0, 1, 1])
        mx, my = torch.randn(2, 16), torch.tensor([2, 3])
        m = s.model

        def part(a, b, pen=True):
            h = m.features(a)
            return F.cross_entropy(m.head(h).float(), b) + (0.15 * (h - s.centers[b]).pow(2).sum(1).mean() if pen else 0)

        assert torch.allclose(s.loss(x, y), part(x, y), atol=1e-6)  # empty buffer: no replay
        assert torch.equal(s._h, m.features(x).detach()) and torch.equal(s._y, y)
        s.buffer.sample = lambda n: {"x": mx, "y": my}
        assert torch.allclose(s.loss(x, y), part(x, y) + part(mx, my, on_replay), atol=1e-6), on_replay
        s.augment = lambda v: 2 * v  # both batches augmented
        assert torch.allclose(s.loss(x, y), part(2 * x, y) + part(2 * mx, my, on_replay), atol=1e-6), on_replay


def test_classifier_rows_of_frozen_classes_are_restored_after_each_step_and_frozen_at_the_boundary():
    s, _ = make("center-loss", backbone="identity", lr=0.5, buffer_size=5)
    e0 = _exp([0, 1, 0, 1])
    s.before_experience(e0)
    s.train_step(e0.train_x, e0.train_y)
    assert s.active.tolist() == [c < 2 for c in range(10)] and len(s.buffer) == 4  # ER's buffer still fed
    W0 = s.model.head.fc.weight.detach().clone()
    s.after_experience(e0)
    assert s.frozen.tolist() == [c < 2 for c in range(10)] and not s.active.any()
    assert torch.equal(s._snap["fc.weight"][:2], W0[:2]) and torch.equal(s._snap["fc.bias"][:2], s.model.head.fc.bias[:2])
    e1 = _exp([2, 3, 2, 0])  # class 0 again: frozen already
    s.before_experience(e1)
    s.train_step(e1.train_x, e1.train_y)
    W1 = s.model.head.fc.weight.detach()
    assert torch.equal(W1[:2], W0[:2])  # restored after the step
    assert not torch.equal(W1[2:4], W0[2:4])  # the new classes' rows learned
    s.after_experience(e1)
    assert s.frozen.tolist() == [c < 4 for c in range(10)]
    assert torch.equal(s._snap["fc.weight"][:2], W0[:2]) and torch.equal(s._snap["fc.weight"][2:4], W1[2:4])
    free, _ = make("center-loss", backbone="identity", lr=0.5, freeze=False)
    free.before_experience(e0)
    free.train_step(e0.train_x, e0.train_y)
    free.after_experience(e0)
    assert not free.frozen.any()
    W = free.model.head.fc.weight.detach().clone()
    free.train_step(e1.train_x, e1.train_y)
    assert not torch.equal(free.model.head.fc.weight[0], W[0])  # nothing frozen, nothing restored


def test_state_round_trip():
    s, _ = make("center-loss", backbone="identity", buffer_size=5)
    e0 = _exp([0, 1, 0, 1])
    s.before_experience(e0)
    s.train_step(e0.train_x, e0.train_y)
    s.after_experience(e0)
    st = copy.deepcopy(s.extra_state())
    assert {"buffer", "centers", "frozen", "initialised", "snap"} <= set(st)
    r, _ = make("center-loss", backbone="identity", buffer_size=5)
    r.load_extra_state(st)
    assert torch.equal(r.centers, s.centers) and torch.equal(r.frozen, s.frozen) and torch.equal(r.initialised, s.initialised)
    assert all(torch.equal(r._snap[k], v) for k, v in s._snap.items()) and len(r.buffer) == 4
    old, _ = make("center-loss", backbone="identity", buffer_size=5)
    old.load_extra_state({"buffer": st["buffer"]})  # an old checkpoint without centres: fresh ones kept
    assert not old.centers.any() and len(old.buffer) == 4


def test_a_centre_starts_at_the_exact_mean_of_its_first_batch():
    s, _ = make("center-loss", backbone="identity")
    h = torch.zeros(3, 16)
    h[:, 0] = torch.tensor([1.0, 2.0, -0.5])
    h[:, 1] = torch.tensor([0.0, 1.0, 0.0])
    s._update_centers(h, torch.tensor([6, 6, 8]))
    assert s.centers[6, :2].tolist() == [1.5, 0.5] and s.centers[8, :2].tolist() == [-0.5, 0.0]
