"""Tests written from the mutation run of strategies/rmn.py (issue 19): the defaults, the relevance maps
(scores initialised at map_init, a strict threshold, a straight-through gradient only when asked), the masked
forward W * M_t, the training step's loss (CE over the task's classes + sparsity * ||S_t||_1), what a later task
may change (free weights only: relevant weights get zero gradient and stay bitwise, biases and BatchNorm only on
the first task), the union of the maps, the reported fractions and the checkpointed state."""
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

from cl.core.registry import ConfigError
from cl.models.backbones.small import CNNConfig, SmallCNN
from strategies.rmn import RMNConfig

X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0], [2.0, 0.1, 0.4], [-0.5, 1.5, 1.0]])


def test_defaults_are_piggybacks_scale():
    c = RMNConfig()
    assert (c.map_init, c.threshold, c.sparsity) == (0.01, 0.005, 1e-4)


def test_sparsity_bound():
    build_iso("rmn", sparsity=0.0)
    for bad in (-1e-4, -1.0):
        with pytest.raises(ConfigError, match=f"rmn: sparsity must be >= 0 \\(an L1 weight\\), got sparsity={bad}"):
            build_iso("rmn", sparsity=bad)


def test_scores_start_at_map_init_and_maps_use_a_strict_threshold():
    s = build_iso("rmn", n_tasks=3, map_init=0.25)
    m = s.model
    assert m.layers == ["backbone.net.1.weight", "backbone.net.3.weight"]
    params = dict(m.net.named_parameters())
    assert len(m.scores) == 3
    for t in range(3):
        assert [p.shape for p in m.scores[t]] == [params[n].shape for n in m.layers]
        assert all(torch.all(p == 0.25) for p in m.scores[t])
    with torch.no_grad():
        m.scores[1][0].view(-1)[:3] = torch.tensor([0.1, 0.2, 0.3])
    mp = m.maps(1, 0.2, ste=False)[0].view(-1)
    assert mp[:3].tolist() == [0.0, 0.0, 1.0] and torch.all(mp[3:] == 1.0)  # 0.2 is not above 0.2
    assert not mp.requires_grad


def test_straight_through_maps_are_exactly_binary_and_pass_the_gradient_to_the_scores():
    s = build_iso("rmn")
    m = s.model
    with torch.no_grad():
        m.scores[0][0].view(-1)[:2] = torch.tensor([0.001, 0.5])
    mp = m.maps(0, 0.005, ste=True)
    assert torch.equal(mp[0], m.maps(0, 0.005, ste=False)[0])  # the same values
    (mp[0] * 3.0).sum().backward()
    assert torch.all(m.scores[0][0].grad == 3.0)  # d m / d s = 1


def test_forward_runs_the_net_with_each_weight_times_its_map():
    s = build_iso("rmn")
    m = s.model
    m.net.observe(torch.arange(4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.scores[1]:
            p.copy_(torch.rand(p.shape, generator=g))
        for p in m.net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    ref = copy.deepcopy(m.net)
    with torch.no_grad():
        for n, mp in zip(m.layers, m.maps(1, 0.5, ste=False)):
            dict(ref.named_parameters())[n].mul_(mp)
    out = m(X, 1, 0.5)
    assert torch.allclose(out, ref(X), atol=1e-6)
    assert not torch.allclose(out, m.net(X))
    out.sum().backward()  # without the straight-through estimator the scores get no gradient
    assert all(p.grad is None for p in m.scores[1])


def _train_task(s, task, classes, y, steps=1, x=X):
    s.before_experience(exp_of(x, y, classes, task))
    losses = [s.train_step(x, y, task) for _ in range(steps)]
    return losses


def test_the_loss_is_ce_over_the_tasks_classes_plus_sparsity_times_the_l1_of_its_scores():
    s = build_iso("rmn", sparsity=0.5, lr=0.0, map_init=0.01)
    y = torch.tensor([0, 1, 0, 1])
    s.before_experience(exp_of(X, y, [0, 1], 0))
    s.model.net.observe(torch.arange(4))
    logits = s.model(X, 0, s.cfg.threshold).detach()
    ce = F.cross_entropy(logits[:, :2], y)
    l1 = sum(p.numel() for p in s.model.scores[0]) * 0.01
    loss = s.train_step(X, y, 0)
    assert math.isclose(loss.item(), ce.item() + 0.5 * l1, rel_tol=1e-5)
    # the L1 term's gradient reaches the current scores: sparsity * sign(S) (+ the CE's straight-through part)
    s2 = build_iso("rmn", sparsity=0.5, lr=1.0)
    s2.before_experience(exp_of(X, y, [0, 1], 0))
    s2.cfg.threshold = 10.0  # every map 0: the CE does not depend on the scores, only the L1 term moves them
    s2.train_step(X, y, 0)
    assert all(torch.allclose(p, torch.full_like(p, 0.01 - 0.5)) for p in s2.model.scores[0])
    assert all(torch.all(p == 0.01) for p in s2.model.scores[1])


def test_a_later_task_changes_only_free_weights_and_never_biases():
    s = build_iso("rmn", lr=0.5, momentum=0.9, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in s.model.net.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.1)  # positive weights and inputs: no dead unit,
    params = dict(s.model.net.named_parameters())  # so every weight gets a gradient
    bias0 = {n: p.detach().clone() for n, p in params.items() if n.endswith("bias")}
    _train_task(s, 0, [0, 1], torch.tensor([0, 1, 0, 1]), steps=2, x=X.abs())
    assert all(not torch.equal(params[n], b) for n, b in bias0.items() if n.startswith("backbone"))  # task 0 trains them
    with torch.no_grad():  # make half of each layer relevant to task 0; task 1's maps all 1 (no zero gradient)
        for p in s.model.scores[0]:
            p.fill_(1.0)
            p.view(-1)[::2] = -1.0
        for p in s.model.scores[1]:
            p.fill_(10.0)
    s.after_experience(None)
    m0 = [mp.bool() for mp in s.model.maps(0, s.cfg.threshold, ste=False)]
    assert all(torch.equal(u, mp) for u, mp in zip(s.used.values(), m0))
    before = {n: p.detach().clone() for n, p in params.items()}
    s0 = [p.detach().clone() for p in s.model.scores[0]]
    _train_task(s, 1, [2, 3], torch.tensor([2, 3, 2, 3]), steps=3, x=X.abs())
    for n, mp in zip(s.model.layers, m0):
        assert torch.equal(params[n][mp], before[n][mp])  # relevant to task 0: bitwise
        assert torch.all(params[n].grad[mp] == 0) and params[n].grad[~mp].abs().min() > 0  # ... with zero gradient
        assert mp.sum() == mp.numel() // 2
        assert not torch.equal(params[n][~mp], before[n][~mp])  # free weights train
    for n, p in params.items():
        if n.startswith("backbone") and n.endswith("bias"):
            assert torch.equal(p, before[n]), n  # biases: first task only
    # task 0's scores get no gradient (None, not zeros): weight decay and momentum leave its map alone
    assert all(p.grad is None for p in s.model.scores[0]) and all(torch.equal(a, b) for a, b in zip(s.model.scores[0], s0))


def test_batchnorm_is_trained_on_the_first_task_only():
    s = build_iso("rmn", backbone=SmallCNN(CNNConfig(channels=2, blocks=1), (1, 4, 4)), input_shape=(1, 4, 4))
    assert_batchnorm_trained_on_the_first_task_only(s, s.model.net.backbone.net[1], torch.randn(4, 1, 4, 4))


def test_used_is_the_union_of_the_tasks_maps_and_its_fractions_are_reported():
    s = build_iso("rmn", n_tasks=3)
    with torch.no_grad():
        for p in s.model.scores[0]:
            p.zero_()
            p.view(-1)[0] = 1.0
        for p in s.model.scores[1]:
            p.zero_()
            p.view(-1)[1] = 1.0
    s.task = 0
    s.after_experience(None)
    s.task = 1
    s.after_experience(None)
    for u in s.used.values():
        assert u.view(-1)[:2].tolist() == [True, True] and int(u.sum()) == 2
    # layer sizes 3 x 4 = 12 and 4 x 4 = 16: 2 / 12 and 2 / 16, to 4 decimals
    assert s.extra_metrics() == {"weights_used": [0.1667, 0.125]}
    with torch.no_grad():
        s.used["backbone.net.1.weight"].view(-1)[:4] = True
    assert s.extra_metrics()["weights_used"][0] == 0.3333


def test_state_round_trip_restores_the_used_weights():
    s = build_iso("rmn")
    with torch.no_grad():
        s.used["backbone.net.3.weight"][1, 2] = True
    st = s.extra_state()
    s2 = build_iso("rmn")
    s2.load_extra_state(st)
    assert set(s2.used) == set(s.used) and all(torch.equal(s2.used[n], s.used[n]) for n in s.used)
    assert s2.used["backbone.net.3.weight"].dtype == torch.bool
