"""Tests written from the mutation run of strategies/ranpac.py (issue 19): the paper's defaults, the validation
bounds, the head's shapes without a projection, the seeded random projection, the inert optimiser of Phase 2,
the rows the ridge parameter is chosen on (the permutation seeded by run seed and task), the one-sample task,
the Phase-1 LoRA step and its end, on an identity / mlp backbone over 4 to 8 features."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import strategies.ranpac as ranpac
from cl.core.registry import ConfigError
from cl.models.analytic import RIDGE_GRID, random_projection
from strategies.ranpac import RanPACConfig

from test_ptm3 import backbone, gaussian_tasks, make, scenario, train


def test_defaults_are_the_papers():
    """RanPAC.py: M = 10000, ReLU, lambda from the grid on an 80/20 split, float32; Phase 1 (off by default)
    with cifar224_publish.csv's SGD lr 0.01, momentum 0.9, wd 5e-4; LoRA r 8, alpha 16."""
    c = RanPACConfig()
    assert (c.rp_dim, c.activation, c.ridge, c.fit_fraction, c.precision, c.petl) == (
        10000, "relu", None, 0.8, "float32", "none")
    assert (c.lr, c.momentum, c.weight_decay, c.lora_r, c.lora_alpha, c.frozen_backbone, c.feature_batch) == (
        0.01, 0.9, 5e-4, 8, 16, True, 256)


def test_validation_bounds():
    tasks, C = gaussian_tasks()
    sc = scenario(tasks, C, (8,))
    for ok in ({"rp_dim": 0}, {"fit_fraction": 0.01}, {"fit_fraction": 0.99}, {"ridge": 1e-12},
               {"activation": "none", "rp_dim": 4}):
        make("ranpac", backbone(), sc, **ok)
    for bad, msg in (({"activation": "tanh"}, r"strategy\.activation 'tanh'.*none, relu"),
                     ({"fit_fraction": 0.0}, r"strategy\.fit_fraction must be in \(0, 1\), got 0\.0"),
                     ({"fit_fraction": 1.0}, r"strategy\.fit_fraction must be in \(0, 1\), got 1\.0"),
                     ({"ridge": 0.0}, r"strategy\.ridge must be > 0 or null"),
                     ({"ridge": -1.0}, r"strategy\.ridge must be > 0 or null")):
        with pytest.raises(ConfigError, match=msg):
            make("ranpac", backbone(), sc, **bad)


def test_no_projection_is_a_ridge_on_the_raw_features():
    tasks, C = gaussian_tasks(d=4)
    sc = scenario(tasks, C, (4,))
    s = make("ranpac", backbone(shape=(4,)), sc, rp_dim=0, ridge=0.5, precision="float64")
    h = s.model.head
    assert h.w_rand.numel() == 0 and h.weight.shape == (C, 4) and h.G.shape == (4, 4) and h.Q.shape == (4, C)
    train(s, sc[0])
    X = sc[0].train_x.double()
    Y = F.one_hot(sc[0].train_y, C).double()
    W = torch.linalg.solve(X.t() @ X + 0.5 * torch.eye(4, dtype=X.dtype), X.t() @ Y)
    assert torch.allclose(h.weight, W.t(), atol=1e-10)
    x = torch.randn(3, 4)
    out = s.predict(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, :2], (x.double() @ W).float()[:, :2], atol=1e-5) and torch.isinf(out[:, 2:]).all()


def test_projection_is_seeded_by_the_run_and_activation_none_is_linear():
    tasks, C = gaussian_tasks()
    sc = scenario(tasks, C, (8,))
    s = make("ranpac", backbone(), sc, seed=7, rp_dim=5, activation="none", precision="float64")
    h = s.model.head
    assert h.w_rand.dtype == torch.float64 and h.G.dtype == torch.float64 and h.G.shape == (5, 5)
    assert torch.equal(h.w_rand, random_projection(8, 5, 7, dtype=torch.float64))
    x = torch.randn(4, 8)
    assert torch.allclose(h.hidden(x), x.double() @ h.w_rand)  # no ReLU: negative entries stay
    assert (h.hidden(x) < 0).any()
    s2 = make("ranpac", backbone(), sc, seed=7, rp_dim=5)
    assert torch.equal(s2.model.head.hidden(x), torch.relu(x @ s2.model.head.w_rand))


def test_phase_two_only_trains_nothing_with_an_inert_optimiser():
    tasks, C = gaussian_tasks()
    sc = scenario(tasks, C, (8,))
    s = make("ranpac", backbone(), sc, rp_dim=6, ridge=1.0)
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    assert len(params) == 1 and params[0].shape == () and s.optimizer.param_groups[0]["lr"] == 0.0
    assert s.session == -1 and s.lambdas == [] and s.tuned
    s.before_experience(sc[0])
    assert s.session == 0
    x, y = s.train_data(sc[0])
    assert torch.equal(x, sc[0].train_x[:1]) and torch.equal(y, sc[0].train_y[:1])
    loss = s.train_step(sc[0].train_x, sc[0].train_y)
    assert loss.shape == () and loss.item() == 0.0
    assert s.extra_metrics() == {}
    s.after_experience(sc[0])
    assert s.extra_metrics() == {"ridge_lambda_per_exp": [1.0]}


def test_lambda_is_chosen_on_the_rows_of_the_seeded_permutation(monkeypatch):
    tasks, C = gaussian_tasks(per=7)
    sc = scenario(tasks, C, (8,))
    calls = []

    def spy(H, Y, grid, fit):
        calls.append((H.clone(), Y.clone(), grid, fit))
        return 100.0, []

    monkeypatch.setattr(ranpac, "select_ridge", spy)
    s = make("ranpac", backbone(), sc, seed=3, rp_dim=6, fit_fraction=0.6, precision="float64")
    for exp in sc:
        train(s, exp)
    assert s.lambdas == [100.0, 100.0]
    h = s.model.head
    for t, (H, Y, grid, fit) in enumerate(calls):
        perm = torch.randperm(14, generator=torch.Generator().manual_seed(3 * 1000 + t))
        Ht = torch.relu(sc[t].train_x.double() @ h.w_rand)
        assert torch.equal(H, Ht[perm]) and torch.equal(Y, F.one_hot(sc[t].train_y, C).double()[perm])
        assert grid == RIDGE_GRID and fit == 0.6
    X = torch.cat([e.train_x for e in sc]).double()
    Hall = torch.relu(X @ h.w_rand)
    W = torch.linalg.solve(Hall.t() @ Hall + 100.0 * torch.eye(6, dtype=X.dtype),
                           Hall.t() @ F.one_hot(torch.cat([e.train_y for e in sc]), C).double())
    assert torch.allclose(h.weight, W.t(), atol=1e-10)  # the chosen lambda is the one solved with


def test_a_one_sample_task_takes_lambda_one_and_an_empty_task_changes_nothing():
    x = torch.randn(1, 8)
    sc = scenario([(x, torch.tensor([0])), (torch.randn(0, 8), torch.zeros(0, dtype=torch.long))], 2, (8,))
    s = make("ranpac", backbone(), sc, rp_dim=6)
    train(s, sc[0])
    assert s.lambdas == [1.0]
    assert s.model.head.seen.tolist() == [True, False]
    w = s.model.head.weight.clone()
    s.before_experience(sc[1])
    s.after_experience(sc[1])
    assert s.lambdas == [1.0] and torch.equal(s.model.head.weight, w)


def test_phase_one_trains_the_lora_and_probe_on_the_first_task_then_freezes():
    tasks, C = gaussian_tasks()
    sc = scenario(tasks, C, (8,))
    bb = backbone("mlp", shape=(8,))
    bb.bn = nn.BatchNorm1d(2)
    s = make("ranpac", bb, sc, rp_dim=6, ridge=1.0, petl="lora", frozen_backbone=False, lr=0.2, momentum=0.5,
             weight_decay=0.01)
    m = s.model
    assert not s.tuned
    g = s.optimizer.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.2, 0.5, 0.01)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n or n.startswith("probe") for n in trainable)
    s.before_experience(sc[0])
    x, y = s.train_data(sc[0])
    assert torch.equal(x, sc[0].train_x)
    m.train()
    m.observe(y)  # (as train_step does first: the probe masks the classes it has not seen)
    torch.manual_seed(5)  # the same dropout masks in both
    got = s.loss(x, y)
    torch.manual_seed(5)
    with torch.no_grad():  # (BatchNorm layers now frozen by the loss)
        want = F.cross_entropy(m.probe(m.backbone(x)).float(), y)
    assert torch.allclose(got, want)
    assert not m.backbone.bn.training  # BatchNorm statistics frozen under the adapter
    before = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    m.probe.seen.zero_()
    assert torch.isfinite(s.train_step(x, y))
    assert all(not torch.equal(before[n], p) for n, p in m.named_parameters() if n in before and "lora_B" in n)
    assert m.probe.seen.tolist() == [True, True, False, False]  # the probe head marks its classes
    s.after_experience(sc[0])
    assert s.tuned and not any(p.requires_grad for p in m.backbone.parameters())
    s.before_experience(sc[1])
    assert len(s.train_data(sc[1])[1]) == 1 and s.train_step(x, y).item() == 0.0


def test_a_two_sample_task_chooses_lambda_on_its_split(monkeypatch):
    monkeypatch.setattr(ranpac, "select_ridge", lambda H, Y, grid, fit: (100.0, []))
    sc = scenario([(torch.randn(2, 8), torch.tensor([0, 1]))], 2, (8,))
    s = make("ranpac", backbone(), sc, rp_dim=6)
    train(s, sc[0])
    assert s.lambdas == [100.0]


def test_one_random_feature_and_float32_logits_without_autocast():
    tasks, C = gaussian_tasks()
    sc = scenario(tasks, C, (8,))
    s = make("ranpac", backbone(), sc, rp_dim=1, ridge=1.0)
    h = s.model.head
    assert h.w_rand.shape == (8, 1) and h.G.shape == (1, 1) and h.weight.shape == (C, 1)
    train(s, sc[0])
    s = make("ranpac", backbone(), sc, rp_dim=16, ridge=0.1)  # float32 throughout
    for exp in sc:
        train(s, exp)
    h = s.model.head
    x = torch.randn(5, 8)
    want = torch.relu(x @ h.w_rand) @ h.weight.t()
    with torch.autocast("cpu", enabled=True):  # a bf16 autocast region around it changes nothing
        got = s.predict(x)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-6, rtol=1e-6)


def test_phase_two_only_freezes_the_backbone():
    tasks, C = gaussian_tasks()
    s = make("ranpac", backbone("mlp", shape=(8,)), scenario(tasks, C, (8,)), rp_dim=4)
    assert not any(p.requires_grad for p in s.model.backbone.parameters())
