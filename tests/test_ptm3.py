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
    ("lae", {"ensemble": "energy"}, r"strategy\.ensemble.*'energy'.*max_prob, offline, online"),
    ("inflora", {"lamb": 1.5}, r"strategy\.rank must be >= 1 and lamb, lame in \(0, 1\]"),
    ("slca", {"ca_samples": 0}, r"ca_samples >= 1"),
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


# -- SLCA -----------------------------------------------------------------------------------------------
def test_slca_backbone_moves_at_a_hundredth_of_the_head_lr_and_old_rows_stay():
    tasks, C = gaussian_tasks(n_tasks=2)
    sc = scenario(tasks, C, (8,))
    s = make("slca", backbone("mlp", hidden=16), sc, ca=False)
    s.before_experience(sc[0])
    groups = s.optimizer.param_groups
    body = {id(p) for p in s.model.backbone.parameters()}
    head = {id(p) for p in s.model.head.parameters()}
    assert [{id(p) for p in g["params"]} for g in groups] == [body, head]
    assert groups[0]["lr"] == pytest.approx(0.01 * groups[1]["lr"]) and groups[1]["lr"] == pytest.approx(0.01)
    for exp_i in range(2):
        if exp_i:
            s.before_experience(sc[1])
        w0 = s.model.head.fc.weight.detach().clone()
        x, y = sc[exp_i].train_x, sc[exp_i].train_y
        for i in range(0, len(y), 8):
            s.train_step(x[i:i + 8], y[i:i + 8])
        s.after_experience(sc[exp_i])
        moved = (s.model.head.fc.weight - w0).abs().sum(1) > 0
        assert moved.tolist() == [c in sc[exp_i].classes for c in range(C)]  # only the current task's rows
    # lr milestones: epoch 18 of a task multiplies both groups by 0.1
    s._done = 18 * s._n_train
    s.train_step(x[:8], y[:8])
    assert [g["lr"] for g in s.optimizer.param_groups] == pytest.approx([1e-5, 1e-3])


def test_slca_alignment_trains_only_the_head_on_class_gaussian_samples(monkeypatch):
    tasks, C = gaussian_tasks(n_tasks=2)
    sc = scenario(tasks, C, (8,))
    s = make("slca", backbone("mlp", hidden=16), sc, ca_epochs=2, ca_samples=16)
    train(s, sc[0])
    assert s.head_backup is None  # no alignment after the first task
    body0 = {k: v.clone() for k, v in s.model.backbone.state_dict().items()}
    seen_inputs = []
    orig = s.model.head.raw
    monkeypatch.setattr(s.model.head, "raw", lambda h: (seen_inputs.append(h.detach().clone()), orig(h))[1])
    s.before_experience(sc[1])
    x, y = sc[1].train_x, sc[1].train_y
    for i in range(0, len(y), 8):
        s.train_step(x[i:i + 8], y[i:i + 8])
    body1 = {k: v.clone() for k, v in s.model.backbone.state_dict().items()}
    head1 = s.model.head.fc.weight.detach().clone()
    n_train = len(seen_inputs)
    s.after_experience(sc[1])
    assert all(torch.equal(body1[k], v) for k, v in s.model.backbone.state_dict().items())  # backbone untouched
    assert any(not torch.equal(body0[k], body1[k]) for k in body0)  # (it did learn during the task)
    assert not torch.equal(s.model.head.fc.weight, head1)  # the alignment moved the head ...
    assert torch.equal(s.head_backup["weight"], head1)  # ... from the pre-alignment head, kept for the next task
    ca = torch.cat(seen_inputs[n_train:])  # the head's inputs during alignment: 2 epochs x 16 samples x 4 classes
    assert ca.shape == (2 * 16 * C, 16)
    # they are Gaussian samples around the class means, not the training features
    feats = s.features(torch.cat([e.train_x for e in sc]))
    assert not any(torch.allclose(r, feats, atol=1e-6) for r in ca[:4])
    # balanced classes: the samples' mean is the mean of the scaled class means (task 0's shrunk by 0.95)
    scale = torch.tensor([0.95, 0.95, 1.0, 1.0], dtype=torch.float64)
    want = (s.means[:C] * scale[:, None]).mean(0)
    sd = max(float(torch.diagonal(s.chol[c] @ s.chol[c].t()).max().sqrt()) for c in range(C))
    assert torch.allclose(ca.mean(0).double(), want, atol=5 * sd / math.sqrt(len(ca)))


# -- InfLoRA --------------------------------------------------------------------------------------------
def lowrank_tasks(d=8, per=24, seed=0):
    """Task 0's inputs: three strong directions of R^d and a weak fourth (a 1e-6 share of the squared singular
    values of their Gram matrix, below the memory threshold 1 - 1e-7: the memory keeps the three); task 1's are
    generic."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    z = torch.linalg.qr(torch.randn(2 * per, 4, generator=g))[0] * math.sqrt(2 * per)  # orthogonal columns
    z = z * torch.tensor([3.0, 2.0, 1.5, 0.1])
    x0 = z @ Q[:, :4].t()
    x1 = torch.randn(2 * per, d, generator=g) * 2
    y0, y1 = torch.arange(2).repeat_interleave(per), torch.arange(2, 4).repeat_interleave(per)
    return [(x0, y0), (x1, y1)], Q[:, :3]


def test_inflora_update_lies_orthogonal_to_earlier_tasks_inputs():
    tasks, span = lowrank_tasks()
    sc = scenario(tasks, 4, (8,))
    s = make("inflora", backbone("mlp", shape=(8,), hidden=16), sc, rank=4, lamb=1 - 1e-7, lame=1 - 1e-7, lr=0.05)
    first = s.layers[0]
    train(s, sc[0])
    W0 = first.base.weight.detach().clone()
    M = s.bases[0]
    assert M.shape[1] == 3  # the protected span of task 0's inputs is found
    assert torch.allclose(M @ M.t() @ span.double(), span.double(), atol=1e-5)
    s.before_experience(sc[1])
    assert (first.A.double() @ M).abs().max() < 1e-6  # the designed A annihilates the memory (float32)
    x, y = sc[1].train_x, sc[1].train_y
    A_before = [m.A.clone() for m in s.layers]
    for i in range(0, len(y), 8):
        s.train_step(x[i:i + 8], y[i:i + 8])
    assert all(torch.equal(m.A, a) for m, a in zip(s.layers, A_before))  # A is designed, not trained
    A1 = first.A.clone()
    s.after_experience(sc[1])
    dW = (first.base.weight.detach() - W0).double()
    assert dW.abs().max() > 1e-3  # task 1 did change the layer ...
    old = sc[0].train_x.double()
    assert (dW @ M).abs().max() < 1e-6 * dW.abs().max() + 1e-7  # ... but not on the protected span
    # on task 0's inputs the change acts only through their weak, unprotected part
    rest = old - old @ M @ M.t()
    assert (old @ dW.t()).norm() <= 1.0001 * torch.linalg.matrix_norm(dW, 2) * rest.norm()
    assert (old @ dW.t()).norm() < 0.1 * (sc[1].train_x.double() @ dW.t()).norm()
    assert not torch.equal(A1, torch.zeros_like(A1))


def test_inflora_trains_only_b_and_the_head():
    tasks, _ = lowrank_tasks()
    sc = scenario(tasks, 4, (8,))
    s = make("inflora", backbone("mlp", shape=(8,), hidden=16), sc, rank=2)
    s.before_experience(sc[0])
    trained = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert trained == {id(m.B) for m in s.layers} | {id(p) for p in s.model.head.parameters()}
    assert all(not isinstance(b, torch.nn.Parameter) for m in s.layers for b in (m.A,))


def test_inflora_refuses_a_cnn_naming_the_backbones_that_work():
    tasks, _ = lowrank_tasks()
    sc = scenario(tasks, 4, (3, 8, 8))
    with pytest.raises(ConfigError, match="backbones that work: timm ViTs.*minilm, mlp"):
        make("inflora", backbone("cnn", shape=(3, 8, 8), channels=4, blocks=1), sc)


# -- LAE ------------------------------------------------------------------------------------------------
def test_lae_offline_module_is_the_ema_of_the_online_one():
    tasks, C = gaussian_tasks(n_tasks=2)
    sc = scenario(tasks, C, (8,))
    s = make("lae", backbone("mlp", hidden=16), sc, ema_decay=0.8, freeze_epochs=0, lr=0.01)
    train(s, sc[0])
    pairs = s._pairs()
    assert pairs and all(not torch.equal(on, off) for on, off in pairs if on.abs().sum() > 0)  # no EMA yet
    s.before_experience(sc[1])
    want = [on.detach().clone() for on, _ in pairs]  # the offline module starts as a copy of the online one
    assert all(torch.equal(off, w) for (_, off), w in zip(pairs, want))
    x, y = sc[1].train_x, sc[1].train_y
    for i in range(0, 24, 8):
        s.train_step(x[i:i + 8], y[i:i + 8])
        want = [0.8 * w + 0.2 * on.detach() for w, (on, _) in zip(want, pairs)]
    assert any(not torch.equal(on, off) for on, off in pairs)  # they differ ...
    for (_, off), w in zip(pairs, want):  # ... and the offline one is exactly the EMA
        assert torch.allclose(off, w, atol=1e-7)
    # inference: class-wise max of the two softmax outputs
    xt = x[:5]
    s.model.eval()
    with torch.no_grad():
        s.lora.switch("online")
        p_on = s.model(xt).float().softmax(1)
        s.lora.switch("offline")
        p_off = s.model(xt).float().softmax(1)
        s.lora.switch("online")
        got = s.predict(xt)
    assert torch.allclose(got.exp(), torch.maximum(p_on, p_off), atol=1e-6)


def test_lae_freezes_the_online_module_for_the_first_epochs_of_later_tasks():
    tasks, C = gaussian_tasks(n_tasks=2)
    sc = scenario(tasks, C, (8,))
    s = make("lae", backbone("mlp", hidden=16), sc, freeze_epochs=1, lr=0.01)
    train(s, sc[0])
    s.before_experience(sc[1])
    on0 = [on.detach().clone() for on, _ in s._pairs()]
    head0 = s.model.head.fc.weight.detach().clone()
    x, y = sc[1].train_x, sc[1].train_y
    for i in range(0, len(y), 8):  # epoch 0: head only
        s.train_step(x[i:i + 8], y[i:i + 8])
    assert all(torch.equal(on, w) for (on, _), w in zip(s._pairs(), on0))
    assert not torch.equal(s.model.head.fc.weight, head0)
    s.train_step(x[:8], y[:8])  # epoch 1: the PET trains again
    assert any(not torch.equal(on, w) for (on, _), w in zip(s._pairs(), on0))


# -- backbones: tiny random-init ViT and MiniLM through the engine ----------------------------------------
VIT = {"name": "vit-tiny", "depth": 1, "embed_dim": 24, "num_heads": 2, "patch_size": 8, "img_size": 16}


def engine_run(tmp_path, strategy, backbone, scenario_name, **skw):
    import test_strategies2_engine  # noqa: F401  (registers s2-tiny-images and s2-tiny-text)
    from cl.core.config import resolve
    from cl.train.engine import Run

    raw = {"strategy": {"name": strategy, **skw}, "scenario": {"name": scenario_name}, "backbone": backbone,
           "protocol": {"name": "offline", "epochs": 1, "batch_size": 16, "checkpoint": False}, "wandb": "off"}
    r = Run(resolve(raw), progress=False, out_dir=tmp_path / strategy).execute()
    assert r["status"] == "finished", r.get("traceback") or r.get("error")
    assert len(r["R"]) == 2
    return r


@pytest.mark.parametrize("strategy,kw", [("slca", {}), ("inflora", {}), ("lae", {}),
                                         ("ranpac", {"rp_dim": 64, "petl": "lora", "frozen_backbone": False})])
def test_vit_backbone_runs_and_adapts_the_attention(tmp_path, strategy, kw):
    r = engine_run(tmp_path, strategy, VIT, "s2-tiny-images", **kw)
    if strategy == "inflora":  # B of the key/value thirds of qkv (2 x 24 x rank 10) + the head (4 x 24 + 4)
        assert r["metrics"]["trainable_params"] == 2 * 24 * 10 + 4 * 24 + 4


def test_inflora_on_minilm_adapts_key_and_value():
    from cl.models.backbones.text import MiniLMConfig, minilm
    from strategies.inflora import InfLoRALinear, attach

    try:
        enc = minilm(MiniLMConfig(pretrained=False), None)
    except Exception as e:  # noqa: BLE001 - the architecture config ships with the package
        pytest.skip(f"MiniLM not available: {e}")
    layers = attach(enc, rank=4)
    names = [n for n, m in enc.named_modules() if isinstance(m, InfLoRALinear)]
    assert names and all(n.split(".")[-1] in ("key", "value") for n in names) and len(layers) == len(names)


def test_ranpac_with_first_task_lora_resumes_exactly(tmp_path, monkeypatch):
    """tests/test_reliability_state.py checks every strategy at its defaults (RanPAC: Phase 2 only, on cached
    features); this is the same boundary check for Phase 1 (LoRA on the first task) on a tiny ViT."""
    import test_reliability_state as rs
    import test_strategies2_engine  # noqa: F401

    def configs(name):
        yield {"strategy": {"name": name, "rp_dim": 32, "petl": "lora", "frozen_backbone": False},
               "scenario": {"name": "s2-tiny-images"}, "backbone": VIT}

    monkeypatch.setattr(rs, "_configs", configs)
    full, res, diff = rs.boundary_check(tmp_path, "ranpac", monkeypatch)
    assert not diff, diff
    assert [[None if a is None else float(a).hex() for a in r] for r in res["R"]] == \
        [[None if a is None else float(a).hex() for a in r] for r in full["R"]]
