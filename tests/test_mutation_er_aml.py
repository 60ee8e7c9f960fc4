"""Tests written from the mutation run of strategies/er_aml.py (issue 19): defaults, the normalisation, the
numerically stable SupCon, when the AML phase starts, negatives only from the batch's classes, and the step's
objective (AML term + CE on a replay batch) on constructed cases."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from strategies.er_aml import ERAML, ERAMLConfig, aml_loss, normalize

from test_baselines_replay import build


def test_defaults_and_fields():
    c = ERAMLConfig()
    assert (c.temperature, c.base_temperature) == (0.2, 0.07)
    s = build("er-aml", temperature=0.5, base_temperature=0.1)  # dataclass fields, settable
    assert (s.cfg.temperature, s.cfg.base_temperature) == (0.5, 0.1) and ERAML.runs_task_free()


def test_normalize_rows_with_a_small_eps():
    h = torch.tensor([[3.0, 4.0], [6.0, 8.0]], dtype=torch.float64)
    want = h / (torch.tensor([[5.0], [10.0]], dtype=torch.float64) + 1e-5)
    assert torch.allclose(normalize(h), want, rtol=0, atol=1e-12)
    assert torch.equal(normalize(torch.zeros(1, 2)), torch.zeros(1, 2))


def test_aml_loss_is_finite_for_large_similarities():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = aml_loss(a, a, torch.tensor([0, 1]), torch.tensor([0, 1]), 1e-3, 1e-3)  # logits up to 1000
    assert torch.isfinite(loss) and abs(float(loss)) < 1e-6  # each anchor's only positive dominates


def test_aml_phase_starts_with_the_second_experience_or_at_once_without_boundaries():
    s = build("er-aml", buffer_size=10)
    s.exp_index = 1
    assert not s.aml_phase()  # empty buffer: CE only
    s.buffer.add(x=torch.randn(1, 3), y=torch.tensor([0]))  # one sample is enough
    assert s.aml_phase()
    s.exp_index = 0
    assert not s.aml_phase()  # first experience with visible boundaries
    s.info.boundaries = "hidden"
    assert s.aml_phase()


def test_negatives_come_only_from_the_batchs_classes():
    s = build("er-aml", buffer_size=10, n_classes=6)
    s.buffer.add(x=torch.randn(3, 3), y=torch.tensor([0, 5, 2]))
    x, y = torch.randn(2, 3), torch.tensor([2, 3])
    for _ in range(20):
        bx, by, pi, ni, ok = s.pos_neg(x, y)
        assert torch.isin(by[ni][ok], y).all() and (by[ni][ok] != y[ok]).all()


def test_without_valid_pairs_the_loss_is_the_replay_ce():
    """A batch of one class and a buffer of that class only: no anchor has a negative, so the AML term is 0
    and the loss is the CE of the replay batch."""
    s = build("er-aml", buffer_size=10, replay_batch_size=3, n_classes=4)
    s.exp_index = 1
    s.model.observe(torch.arange(4))
    s.buffer.add(x=torch.randn(4, 3), y=torch.full((4,), 1))
    x, y = torch.randn(2, 3), torch.tensor([1, 1])
    _, _, _, _, ok = s.pos_neg(x, y)
    assert not ok.any()
    torch.manual_seed(5)
    loss = s.loss(x, y)
    torch.manual_seed(5)
    s.pos_neg(x, y)  # the same draws as inside loss()
    mem = s.buffer.sample(3)
    want = F.cross_entropy(s.model(mem["x"]).float(), mem["y"])
    assert torch.isfinite(loss) and torch.allclose(loss, want) and float(want.detach()) > 0


def test_aml_loss_scales_with_temperature_over_base_temperature():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    ya, yc = torch.tensor([0, 1]), torch.tensor([0, 1, 1, 0])
    assert torch.allclose(aml_loss(a, c, ya, yc, 0.2, 0.07), (0.2 / 0.07) * aml_loss(a, c, ya, yc, 0.2, 0.2))
