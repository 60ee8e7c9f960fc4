"""Tests written from the mutation run of strategies/_reg.py (issue 19), the helpers EWC, SI, MAS and RWalk
share: the quadratic penalty and the task gradient on hand-computed tensors, the chunking of the batched and
per-sample helpers, the -inf masking, the eval-mode context, the stiffness warning's bound, and the loss of
the path-integral base class before and after its penalty exists."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from strategies._reg import (
    PathPenalty,
    batched_apply,
    finite_logits,
    in_eval,
    per_sample_grads,
    quad_penalty,
    task_gradients,
    trainable,
    warn_if_stiff,
)


def test_quad_penalty_is_the_weighted_squared_distance_summed_over_parameters():
    p = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([[2.0]])}
    w = {"a": torch.tensor([0.5, 2.0]), "b": torch.tensor([[3.0]])}
    anc = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[-1.0]])}
    # 0.5 * 1^2 + 2 * 2^2 + 3 * 3^2 = 0.5 + 8 + 27
    assert quad_penalty(p, w, anc).item() == pytest.approx(35.5)
    assert quad_penalty({"a": p["a"]}, w, anc).item() == pytest.approx(8.5)


def test_task_gradients_subtract_the_penalty_gradient_and_fill_missing_gradients():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    q = nn.Parameter(torch.tensor([4.0]))  # no gradient: zeros
    p.grad = torch.tensor([0.3, 0.7])
    w, anc = {"p": torch.tensor([2.0, 0.5]), "q": torch.tensor([1.0])}, {"p": torch.tensor([0.5, 1.0]),
                                                                           "q": torch.tensor([3.0])}
    out = task_gradients({"p": p, "q": q}, 0.25, w, anc)
    # g - 2 * 0.25 * w * (p - anchor): [0.3 - 0.5 * 2 * 0.5, 0.7 - 0.5 * 0.5 * (-3)], [0 - 0.5 * 1 * 1]
    assert torch.allclose(out["p"], torch.tensor([-0.2, 1.45]))
    assert torch.allclose(out["q"], torch.tensor([-0.5]))
    assert not out["p"].requires_grad and not out["q"].requires_grad
    none = task_gradients({"p": p, "q": q}, 0.25, None, anc)  # no penalty yet: p.grad as is
    assert torch.equal(none["p"], torch.tensor([0.3, 0.7])) and torch.equal(none["q"], torch.zeros(1))
    none["p"] += 1  # a copy, not the gradient itself
    assert torch.equal(p.grad, torch.tensor([0.3, 0.7]))


def test_trainable_leaves_out_frozen_parameters():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    m[0].weight.requires_grad_(False)
    assert list(trainable(m)) == ["0.bias", "1.weight", "1.bias"]


def test_finite_logits_zero_only_the_non_finite_entries():
    z = torch.tensor([[float("-inf"), 2.0, -3.5], [float("inf"), float("nan"), 0.25]])
    assert torch.equal(finite_logits(z), torch.tensor([[0.0, 2.0, -3.5], [0.0, 0.0, 0.25]]))


@pytest.mark.parametrize("training", [True, False])
def test_in_eval_puts_the_model_in_eval_mode_and_restores_its_mode(training):
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    m.train(training)
    with in_eval(m) as got:
        assert got is m and not m.training and not m[1].training
    assert m.training == training and m[1].training == training
    with pytest.raises(RuntimeError), in_eval(m):  # restored after an error too
        raise RuntimeError
    assert m.training == training


def test_batched_apply_goes_in_batches_of_256_after_the_transform_without_autograd():
    lin = nn.Linear(1, 1)
    sizes = []

    def fn(x):
        sizes.append(len(x))
        return lin(x)

    x = torch.arange(300.0).view(300, 1)
    out = batched_apply(fn, x, lambda v: v * 2)
    assert sizes == [256, 44]
    assert not out.requires_grad
    assert torch.allclose(out, lin(2 * x).detach())
    sizes.clear()
    out = batched_apply(fn, x[:7], lambda v: v, batch_size=3)
    assert sizes == [3, 3, 1] and torch.allclose(out, lin(x[:7]).detach())
    empty = batched_apply(fn, x[:0], lambda v: v)
    assert empty.shape == (0,) and sizes == [3, 3, 1]


class _Affine(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
        self.frozen = nn.Parameter(torch.tensor([0.3, 0.3]), requires_grad=False)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x @ self.w.t() + self.frozen


def test_per_sample_grads_are_each_samples_own_gradient_in_chunks_of_64_in_eval_mode():
    m = _Affine()
    n = 130
    x = torch.linspace(-1, 1, 2 * n).view(n, 2)
    y = torch.arange(n) % 2
    seen = []

    def prep(v):
        seen.append(len(v))
        return v * 3

    chunks = list(per_sample_grads(m, x, y, lambda out, t: out.gather(1, t[:, None]).sum() ** 2, prep))
    assert seen == [64, 64, 2] and [len(c["w"]) for c in chunks] == [64, 64, 2]
    assert list(chunks[0]) == ["w"]  # trainable parameters only
    assert m.training and m.modes and not any(m.modes)  # the forward ran in eval mode, and train mode is back
    g = torch.cat([c["w"] for c in chunks])
    assert g.shape == (n, 2, 2)
    for i in (0, 5, 64, 129):  # d (w_y . 3x + 0.3)^2 / d w_y = 2 out_y 3x, other rows 0
        xi = 3 * x[i]
        out = (m.w[y[i]] @ xi + 0.3).item()
        want = torch.zeros(2, 2)
        want[y[i]] = 2 * out * xi
        assert torch.allclose(g[i], want, atol=1e-5)
    small = list(per_sample_grads(m, x[:5], y[:5], lambda out, t: out.sum(), lambda v: v, chunk=2))
    assert [len(c["w"]) for c in small] == [2, 2, 1]


def test_warn_if_stiff_warns_above_two_only_and_names_the_caller():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_stiff("x", 1.0, 2.0)  # lr * k == 2: on the bound, silent
        warn_if_stiff("x", 4.0, 0.5)  # lr * k == 2 (lr / k = 8)
        warn_if_stiff("x", 0.5, 3.9)
    with pytest.warns(UserWarning, match=r"x: lr \* max penalty curvature = 2.01 > 2") as rec:
        warn_if_stiff("x", 1.0, 2.01)
    assert rec[0].filename == __file__  # stacklevel=2: the warning points at the strategy that called it
    with pytest.warns(UserWarning, match="= 3 > 2"):
        warn_if_stiff("x", 0.5, 6.0)


class _Quad(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0]))


class _PP(PathPenalty):
    def setup(self):
        self.has_penalty = False
        self.anchor = {"theta": torch.tensor([0.0, 1.0])}
        self.weight = {"theta": torch.tensor([2.0, 0.5])}

    def task_loss(self, x, y, t=None):
        return (self.model.theta ** 2).sum() / 10  # 0.5

    def penalty_coef(self):
        return 0.25

    def penalty_weight(self):
        return self.weight


def _pp():
    from cl.core.strategy import RunInfo, StrategyConfig

    s = _PP(StrategyConfig(lr=0.1, momentum=0.0, weight_decay=0.0), _Quad(), RunInfo(1, (1,), torch.device("cpu"), 0))
    s.setup()
    return s


def test_path_penalty_loss_adds_the_weighted_penalty_once_it_exists():
    s = _pp()
    assert s.loss(None, None).item() == pytest.approx(0.5)
    s.has_penalty = True
    # 0.5 + 0.25 * (2 * 1^2 + 0.5 * (-3)^2) = 0.5 + 0.25 * 6.5
    assert s.loss(None, None).item() == pytest.approx(0.5 + 1.625)


def test_record_step_start_keeps_the_task_gradient_and_the_weights_before_the_step():
    s = _pp()
    th = s.model.theta
    th.grad = torch.tensor([1.0, 1.0])
    ps = s.record_step_start()
    assert list(ps) == ["theta"] and ps["theta"] is th
    assert torch.equal(s._g["theta"], torch.tensor([1.0, 1.0]))  # no penalty yet: the gradient as is
    assert torch.equal(s._before["theta"], torch.tensor([1.0, -2.0]))
    with torch.no_grad():
        th.add_(1.0)
    assert torch.equal(s._before["theta"], torch.tensor([1.0, -2.0]))  # a copy
    s.has_penalty = True
    s.record_step_start()
    # 1 - 2 * 0.25 * [2, 0.5] * ([2, -1] - [0, 1]) = 1 - [2, -0.5]
    assert torch.allclose(s._g["theta"], torch.tensor([-1.0, 1.5]))
