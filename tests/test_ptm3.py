"""Mechanism tests for issue 16's analytic and LoRA strategies (RanPAC, FeCAM, SLCA, InfLoRA, LAE) and the
shared closed-form pieces in cl/models/analytic.py.  Tiny mlp / identity backbones and a random-init tiny ViT
on the CPU; every test takes a second or two."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, backbones, strategies
from cl.core.strategy import RunInfo
from cl.core.streams import Scenario
from cl.models.backbones import build_backbone
from cl.models import analytic


def backbone(name="identity", shape=(8,), **kw):
    entry = backbones.get(name)
    return build_backbone(name, entry.config(**kw), shape)


def scenario(tasks, n_classes, shape):
    """tasks: list of (x, y) training tensors; the test data are the first 4 training samples."""
    exps = []
    for t, (x, y) in enumerate(tasks):
        cls = sorted(set(y.tolist()))
        exps.append(SimpleNamespace(train_x=x, train_y=y, test_x=x[:4], test_y=y[:4], classes=cls, task_id=None,
                                    index=t))
    return Scenario("ptm3-fake", exps, n_classes, shape, list(range(n_classes)), modality="features")


def make(name, bb, sc, seed=0, **cfg):
    entry = strategies.get(name)
    scfg = entry.config(**cfg)
    model = entry.obj.build_model(scfg, bb, sc)
    info = RunInfo(n_classes=sc.n_classes, input_shape=sc.input_shape, device=torch.device("cpu"), seed=seed,
                   setting=sc.setting, n_experiences=len(sc))
    s = entry.obj(scfg, model, info)
    s.setup()
    return s


def train(s, exp, steps=None, batch=8):
    s.before_experience(exp)
    s.model.train()
    x, y = s.train_data(exp)
    n = len(y) if steps is None else min(len(y), steps * batch)
    for i in range(0, n, batch):
        s.train_step(x[i:i + batch], y[i:i + batch])
    s.after_experience(exp)


def gaussian_tasks(d=8, per=20, n_tasks=2, per_task=2, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    tasks, c = [], 0
    for _ in range(n_tasks):
        xs, ys = [], []
        for _ in range(per_task):
            mu = torch.randn(d, generator=g) * 2
            x = mu + torch.randn(per, d, generator=g) * (0.5 + torch.rand(d, generator=g))
            xs.append(x.abs() if positive else x)
            ys.append(torch.full((per,), c))
            c += 1
        tasks.append((torch.cat(xs), torch.cat(ys)))
    return tasks, c


# -- RanPAC ---------------------------------------------------------------------------------------------
def test_ranpac_ridge_equals_least_squares_on_the_augmented_system():
    tasks, C = gaussian_tasks()
    sc = scenario(tasks, C, (8,))
    s = make("ranpac", backbone(), sc, rp_dim=30, precision="float64")
    for exp in sc:
        train(s, exp)
    head = s.model.head
    lam = s.lambdas[-1]
    X = torch.cat([e.train_x for e in sc]).double()
    Y = F.one_hot(torch.cat([e.train_y for e in sc]), C).double()
    H = torch.relu(X @ head.w_rand)  # the random features of every task, seen so far
    M = H.shape[1]
    A = torch.cat([H, math.sqrt(lam) * torch.eye(M, dtype=H.dtype)])
    B = torch.cat([Y, torch.zeros(M, C, dtype=H.dtype)])
    W = torch.linalg.lstsq(A, B).solution  # argmin ||H W - Y||^2 + lam ||W||^2
    assert torch.allclose(head.weight, W.t(), atol=1e-8, rtol=1e-6)
    # the logits are h W_o^T over the seen classes
    x = sc[0].train_x[:3]
    assert torch.allclose(s.predict(x), (torch.relu(x.double() @ head.w_rand) @ W).float(), atol=1e-5)


def test_ranpac_lambda_is_the_grid_value_with_the_smallest_held_out_mse():
    g = torch.Generator().manual_seed(3)
    for n, m in ((40, 60), (80, 12)):  # dual (n < M) and primal branches
        H = torch.randn(n, m, generator=g, dtype=torch.float64)
        Y = F.one_hot(torch.randint(0, 3, (n,), generator=g), 3).double()
        lam, losses = analytic.select_ridge(H, Y)
        k = int(n * 0.8)
        direct = []
        for l in analytic.RIDGE_GRID:
            W = torch.linalg.solve(H[:k].t() @ H[:k] + l * torch.eye(m, dtype=H.dtype), H[:k].t() @ Y[:k])
            direct.append(float(((H[k:] @ W - Y[k:]) ** 2).mean()))
        assert losses == pytest.approx(direct, rel=1e-6, abs=1e-12)
        assert lam == analytic.RIDGE_GRID[min(range(len(direct)), key=direct.__getitem__)]


def test_ranpac_accumulates_over_tasks_and_resolves_old_classes():
    tasks, C = gaussian_tasks(n_tasks=3)
    sc = scenario(tasks, C, (8,))
    s = make("ranpac", backbone(), sc, rp_dim=40, precision="float64", ridge=1.0)
    G = []
    for exp in sc:
        train(s, exp)
        G.append(s.model.head.G.clone())
    H0 = torch.relu(sc[0].train_x.double() @ s.model.head.w_rand)
    assert torch.allclose(G[0], H0.t() @ H0)
    assert torch.all(torch.isfinite(s.predict(sc[0].train_x)[:, :C]))


# -- FeCAM ----------------------------------------------------------------------------------------------
def test_fecam_distance_is_the_hand_computed_shrunk_normalised_mahalanobis():
    tasks, C = gaussian_tasks(d=5, per=12, positive=True)
    sc = scenario(tasks, C, (5,))
    s = make("fecam", backbone(shape=(5,)), sc)
    for exp in sc:
        train(s, exp)
    assert bool(s.model.head.use_tukey)  # non-negative features: Tukey's transform on
    x = torch.rand(6, 5) * 3
    got = s.predict(x)
    X = torch.cat([e.train_x for e in sc]).double()
    Yl = torch.cat([e.train_y for e in sc])
    xt = x.double().sqrt()
    xt = xt / xt.norm(dim=1, keepdim=True)
    for c in range(C):
        f = X[Yl == c]
        mu = f.mean(0).sqrt()
        mu = mu / mu.norm()
        t = f.sqrt()  # Tukey, beta = 0.5
        tc = t - t.mean(0)
        cov = tc.t() @ tc / (len(t) - 1)
        d = cov.shape[0]
        for _ in range(2):  # shrunk twice, gamma1 = gamma2 = 1
            v1 = cov.diagonal().mean()
            off = cov - torch.diag(cov.diagonal())
            v2 = off.sum() / (d * d - d)
            cov = cov + v1 * torch.eye(d, dtype=cov.dtype) + v2 * (1 - torch.eye(d, dtype=cov.dtype))
        sd = cov.diagonal().sqrt()
        corr = cov / torch.outer(sd, sd)
        P = torch.linalg.inv(corr)
        diff = xt - mu
        want = -torch.einsum("bi,ij,bj->b", diff, P, diff)
        assert torch.allclose(got[:, c].double(), want, atol=1e-4, rtol=1e-4), c


def test_fecam_skips_tukey_on_signed_features_and_masks_unseen_classes():
    tasks, C = gaussian_tasks(d=4, per=10)
    sc = scenario(tasks, C, (4,))
    s = make("fecam", backbone(shape=(4,)), sc)
    train(s, sc[0])
    assert not bool(s.model.head.use_tukey)
    out = s.predict(torch.randn(3, 4))
    assert torch.isinf(out[:, 2:]).all() and torch.isfinite(out[:, :2]).all()


# -- bad configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg,pattern", [
    ("ranpac", {"petl": "adapter"}, r"strategy\.petl.*'adapter'.*lora, none"),
    ("ranpac", {"petl": "lora"}, r"frozen_backbone=false"),
    ("ranpac", {"precision": "half"}, r"strategy\.precision.*float32, float64"),
    ("ranpac", {"rp_dim": -1}, r"strategy\.rp_dim"),
    ("fecam", {"tukey": "yes"}, r"strategy\.tukey.*'yes'.*auto, off, on"),
])
def test_bad_config_is_a_config_error_naming_field_and_choices(name, cfg, pattern):
    tasks, C = gaussian_tasks()
    with pytest.raises(ConfigError, match=pattern):
        make(name, backbone(), scenario(tasks, C, (8,)), **cfg)


def test_task_free_runs_are_refused_with_the_field_named():
    tasks, C = gaussian_tasks()
    sc = scenario(tasks, C, (8,))
    for name in ("ranpac", "fecam"):
        entry = strategies.get(name)
        scfg = entry.config()
        model = entry.obj.build_model(scfg, backbone(), sc)
        info = RunInfo(n_classes=C, input_shape=(8,), device=torch.device("cpu"), seed=0, boundaries="none")
        with pytest.raises(ConfigError, match="scenario.boundaries"):
            entry.obj(scfg, model, info).setup()
