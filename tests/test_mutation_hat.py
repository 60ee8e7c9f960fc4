"""Tests written from the mutation run of strategies/hat.py (issue 19): the defaults (the authors' code), the
gates (sigmoid(s e), binary at e >= 0), the gated forward of an MLP and a CNN written out, the annealing of s
over an epoch's batches, the loss (CE over the task's classes + c * the attention regulariser), each gradient
rule of a later task against its formula on a constructed cumulative mask (weights, biases, BatchNorm, the
embeddings' compensation with its cosh clamp, the clipping, the embedding clamp), the cumulative mask after
a task and the checkpointed state."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from test_mutation_task_il import (
    assert_batchnorm_trained_on_the_first_task_only,
    build_iso,
    exp_of,
)
from torch import nn

from cl.core.registry import ConfigError
from cl.models.backbones.small import CNNConfig, SmallCNN
from cl.models.multihead import restrict
from strategies.hat import HATConfig, _units

X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0], [2.0, 0.1, 0.4], [-0.5, 1.5, 1.0]])


def _randomise(s, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in s.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_defaults_are_the_authors():
    c = HATConfig()
    assert (c.lr, c.smax, c.c, c.clipgrad, c.thres_cosh, c.thres_emb, c.binary_test_mask) == (
        0.05, 400.0, 0.75, 10000.0, 50.0, 6.0, True)


def test_validation_bounds():
    build_iso("hat", smax=1e-3, c=0.0, clipgrad=1e-6, thres_cosh=1e-3, thres_emb=1e-3)  # small valid values
    for bad in ({"smax": 0.0}, {"smax": -400.0}, {"c": -0.1}, {"clipgrad": 0.0}, {"thres_cosh": 0.0},
                {"thres_emb": 0.0}, {"thres_emb": -6.0}):
        with pytest.raises(ConfigError, match="hat: smax, clipgrad, thres_cosh and thres_emb must be > 0 and c >= 0"):
            build_iso("hat", **bad)
    with pytest.raises(ConfigError, match="got smax=0.0, c=-1.0, clipgrad=2.0, thres_cosh=3.0, thres_emb=4.0"):
        build_iso("hat", smax=0.0, c=-1.0, clipgrad=2.0, thres_cosh=3.0, thres_emb=4.0)


def test_units_embeddings_and_initial_state():
    assert _units(nn.Conv2d(2, 5, 3)) == 5 and _units(nn.Linear(2, 7)) == 7
    s = build_iso("hat", n_tasks=3)
    assert [tuple(e.weight.shape) for e in s.model.embs] == [(3, 4), (3, 4)]
    assert [c.tolist() for c in s.cum] == [[0.0] * 4, [0.0] * 4]
    assert (s.step_in_epoch, s.batches) == (0, 1)
    s.before_experience(exp_of(X, torch.tensor([0, 1, 0, 1]), [0, 1], 0))
    assert (s.step_in_epoch, s.n_train, s.batches) == (0, 4, 0)


def test_gates_are_sigmoid_of_s_e_and_binary_at_e_at_least_zero():
    s = build_iso("hat")
    with torch.no_grad():
        s.model.embs[0].weight[1] = torch.tensor([-0.1, 0.0, 0.2, -3.0])
    g = s.model.gates(1, 2.0)[0]
    assert torch.allclose(g, torch.sigmoid(torch.tensor([-0.2, 0.0, 0.4, -6.0])))
    assert s.model.gates(1, 2.0, binary=True)[0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert s.test_gates(1)[0].tolist() == [0.0, 1.0, 1.0, 0.0]  # binary at test time by default
    s2 = build_iso("hat", binary_test_mask=False, smax=3.0)
    with torch.no_grad():
        s2.model.embs[0].weight[1] = torch.tensor([-0.1, 0.0, 0.2, -3.0])
    assert torch.allclose(s2.test_gates(1)[0], torch.sigmoid(3.0 * torch.tensor([-0.1, 0.0, 0.2, -3.0])))


def test_forward_gates_each_stages_output_mlp():
    s = build_iso("hat")
    _randomise(s)
    s.model.observe(torch.arange(4))
    m = s.model
    g1, g2 = torch.tensor([1.0, 0.5, 0.0, 2.0]), torch.tensor([0.3, 1.0, 1.0, 0.0])
    h1 = F.relu(m.mains[0](X)) * g1
    h2 = F.relu(m.mains[1](h1)) * g2
    assert torch.allclose(m(X, [g1, g2]), m.head(h2), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(s.predict(X, 0), m(X, m.gates(0, 400.0, binary=True)))


def _cnn_hat(**cfg):
    torch.manual_seed(0)
    return build_iso("hat", backbone=SmallCNN(CNNConfig(channels=2, blocks=2), (1, 5, 6)), input_shape=(1, 5, 6), **cfg)


def test_forward_gates_the_channels_of_a_cnn():
    s = _cnn_hat()
    m = s.model
    m.eval()
    m.observe(torch.arange(4))
    x = torch.randn(3, 1, 5, 6)
    g1, g2 = torch.tensor([0.0, 1.0]), torch.tensor([0.5, 1.0, 0.0, 2.0])
    h = m.posts[0](m.mains[0](x)) * g1.view(1, 2, 1, 1)  # conv, BN, ReLU, max-pool; then gate the channels
    assert h.shape == (3, 2, 3, 3)
    h = m.posts[1](m.mains[1](h)) * g2.view(1, 4)  # ... pool to 1 x 1, flatten: gate the features
    assert torch.allclose(m(x, [g1, g2]), m.head(h), atol=1e-6)


def test_regulariser_is_the_gated_share_of_the_free_units():
    s = build_iso("hat")
    s.cum = [torch.tensor([0.0, 1.0, 0.5, 0.25]), torch.tensor([1.0, 1.0, 0.0, 0.0])]
    gates = [torch.tensor([0.2, 0.9, 0.4, 1.0]), torch.tensor([0.5, 0.5, 0.1, 0.3])]
    num = 0.2 * 1 + 0.9 * 0 + 0.4 * 0.5 + 1.0 * 0.75 + 0.1 + 0.3
    den = 1 + 0 + 0.5 + 0.75 + 0 + 0 + 1 + 1
    assert s.regulariser(gates).item() == pytest.approx(num / den)


def _spy_s(s):
    seen = []
    gates = s.model.gates

    def spy(t, sv, binary=False):
        if not binary:
            seen.append(sv)
        return gates(t, sv, binary)

    s.model.gates = spy
    return seen


def test_s_is_annealed_from_1_over_smax_to_smax_over_the_epochs_batches():
    s = build_iso("hat", smax=10.0, lr=0.0)
    x = torch.randn(10, 3)
    y = torch.arange(10) % 2
    s.before_experience(exp_of(x, y, [0, 1], 0))
    seen = _spy_s(s)
    for bs in (3, 5, 3, 1, 3, 3):  # B = ceil(10 / 3) = 4 from the first batch, whatever the later sizes
        s.train_step(x[:bs], y[:bs], 0)
    ramp = [0.1 + (10.0 - 0.1) * b / 3 for b in range(4)]
    assert seen == pytest.approx(ramp + ramp[:2])
    assert s.batches == 4 and s.step_in_epoch == 2
    # two batches an epoch: s = 1 / smax, then smax
    s.before_experience(exp_of(x[:4], y[:4], [0, 1], 0))
    seen.clear()
    for _ in range(3):
        s.train_step(x[:2], y[:2], 0)
    assert seen == pytest.approx([0.1, 10.0, 0.1]) and s.batches == 2
    # one batch an epoch: s = 1 / smax at every step
    s.before_experience(exp_of(x[:2], y[:2], [0, 1], 0))
    seen.clear()
    for _ in range(2):
        s.train_step(x[:2], y[:2], 0)
    assert seen == pytest.approx([0.1, 0.1]) and s.batches == 1 and s.step_in_epoch == 0


def test_the_returned_loss_is_ce_over_the_tasks_classes_plus_c_times_the_regulariser():
    s = build_iso("hat", c=0.5, smax=4.0, lr=0.0)
    _randomise(s)
    y = torch.tensor([0, 1, 0, 1])
    s.before_experience(exp_of(X, y, [0, 1], 0))
    s.model.observe(torch.arange(4))
    gates = s.model.gates(0, 0.25)  # s = 1 / smax at the first batch
    ce = F.cross_entropy(s.model(X, gates)[:, :2], y)
    reg = sum(g.sum() for g in gates) / 8  # nothing used yet: every unit free
    assert s.train_step(X, y, 0).item() == pytest.approx((ce + 0.5 * reg).item(), rel=1e-5)


def _expected_grads(s, x, y, sv):
    """The gradients of a later task's step by the rules of the paper / the authors' code."""
    m = copy.deepcopy(s.model)
    m.train()
    gates = m.gates(s.task, sv)
    ce = F.cross_entropy(restrict(m(x, gates).float(), s.task_mask), y)
    num = sum((g * (1 - c)).sum() for g, c in zip(gates, s.cum))
    den = sum((1 - c).sum() for c in s.cum)
    (ce + s.cfg.c * num / den).backward()
    c1, c2 = s.cum
    out = {
        "w1": m.mains[0].weight.grad * (1 - c1).view(-1, 1),
        "b1": m.mains[0].bias.grad * (1 - c1),
        "w2": m.mains[1].weight.grad * (1 - torch.minimum(c2.view(-1, 1), c1.view(1, -1))),
        "b2": m.mains[1].bias.grad * (1 - c2),
        "head": m.head.fc.weight.grad,
    }
    for i, e in enumerate(m.embs):
        w = e.weight.detach()
        comp = s.cfg.smax / sv * (torch.cosh(torch.clamp(sv * w, -s.cfg.thres_cosh, s.cfg.thres_cosh)) + 1) / (torch.cosh(w) + 1)
        out[f"e{i}"] = e.weight.grad * comp
    return out


@pytest.mark.parametrize("thres_cosh", [50.0, 0.3])
def test_a_later_tasks_gradients_follow_the_masks_and_the_compensation(thres_cosh):
    s = build_iso("hat", lr=0.0, smax=2.0, thres_cosh=thres_cosh, thres_emb=100.0)
    _randomise(s, 3)
    with torch.no_grad():
        for e in s.model.embs:
            e.weight.mul_(3.0)  # s e beyond the cosh clamp where thres_cosh = 0.3
    y = torch.tensor([2, 3, 2, 3])
    s.model.observe(torch.arange(4))
    s.cum = [torch.tensor([0.0, 1.0, 0.3, 0.8]), torch.tensor([0.6, 0.0, 1.0, 0.2])]
    s.before_experience(exp_of(X, y, [2, 3], 1))
    s.step_in_epoch, s.batches = 1, 3  # the second batch of three: s = 1/2 + (2 - 1/2) / 2 = 1.25
    want = _expected_grads(s, X, y, 1.25)
    s.train_step(X, y, 1)
    m = s.model
    got = {"w1": m.mains[0].weight.grad, "b1": m.mains[0].bias.grad, "w2": m.mains[1].weight.grad,
           "b2": m.mains[1].bias.grad, "head": m.head.fc.weight.grad, "e0": m.embs[0].weight.grad,
           "e1": m.embs[1].weight.grad}
    for k, v in want.items():
        assert torch.allclose(got[k], v, rtol=1e-5, atol=1e-7), k
    assert got["e0"][1].abs().sum() > 0 and torch.all(got["w1"][1] == 0)  # unit 1 of layer 1 is used: blocked


def test_a_later_tasks_conv_gradients_follow_the_masks_of_both_layers_units():
    s = _cnn_hat(lr=0.0, smax=2.0)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(4, 1, 5, 6, generator=g), torch.tensor([2, 3, 2, 3])
    s.model.observe(torch.arange(4))
    s.cum = [torch.tensor([1.0, 0.7]), torch.tensor([1.0, 0.2, 0.5, 0.0])]
    s.before_experience(exp_of(x, y, [2, 3], 1))
    m = copy.deepcopy(s.model)
    m.train()
    for bn in (m.posts[0][0], m.posts[1][0]):
        bn.eval()
    gates = m.gates(1, 0.5)
    ce = F.cross_entropy(restrict(m(x, gates), s.task_mask), y)
    num = sum((gt * (1 - c)).sum() for gt, c in zip(gates, s.cum))
    (ce + 0.75 * num / sum((1 - c).sum() for c in s.cum)).backward()
    s.train_step(x, y, 1)
    c1, c2 = s.cum
    w1, w2 = s.model.mains[0].weight.grad, s.model.mains[1].weight.grad
    assert torch.allclose(w1, m.mains[0].weight.grad * (1 - c1).view(-1, 1, 1, 1), atol=1e-7)
    assert torch.allclose(w2, m.mains[1].weight.grad * (1 - torch.minimum(c2.view(-1, 1, 1, 1), c1.view(1, -1, 1, 1))),
                          atol=1e-7)
    assert torch.allclose(s.model.mains[1].bias.grad, m.mains[1].bias.grad * (1 - c2), atol=1e-7)
    assert w2[1, 0].abs().sum() > 0 and torch.all(w2[0, 0] == 0) and w2[0, 1].abs().sum() > 0  # both units used: blocked
    assert torch.all(w1[0] == 0) and w1[1].abs().sum() > 0


def test_the_first_tasks_gradients_are_not_masked():
    s = build_iso("hat", lr=0.0, smax=2.0)
    _randomise(s, 4)
    s.cum = [torch.tensor([0.0, 1.0, 0.3, 0.8]), torch.tensor([0.6, 0.0, 1.0, 0.2])]  # ignored at task 0
    y = torch.tensor([0, 1, 0, 1])
    s.before_experience(exp_of(X, y, [0, 1], 0))
    s.model.observe(y)
    m = copy.deepcopy(s.model)
    gates = m.gates(0, 0.5)
    ce = F.cross_entropy(restrict(m(X, gates), s.task_mask), y)
    (ce + 0.75 * sum((g * (1 - c)).sum() for g, c in zip(gates, s.cum)) / sum((1 - c).sum() for c in s.cum)).backward()
    s.train_step(X, y, 0)
    assert torch.allclose(s.model.mains[0].weight.grad, m.mains[0].weight.grad, atol=1e-7)
    assert torch.allclose(s.model.mains[1].bias.grad, m.mains[1].bias.grad, atol=1e-7)


def test_batchnorm_is_trained_on_the_first_task_only():
    s = _cnn_hat()
    bn = s.model.posts[0][0]
    assert isinstance(bn, nn.BatchNorm2d)
    assert_batchnorm_trained_on_the_first_task_only(s, bn, torch.randn(4, 1, 5, 6))


def test_gradients_are_clipped_to_clipgrad_and_embeddings_clamped_to_thres_emb():
    s = build_iso("hat", lr=0.0, clipgrad=1e-3)
    _randomise(s)
    y = torch.tensor([0, 1, 0, 1])
    s.before_experience(exp_of(X, y, [0, 1], 0))
    s.train_step(X, y, 0)
    norm = torch.norm(torch.stack([p.grad.norm() for p in s.model.parameters() if p.grad is not None]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)
    s2 = build_iso("hat", lr=0.0, thres_emb=0.5)
    _randomise(s2)
    with torch.no_grad():
        s2.model.embs[0].weight[0] = torch.tensor([-2.0, 0.3, 0.7, -0.5])
    s2.before_experience(exp_of(X, y, [0, 1], 0))
    s2.train_step(X, y, 0)
    assert s2.model.embs[0].weight[0].tolist() == pytest.approx([-0.5, 0.3, 0.5, -0.5])


def test_after_a_task_the_cumulative_mask_is_the_max_with_its_test_gates():
    s = build_iso("hat", binary_test_mask=False, smax=1.0)
    with torch.no_grad():
        s.model.embs[0].weight[0] = torch.tensor([0.0, 2.0, -2.0, 0.0])
        s.model.embs[1].weight[0] = torch.tensor([-9.0, 9.0, 0.0, 1.0])
    s.cum = [torch.tensor([0.7, 0.1, 0.0, 0.2]), torch.zeros(4)]
    s.after_experience(None)
    sg = torch.sigmoid
    assert torch.allclose(s.cum[0], torch.tensor([0.7, sg(torch.tensor(2.0)).item(), sg(torch.tensor(-2.0)).item(), 0.5]))
    assert torch.allclose(s.cum[1], sg(torch.tensor([-9.0, 9.0, 0.0, 1.0])))
    assert not any(c.requires_grad for c in s.cum)
    b = build_iso("hat")
    with torch.no_grad():
        b.model.embs[0].weight[0] = torch.tensor([0.0, 2.0, -2.0, -1e-3])
    b.after_experience(None)
    assert b.cum[0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_state_round_trip():
    s = build_iso("hat")
    s.cum = [torch.tensor([0.0, 1.0, 0.5, 0.25]), torch.tensor([1.0, 1.0, 0.0, 0.0])]
    s2 = build_iso("hat")
    s2.load_extra_state(s.extra_state())
    assert all(torch.equal(a, b) for a, b in zip(s2.cum, s.cum)) and len(s2.cum) == 2
    assert math.isclose(s2.regulariser([torch.ones(4), torch.ones(4)]).item(), 1.0)
