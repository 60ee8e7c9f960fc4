"""Tests written from the mutation run of strategies/bic.py (issue 19): the defaults, the validation bounds, the
bias layer on an empty class list, the validation split by herding rank at another val_every, stage 1's loss
((1 - lambda) CE + lambda T^2 KD against the bias-corrected teacher, on the augmented batch), stage 2's Adam fit
(steps in batches of 32), the memory budget, prediction and the state a checkpoint restores."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from strategies.bic import BiCConfig, bias_correct

from test_baselines_reg import X, exp_of, make

pytestmark = pytest.mark.usefixtures("restore_registry")


def test_bic_defaults_are_the_papers():
    c = BiCConfig()
    assert (c.buffer_size, c.temperature, c.val_every, c.bic_epochs, c.bic_lr) == (2000, 2.0, 10, 250, 1e-3)


def test_bic_validation_bounds():
    make("bic", val_every=2, buffer_size=1)  # the bounds themselves are valid
    for bad in ({"val_every": 1}, {"val_every": -2}, {"buffer_size": 0}, {"buffer_size": -1}):
        with pytest.raises(ConfigError, match=rf"bic: val_every must be >= 2 and buffer_size >= 1, got "
                                              rf"val_every={bad.get('val_every', 10)}, buffer_size={bad.get('buffer_size', 2000)}"):
            make("bic", **bad)


def test_bias_correct_without_new_classes_is_the_identity():
    z = torch.tensor([[1.0, -2.0, 3.0]])
    assert bias_correct(z, None, 0.5, -1.0) is z
    assert torch.equal(bias_correct(z, torch.tensor([], dtype=torch.long), 0.5, -1.0), z)
    assert torch.equal(bias_correct(z, torch.tensor([0]), 2.0, 1.0), torch.tensor([[3.0, -2.0, 3.0]]))


def _two_steps(n_classes=4, **cfg):
    """A BiC after a first experience of classes 0, 1 (6 samples each) and before a second of 2, 3."""
    s = make("bic", n_in=2, n_classes=n_classes, seen=[0, 1], **cfg)
    x0 = torch.randn(12, 2, generator=torch.Generator().manual_seed(1))
    e0 = exp_of(x0, torch.tensor([0, 1] * 6))
    s.before_experience(e0)
    s.after_experience(e0)
    s.model.head.observe(torch.tensor([2, 3]))
    x1 = torch.randn(12, 2, generator=torch.Generator().manual_seed(2)) + 5
    e1 = exp_of(x1, torch.tensor([2, 3] * 6), index=1)
    return s, e0, e1


def test_bic_validation_is_one_exemplar_in_val_every_by_rank():
    s, e0, e1 = _two_steps(buffer_size=12, val_every=3)  # 6 exemplars per class; ranks 2 and 5 are validation
    assert len(s.memory) == 12 and sorted(s.memory.rank.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert s.memory.rank[s._is_val()].tolist().count(2) == 2 and set(s.memory.rank[s._is_val()].tolist()) == {2, 5}
    torch.manual_seed(0)  # the new classes' validation draw
    s.before_experience(e1)
    assert sorted(s.val_y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # 4 validation exemplars / 2 old classes = 2 per class
    assert s.val_y[4:].tolist() == [2, 2, 3, 3]  # then, per new class in order, that many of its own samples
    for seed in range(1, 11):  # whatever the draw: a mixed-class draw would show within 10 (p < 1e-6)
        torch.manual_seed(seed)
        s.before_experience(e1)
        assert s.val_y[4:].tolist() == [2, 2, 3, 3] and len(s.val_x[4:].unique(dim=0)) == 4
    torch.manual_seed(0)
    s.before_experience(e1)
    assert s.cur_new == [2, 3] and s._cur_new_idx.tolist() == [2, 3]
    tx, ty = s.train_data(e1)
    assert len(ty) == 12 - 4 + 8
    assert torch.equal(tx[8:], s.memory.x[~s._is_val()])
    assert s.teacher_bias == (1.0, 0.0, [])  # no bias layer yet


def test_bic_first_experience_trains_on_all_its_data_and_has_no_validation():
    s = make("bic", n_classes=4, seen=[0, 1], buffer_size=8)
    e0 = exp_of(X, torch.tensor([0, 1, 0, 1]))
    s.before_experience(e0)
    assert s.val_x is None and s.val_y is None
    tx, ty = s.train_data(e0)
    assert torch.equal(tx, X) and torch.equal(ty, e0.train_y)
    y = e0.train_y
    assert s.loss(X, y).item() == pytest.approx(F.cross_entropy(s.model(X), y).item(), abs=1e-6)  # no teacher: CE
    s.after_experience(e0)
    assert s.alpha == 1.0 and s.beta == 0.0 and s.new_classes == []  # no correction after the first experience
    assert torch.equal(s.predict(X), s.model(X))


def _hand_kd(student, teacher, T):
    p_t, logp_s = torch.softmax(teacher / T, 1), torch.log_softmax(student / T, 1)
    return (p_t * (p_t.log() - logp_s)).sum(1).mean() * T * T


def test_bic_stage1_loss_weights_ce_and_kd_against_the_corrected_teacher():
    s = make("bic", n_classes=5, seen=[0, 1, 2], buffer_size=8, temperature=3.0)
    e0 = exp_of(X, torch.tensor([0, 1, 2, 0]))
    s.before_experience(e0)
    s.after_experience(e0)
    s.alpha, s.beta, s.new_classes = 0.5, -1.0, [1, 2]  # as if the previous stage 2 had fit this layer
    s.model.head.observe(torch.tensor([3, 4]))
    s.before_experience(exp_of(X, torch.tensor([3, 4, 3, 4]), index=1))
    assert s.teacher_bias == (0.5, -1.0, [1, 2])
    s.augment = lambda v: v * 2 - 1
    xa = X * 2 - 1
    t = s.model(xa).detach()[:, :3]
    t_corr = torch.cat([t[:, :1], 0.5 * t[:, 1:] - 1.0], 1)
    with torch.no_grad():
        s.model.head.fc.weight[1].add_(torch.tensor([0.5, -0.4]))
    y = torch.tensor([3, 4, 0, 1])
    z = s.model(xa)
    lam = 3 / 5
    want = (1 - lam) * F.cross_entropy(z, y) + lam * _hand_kd(z[:, :3], t_corr, 3.0)
    assert s.loss(X, y).item() == pytest.approx(want.item(), rel=1e-5)


def _hand_adam(logits, y, new_idx, lr, epochs):
    a, b = torch.tensor(1.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    k = 0
    for _ in range(epochs):
        for i in range(0, len(y), 32):
            z = logits[i:i + 32].clone()
            z[:, new_idx] = z[:, new_idx] * a + b
            ga, gb = torch.autograd.grad(F.cross_entropy(z, y[i:i + 32]), [a, b])
            k += 1
            with torch.no_grad():
                for j, (p, g) in enumerate(((a, ga), (b, gb))):
                    m[j] = 0.9 * m[j] + 0.1 * g
                    v[j] = 0.999 * v[j] + 0.001 * g * g
                    p -= lr * (m[j] / (1 - 0.9 ** k)) / ((v[j] / (1 - 0.999 ** k)).sqrt() + 1e-8)
    return a.item(), b.item(), k


def test_bic_stage2_is_adam_in_batches_of_32_from_identity():
    s = make("bic", n_classes=4, seen=[0, 1, 2, 3], bic_epochs=3, bic_lr=0.05)
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1, 2, 3] * 10)  # 40 samples: a batch of 32 and one of 8 per epoch
    logits = torch.randn(40, 4, generator=g) + 2 * F.one_hot(y, 4)
    logits[:, 2:] += 1.5
    a, b, steps = _hand_adam(logits, y, [2, 3], 0.05, 3)
    assert steps == 6
    got = s.fit_bias(logits, y, torch.tensor([2, 3]))
    assert got == pytest.approx((a, b), abs=1e-5)
    assert abs(a - 1.0) > 0.05 and abs(b) > 0.05
    s0 = make("bic", n_classes=4, seen=[0, 1, 2, 3], bic_epochs=0)
    assert s0.fit_bias(logits, y, torch.tensor([2, 3])) == (1.0, 0.0)  # the identity layer it starts from


def test_bic_stage2_fits_the_new_classes_and_keeps_the_budget():
    s, e0, e1 = _two_steps(buffer_size=6, val_every=2, bic_epochs=2)  # 3 per class; rank 1 is validation
    s.before_experience(e1)
    assert s.val_y.tolist() == [0, 1, 2, 3]  # 2 validation exemplars // 2 old classes: 1 per class, new ones too
    want_y, want_x = s.val_y.clone(), s.val_x.clone()
    seen = {}
    s.fit_bias = lambda z, y, idx: seen.update(z=z, y=y, idx=idx) or (0.25, 0.5)
    s.after_experience(e1)
    assert torch.equal(seen["y"], want_y) and seen["idx"].tolist() == [2, 3]
    assert torch.allclose(seen["z"], s.model(want_x))
    assert (s.alpha, s.beta, s.new_classes) == (0.25, 0.5, [2, 3])
    assert s.val_x is None and s.val_y is None
    assert sorted(s.memory.y.tolist()) == [0, 1, 2, 3]  # 6 // 4 = 1 per class
    z = s.model(e1.train_x[:3])
    assert torch.equal(s.predict(e1.train_x[:3]), torch.cat([z[:, :2], 0.25 * z[:, 2:] + 0.5], 1))


def test_bic_first_boundary_budget_is_k_over_its_classes():
    s = make("bic", n_classes=4, seen=[0, 1], buffer_size=5)
    x0 = torch.randn(12, 2, generator=torch.Generator().manual_seed(1))
    e0 = exp_of(x0, torch.tensor([0, 1] * 6))
    s.before_experience(e0)
    s.after_experience(e0)
    assert sorted(s.memory.y.tolist()) == [0, 0, 1, 1]  # 5 // 2 = 2 per class
    s1 = make("bic", n_classes=4, seen=[0], buffer_size=3)
    e1 = exp_of(x0[:5], torch.zeros(5, dtype=torch.long))
    s1.before_experience(e1)
    s1.after_experience(e1)
    assert len(s1.memory) == 3  # one class: all of K


def test_bic_state_restores_the_bias_layer_and_memory():
    s, e0, e1 = _two_steps(buffer_size=8, val_every=2, bic_epochs=2)
    s.before_experience(e1)
    s.after_experience(e1)
    t = make("bic", n_in=2, n_classes=4, seen=[0, 1, 2, 3], buffer_size=8)
    t.load_extra_state(s.extra_state())
    assert (t.alpha, t.beta, t.new_classes) == (s.alpha, s.beta, [2, 3]) and s.alpha != 1.0
    assert torch.equal(t.memory.x, s.memory.x) and torch.equal(t.memory.rank, s.memory.rank)
    t.model.load_state_dict(s.model.state_dict())
    assert torch.equal(t.predict(X), s.predict(X))


def test_bic_validation_per_class_with_a_single_old_class():
    s = make("bic", n_classes=4, seen=[0], buffer_size=6, val_every=3)
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    e0 = exp_of(x0, torch.zeros(8, dtype=torch.long))
    s.before_experience(e0)
    s.after_experience(e0)  # 6 exemplars of class 0; ranks 2 and 5 are validation
    s.model.head.observe(torch.tensor([1]))
    e1 = exp_of(x0 + 5, torch.ones(8, dtype=torch.long), index=1)
    s.before_experience(e1)
    assert s.val_y.tolist() == [0, 0, 1, 1]  # 2 validation exemplars // 1 old class: 2 of the new class


def test_bic_without_exemplars_has_no_validation_and_draws_nothing():
    s, e0, e1 = _two_steps(buffer_size=1)  # 1 // 2 classes = 0 exemplars per class: an empty memory
    assert len(s.memory) == 0 and s.old_classes == [0, 1]
    torch.manual_seed(0)
    s.before_experience(e1)
    assert s.val_x is None and s.val_y is None  # no stage 2 without validation exemplars
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(0)))  # no draw taken
    tx, ty = s.train_data(e1)
    assert torch.equal(tx, e1.train_x) and torch.equal(ty, e1.train_y)
