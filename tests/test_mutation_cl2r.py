"""Tests written from the mutation run of strategies/cl2r.py (issue 19): the defaults (the authors'), the
d-simplex written out for K = 2 and 3, the fixed classifier model, the compatibility evaluation set (every test
sample, or a fixed subset of compat_samples), the memory (mem_per_class random samples of each class, kept), the
frozen copy of the last boundary (its state, eval mode, no gradient), the loss (CE over memory + new samples and
lambda = fd_weight * sqrt(new / old) times the cosine distance on the memory samples, with the augmentation and
the memory's preprocessing), the features of the evaluation set (eval mode, no gradient, in batches), the rows of
the compatibility matrix and the checkpointed state."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_mutation_task_il import build_iso, exp_of

from cl.core.compatibility import compatibility_row
from cl.core.registry import ConfigError
from strategies.cl2r import CL2RConfig, SimplexModel, dsimplex

G = torch.Generator().manual_seed(0)
TEST_X = [torch.randn(5, 3, generator=G), torch.randn(4, 3, generator=G)]
TEST_Y = [torch.tensor([0, 1, 0, 1, 0]), torch.tensor([2, 3, 2, 3])]


class _E:
    def __init__(self, x, y):
        self.test_x, self.test_y = x, y


def _cl2r(**cfg):
    s = build_iso("cl2r", experiences=[_E(x, y) for x, y in zip(TEST_X, TEST_Y)], **cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in s.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return s


def test_defaults_are_the_authors():
    c = CL2RConfig()
    assert (c.mem_per_class, c.fd_weight, c.compat_samples) == (20, 5.0, 0)


def test_validation_bounds():
    _cl2r(mem_per_class=1, fd_weight=0.0, compat_samples=0)  # the smallest valid values
    for bad in ({"mem_per_class": 0}, {"mem_per_class": -1}, {"fd_weight": -0.1}, {"compat_samples": -1},
                {"mem_per_class": 0, "compat_samples": -2}):
        with pytest.raises(ConfigError, match="cl2r: mem_per_class must be >= 1, fd_weight >= 0 and compat_samples >= 0"):
            _cl2r(**bad)
    with pytest.raises(ConfigError, match="got mem_per_class=0, fd_weight=-1.0, compat_samples=-3"):
        _cl2r(mem_per_class=0, fd_weight=-1.0, compat_samples=-3)


def test_an_empty_memory_would_give_a_nan_loss():
    """Why mem_per_class = 0 is refused: the distillation term is a mean over no memory sample."""
    s = _cl2r(mem_per_class=1)
    s.cfg.mem_per_class = 0
    s.after_experience(_exp([0, 1], 2, 0))
    assert len(s.mem_y) == 0 and math.isnan(s.loss(torch.randn(2, 3), torch.tensor([2, 3])).item())


def test_dsimplex_written_out_for_two_and_three_classes():
    assert torch.allclose(dsimplex(2), torch.tensor([[1.0], [-1.0]]))
    c, s = math.cos(math.pi / 12), math.sin(math.pi / 12)  # 15 degrees
    r = 1 / math.sqrt(2)
    assert torch.allclose(dsimplex(3), torch.tensor([[c, -s], [-s, c], [-r, -r]]), atol=1e-6)
    assert dsimplex(3).dtype == torch.float32


def test_simplex_model_is_a_bias_free_projection_onto_fixed_vertices():
    with pytest.raises(ValueError, match="at least 2 classes"):
        SimplexModel(torch.nn.Identity(), 1)
    bb = torch.nn.Linear(3, 3)
    bb.out_dim = 3
    m = SimplexModel(bb, 4)
    assert (m.fc1.in_features, m.fc1.out_features) == (3, 3) and m.fc1.bias is None
    assert torch.equal(m.simplex, dsimplex(4)) and "simplex" in dict(m.named_buffers())
    x = torch.randn(2, 3)
    assert torch.allclose(m(x), m.fc1(bb(x)) @ dsimplex(4).t()) and torch.allclose(m.features(x), m.fc1(bb(x)))
    assert SimplexModel(bb, 2).observe(torch.tensor([1])) is None


def test_evaluation_set_is_every_test_sample_or_a_fixed_subset():
    s = _cl2r()
    assert torch.equal(s.eval_x, torch.cat(TEST_X)) and torch.equal(s.eval_y, torch.cat(TEST_Y))
    for n in (9, 20):  # as many as there are, or more: all, in order
        s = _cl2r(compat_samples=n)
        assert torch.equal(s.eval_x, torch.cat(TEST_X)) and torch.equal(s.eval_y, torch.cat(TEST_Y))
    for n in (4, 1):
        s = _cl2r(compat_samples=n)
        idx = torch.randperm(9, generator=torch.Generator().manual_seed(0))[:n]
        assert torch.equal(s.eval_x, torch.cat(TEST_X)[idx]) and torch.equal(s.eval_y, torch.cat(TEST_Y)[idx])
    assert (s.mem_x, s.mem_y, s.old, s.old_state, s.n_old, s.n_new, s.gallery, s.C) == (
        None, None, None, None, 0, 0, [], [])


def _exp(classes, n_per, task, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([c for c in classes for _ in range(n_per)])
    return exp_of(torch.randn(len(y), 3, generator=g), y, classes, task)


def test_memory_is_mem_per_class_samples_of_each_class_and_is_kept():
    s = _cl2r(mem_per_class=2)
    e0 = _exp([0, 1], 3, 0)
    s.before_experience(e0)
    assert s.n_new == 2
    s.after_experience(e0)
    assert s.mem_y.tolist() == [0, 0, 1, 1] and s.n_old == 2
    for xm, ym in zip(s.mem_x, s.mem_y):  # real samples of their class, each once
        assert any(torch.equal(xm, xe) and ym == ye for xe, ye in zip(e0.train_x, e0.train_y))
    assert len({tuple(r.tolist()) for r in s.mem_x}) == 4
    keep = s.mem_x.clone()
    e1 = _exp([2, 3, 1], 1, 1, seed=1)  # one sample of each: fewer than mem_per_class
    s.before_experience(e1)
    assert s.n_new == 3
    s.after_experience(e1)
    assert s.mem_y.tolist() == [0, 0, 1, 1, 2, 3, 1] and torch.equal(s.mem_x[:4], keep) and s.n_old == 5


def test_the_frozen_copy_is_the_model_of_the_last_boundary_in_eval_mode():
    from cl.models.backbones.small import CNNConfig, SmallCNN

    bb = SmallCNN(CNNConfig(channels=2, blocks=1), (1, 4, 4))
    s = build_iso("cl2r", backbone=bb, input_shape=(1, 4, 4),
                  experiences=[_E(torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2]))])
    e = exp_of(torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 0, 1]), [0, 1], 0)
    s.model.train()
    s.after_experience(e)
    x = torch.randn(4, 1, 4, 4)
    s.model.eval()
    want = s.model.features(x).detach()
    s.model.train()
    with torch.no_grad():
        s.model.fc1.weight.add_(1.0)
        s.model.backbone.net[1].running_mean.add_(5.0)
    got = s._old_features(x)
    assert torch.allclose(got, want, atol=1e-6) and not got.requires_grad
    assert s.old is not None and torch.allclose(s._old_features(x), want, atol=1e-6)  # cached
    assert not torch.equal(s.old_state["fc1.weight"], s.model.fc1.weight)  # a copy, not the live tensor
    s.after_experience(e)
    assert s.old is None  # rebuilt from the new boundary's state at its next use
    s.model.eval()
    want2 = s.model.features(x).detach()
    assert not torch.allclose(want2, want) and torch.allclose(s._old_features(x), want2, atol=1e-6)


def test_first_experience_loss_is_plain_cross_entropy_of_the_augmented_batch():
    s = _cl2r()
    x, y = torch.randn(3, 3), torch.tensor([0, 1, 1])
    assert s.loss(x, y).item() == pytest.approx(F.cross_entropy(s.model(x), y).item(), rel=1e-6)
    s.augment = lambda v: v * 2.0
    assert s.loss(x, y).item() == pytest.approx(F.cross_entropy(s.model(2.0 * x), y).item(), rel=1e-6)


@pytest.mark.parametrize("n_new,n_y,n_old", [(3, 5, 1), (2, 2, 1), (1, 2, 2)])  # 1 / 2: a true division
def test_loss_with_memory_is_ce_plus_lambda_times_the_cosine_distance_on_memory(n_new, n_y, n_old):
    s = _cl2r(fd_weight=2.0, mem_per_class=2)
    e0 = _exp([0], 3, 0)  # one old class: n_old = 1
    s.after_experience(e0)
    s.n_old = n_old
    s.mem_x = (torch.arange(12).view(4, 3) * 20).to(torch.uint8)  # uint8 memory: preprocessed (/ 255)
    s.mem_y = torch.tensor([0, 0, 0, 0])
    s.n_new = n_new
    with torch.no_grad():
        s.model.fc1.weight.mul_(-0.5)  # the model moved since the boundary
    x, y = torch.randn(n_y, 3), torch.tensor([1, 2, 3, 1, 2][:n_y])
    s.augment = lambda v: v + 0.1
    torch.manual_seed(0)
    loss = s.loss(x, y)
    torch.manual_seed(0)
    k = min(n_y, 4)
    idx = torch.randperm(4)[:k]
    mx = s.mem_x[idx].float() / 255
    both = torch.cat([mx, x]) + 0.1
    ce = F.cross_entropy(s.model(both), torch.cat([s.mem_y[idx], y]))
    new = F.normalize(s.model.features(both[:k]), dim=1)
    old = F.normalize(s._old_features(both[:k]), dim=1)
    lam = 2.0 * math.sqrt(n_new / n_old)
    assert loss.item() == pytest.approx((ce + lam * (1 - (new * old).sum(1)).mean()).item(), rel=1e-5)


def test_features_of_runs_in_eval_mode_without_gradient_in_batches_and_restores_the_mode():
    s = _cl2r()
    x = torch.randn(5, 3)
    s.model.train()
    f = s.features_of(x, bs=2)
    assert f.shape == (5, 3) and not f.requires_grad and s.model.training and f.dtype == torch.float32
    assert torch.allclose(f, s.model.features(x), atol=1e-6)
    s.model.eval()
    assert torch.allclose(s.features_of(x), f, atol=1e-6) and not s.model.training
    xs = torch.randn(1030, 3)
    assert torch.allclose(s.features_of(xs), s.model.features(xs), atol=1e-5)


def test_each_boundary_adds_a_gallery_and_a_row_of_the_compatibility_matrix():
    s = _cl2r()
    assert s.extra_metrics() == {}
    e0, e1 = _exp([0, 1], 2, 0), _exp([2, 3], 2, 1, seed=1)
    s.after_experience(e0)
    g0 = s.features_of(s.eval_x)
    with torch.no_grad():
        s.model.fc1.weight.mul_(-1.0).add_(0.5)
    s.after_experience(e1)
    assert len(s.gallery) == 2 and torch.allclose(s.gallery[0], g0)
    assert torch.allclose(s.gallery[1], s.features_of(s.eval_x))
    assert s.C == [compatibility_row([g0], s.eval_y), compatibility_row(s.gallery, s.eval_y)]
    m = s.extra_metrics()
    assert m["compatibility"][0][0] == s.C[0][0] and m["compatibility"][1] == s.C[1]


def test_state_round_trip():
    s = _cl2r(mem_per_class=1)
    e0 = _exp([0, 1], 2, 0)
    s.after_experience(e0)
    st = s.extra_state()
    s2 = _cl2r(mem_per_class=1)
    s2.load_extra_state(st)
    assert torch.equal(s2.mem_x, s.mem_x) and torch.equal(s2.mem_y, s.mem_y) and s2.n_old == 2
    assert all(torch.equal(s2.old_state[k], v) for k, v in s.old_state.items()) and s2.old is None
    assert len(s2.gallery) == 1 and torch.equal(s2.gallery[0], s.gallery[0]) and s2.C == s.C
    x = torch.randn(2, 3)
    assert torch.equal(s2._old_features(x), s._old_features(x))
