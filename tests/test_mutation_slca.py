"""SLCA (strategies/slca.py), tests written from its mutation run (issue 19): defaults and bounds, the slow
learner's optimiser groups and lr milestones, frozen BatchNorm, the class statistics and the classifier
alignment on hand-made features (identity backbone), the logit normalisation by hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, strategies
from cl.core.streams import Scenario
from test_ptm3 import backbone, make, scenario


def exp(x, y, classes=None, index=0):
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    return SimpleNamespace(train_x=x, train_y=y, test_x=x[:4], test_y=y[:4], index=index, task_id=None,
                           classes=sorted(set(y.tolist())) if classes is None else classes)


def tasks_sc(exps, n_classes, d):
    return Scenario("slca-fake", exps, n_classes, (d,), list(range(n_classes)), modality="features")


def test_slca_defaults_are_the_official_configs():
    c = strategies.get("slca").config()
    assert (c.lr, c.momentum, c.weight_decay, c.backbone_lr_scale, c.milestones, c.lr_decay) == (0.01, 0.9, 5e-4, 0.01,
                                                                                                 [18], 0.1)
    assert (c.ca, c.ca_epochs, c.ca_samples, c.ca_lr, c.logit_norm, c.cov_eps) == (True, 5, 256, 0.01, 0.1, 1e-4)
    assert (c.mean_scaling, c.freeze_bn, c.feature_batch) == (True, True, 256)


@pytest.mark.parametrize("cfg,bad", [({"backbone_lr_scale": -0.5}, True), ({"backbone_lr_scale": 0.0}, False),
                                     ({"ca_epochs": -1}, True), ({"ca_epochs": 0}, False),
                                     ({"ca_samples": 0}, True), ({"ca_samples": 1}, False)])
def test_slca_bounds(cfg, bad):
    sc = scenario([(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))], 2, (8,))
    if bad:
        with pytest.raises(ConfigError, match=r"strategy\.backbone_lr_scale and ca_epochs must be >= 0") as e:
            make("slca", backbone("mlp", hidden=4), sc, **cfg)
        assert str(list(cfg.values())[0]) in str(e.value)
    else:
        make("slca", backbone("mlp", hidden=4), sc, **cfg)


def test_slca_head_init_and_the_fixed_backbone_variant():
    torch.manual_seed(0)
    sc = scenario([(torch.randn(4, 256), torch.tensor([0, 0, 1, 1]))], 16, (256,))
    s = make("slca", backbone("identity", shape=(256,)), sc)
    w, b = s.model.head.fc.weight, s.model.head.fc.bias
    assert float(w.detach().std()) == pytest.approx(0.02, rel=0.05) and float(w.detach().mean().abs()) < 0.002
    assert torch.equal(b, torch.zeros_like(b))
    fixed = make("slca", backbone("mlp", shape=(256,), hidden=8), sc, backbone_lr_scale=0.0)
    assert not any(p.requires_grad for p in fixed.model.backbone.parameters())
    fixed.before_experience(sc[0])
    assert [len(g["params"]) for g in fixed.optimizer.param_groups] == [2]  # the head only
    slow = make("slca", backbone("mlp", shape=(256,), hidden=8), sc, backbone_lr_scale=0.5)
    assert all(p.requires_grad for p in slow.model.backbone.parameters())


def test_slca_optimiser_groups_hold_their_rates():
    sc = scenario([(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))], 2, (8,))
    s = make("slca", backbone("mlp", hidden=4), sc, lr=0.2, backbone_lr_scale=0.5, momentum=0.5, weight_decay=0.01)
    opt = s.make_optimizer()
    assert isinstance(opt, torch.optim.SGD)
    assert [(g["lr"], g["base_lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == \
        [(0.1, 0.1, 0.5, 0.01), (0.2, 0.2, 0.5, 0.01)]
    # a backbone with no parameters (identity): the head group alone
    s = make("slca", backbone("identity"), sc)
    assert [g["lr"] for g in s.make_optimizer().param_groups] == [0.01]
    # the run's optimizer choice is honoured (it was SGD whatever the config said), with the same groups
    s = make("slca", backbone("mlp", hidden=4), sc, lr=0.2, backbone_lr_scale=0.5, optimizer="adam", weight_decay=0.01)
    opt = s.make_optimizer()
    assert type(opt) is torch.optim.Adam
    assert [(g["lr"], g["base_lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.1, 0.1, 0.01), (0.2, 0.2, 0.01)]


def test_slca_lr_drops_at_each_milestone_epoch():
    x, y = torch.randn(16, 8), torch.tensor([0, 1] * 8)
    sc = scenario([(x, y)], 2, (8,))
    s = make("slca", backbone("mlp", hidden=4), sc, lr=0.1, backbone_lr_scale=0.5, milestones=[1, 2], lr_decay=0.5)
    s.before_experience(sc[0])
    assert s._n_train == 16 and s._done == 0
    lrs = []
    for i in range(7):  # two steps of 8 an epoch
        s.train_step(x[i % 2 * 8:i % 2 * 8 + 8], y[i % 2 * 8:i % 2 * 8 + 8])
        lrs += [g["lr"] for g in s.optimizer.param_groups]
    assert s._done == 56
    assert lrs == pytest.approx([0.05, 0.1] * 2 + [0.025, 0.05] * 2 + [0.0125, 0.025] * 3)
    # a task of one sample: every step is a new epoch
    one = exp(x[:1], y[:1])
    s.before_experience(one)
    s.train_step(x[:1], y[:1])
    assert [g["lr"] for g in s.optimizer.param_groups] == pytest.approx([0.05, 0.1])
    s.train_step(x[:1], y[:1])
    assert [g["lr"] for g in s.optimizer.param_groups] == pytest.approx([0.025, 0.05])


@pytest.mark.parametrize("freeze", [True, False])
def test_slca_freeze_bn_keeps_the_running_statistics(freeze):
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8) * 3 + 1, torch.tensor([0, 1] * 4)
    sc = Scenario("slca-img", [exp(x, y)], 2, (3, 8, 8), [0, 1], modality="features")
    s = make("slca", backbone("cnn", shape=(3, 8, 8), channels=4, blocks=1), sc, freeze_bn=freeze)
    bn = next(m for m in s.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    s.before_experience(sc[0])
    s.model.train()
    s.train_step(x, y)
    assert torch.equal(bn.running_mean, before) == freeze


def test_slca_class_statistics_are_the_hand_computed_mean_and_cholesky_factor():
    x = [[0, 0, 0], [2, 0, 0], [1, 1, 0], [1, 3, 0], [1, 2, 3]]
    y = [0, 0, 1, 1, 1]
    e0 = exp(x, y, classes=[5, 0, 1])  # class 5 has no training sample: skipped, the others still counted
    sc = tasks_sc([e0], 6, 3)
    s = make("slca", backbone("identity", shape=(3,)), sc, cov_eps=0.25)
    s.before_experience(e0)
    s.after_experience(e0)
    assert torch.allclose(s.means[0], torch.tensor([1.0, 0, 0], dtype=torch.float64))
    assert torch.allclose(s.means[1], torch.tensor([1.0, 2, 1], dtype=torch.float64))
    assert torch.equal(s.means[5], torch.zeros(3, dtype=torch.float64))
    assert s.class_session.tolist() == [0, 0, -1, -1, -1, -1]
    assert sorted(s.chol) == [0, 1] and s.chol[0].dtype == torch.float32
    assert torch.allclose(s.chol[0], torch.diag(torch.tensor([1.5, 0.5, 0.5])))  # sqrt(2 + 0.25), sqrt(0.25)
    f = torch.tensor(x[2:], dtype=torch.float64)
    cov = torch.cov(f.t()) + 0.25 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose((s.chol[1] @ s.chol[1].t()).double(), cov, atol=1e-6)
    assert s.head_backup is None  # no alignment after the first task


def test_slca_normalised_logits_by_hand():
    sc = scenario([(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))], 5, (8,))
    s = make("slca", backbone("identity"), sc)
    s.class_session = torch.tensor([0, 0, 1, 1, -1])
    seen = torch.tensor([0, 1, 2, 3])
    logits = torch.tensor([[3.0, 4.0, 2.0, 0.0], [1e-3, 0.0, 0.0, 0.0]])
    got = s._normalised_logits(logits, seen)
    # row 0: task norms 5 and 2, mean 3.5; row 1: 1e-3 and 0, each + 1e-7
    n1 = (1e-3 + 1e-7 + 1e-7) / 2
    want = torch.tensor([[3 / 3.5, 4 / 3.5, 2 / 3.5, 0.0], [1e-3 / n1, 0, 0, 0]]) / 0.1
    assert torch.allclose(got, want, rtol=1e-5)
    s.cfg.logit_norm = 0.5
    assert torch.allclose(s._normalised_logits(logits, seen), want * 0.2, rtol=1e-5)
    s.cfg.logit_norm = 0.0
    assert torch.equal(s._normalised_logits(logits, seen), logits)


def three_tasks():
    """Classes with constant features (covariance cov_eps I, tiny): the Gaussian samples are their scaled means."""
    mu = {1: [1.0, 2.0], 3: [3.0, -1.0], 4: [-2.0, 5.0], 0: [0.5, 0.5]}
    groups = [[1, 3], [4], [0]]
    exps = []
    for t, cls in enumerate(groups):
        x = torch.tensor([mu[c] for c in cls for _ in range(4)])
        y = torch.tensor([c for c in cls for _ in range(4)])
        exps.append(exp(x, y, classes=cls, index=t))
    return exps, mu


def test_slca_alignment_samples_scaled_means_and_trains_the_normalised_ce(monkeypatch):
    exps, mu = three_tasks()
    sc = tasks_sc(exps, 6, 2)
    s = make("slca", backbone("identity", shape=(2,)), sc, cov_eps=1e-12, ca_epochs=2, ca_samples=3, ca_lr=0.1)
    for e in exps[:2]:
        s.before_experience(e)
        s.after_experience(e)
    s.before_experience(exps[2])
    s.model.head.seen[[0, 1, 3, 4]] = True
    raw_io, ce_io, steps = [], [], []
    orig_raw, orig_ce, orig_step = s.model.head.raw, F.cross_entropy, torch.optim.SGD.step

    def raw(h):
        out = orig_raw(h)
        raw_io.append((h.detach().clone(), out.detach().clone()))
        return out

    def ce(logits, target, *a, **k):
        ce_io.append((logits.detach().clone(), target.clone()))
        return orig_ce(logits, target, *a, **k)

    def step(opt, *a, **k):
        steps.append([(g["lr"], g["momentum"], g["weight_decay"], [id(p) for p in g["params"]])
                      for g in opt.param_groups])
        return orig_step(opt, *a, **k)

    monkeypatch.setattr(s.model.head, "raw", raw)
    monkeypatch.setattr(F, "cross_entropy", ce)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    s.after_experience(exps[2])
    seen = [0, 1, 3, 4]
    scale = {0: 1.0, 1: 0.9 + 0.1 / 3, 3: 0.9 + 0.1 / 3, 4: 0.9 + 0.2 / 3}  # t_c = 2, 0, 0, 1 at session 2
    assert len(raw_io) == len(ce_io) == len(steps) == 2 * 4  # 2 epochs x 4 classes x 3 samples, batches of 3
    counts = {c: 0 for c in seen}
    fc = [id(s.model.head.fc.weight), id(s.model.head.fc.bias)]
    for k, ((h, out), (logits, target), st) in enumerate(zip(raw_io, ce_io, steps)):
        assert h.shape == (3, 2)
        for row, tgt in zip(h, target.tolist()):
            c = seen[tgt]  # targets are positions among the seen classes
            counts[c] += 1
            assert torch.allclose(row, torch.tensor(mu[c]) * scale[c], atol=1e-4), (c, row)
        o = out[:, seen]
        norms = torch.stack([o[:, [1, 2]].norm(dim=1), o[:, 3].abs(), o[:, 0].abs()], 1) + 1e-7
        assert torch.allclose(logits, o / norms.mean(1, keepdim=True) / 0.1, rtol=1e-5)
        lr = 0.1 * (1 + math.cos(math.pi * (k // 4) / 2)) / 2  # cosine over the epochs
        assert st == [(pytest.approx(lr), 0.9, 5e-4, fc)]
    assert counts == {c: 6 for c in seen}  # balanced: 3 a class an epoch
    assert all(p.grad is None for p in s.model.head.parameters())
    # the next task trains on from the head before the alignment
    backup = {k: v.clone() for k, v in s.head_backup.items()}
    assert not torch.equal(backup["weight"], s.model.head.fc.weight)
    s.before_experience(exps[0])
    assert s.head_backup is None and torch.equal(s.model.head.fc.weight, backup["weight"])
    assert torch.equal(s.model.head.fc.bias, backup["bias"])


def test_slca_alignment_without_mean_scaling_samples_the_means(monkeypatch):
    exps, mu = three_tasks()
    sc = tasks_sc(exps[:2], 6, 2)
    s = make("slca", backbone("identity", shape=(2,)), sc, cov_eps=1e-12, ca_epochs=1, ca_samples=2,
             mean_scaling=False)
    s.before_experience(exps[0])
    s.after_experience(exps[0])
    s.before_experience(exps[1])
    rows = []
    orig = s.model.head.raw
    monkeypatch.setattr(s.model.head, "raw", lambda h: (rows.append(h.detach().clone()), orig(h))[1])
    s.after_experience(exps[1])
    got = sorted(tuple(round(v, 3) for v in r.tolist()) for r in torch.cat(rows))
    assert got == sorted(tuple(mu[c]) for c in (1, 1, 3, 3, 4, 4))


@pytest.mark.parametrize("cfg", [{"ca": False}, {"ca_epochs": 0}])
def test_slca_alignment_is_off_without_ca_or_epochs(cfg):
    exps, _ = three_tasks()
    sc = tasks_sc(exps[:2], 6, 2)
    s = make("slca", backbone("identity", shape=(2,)), sc, **cfg)
    for e in exps[:2]:
        s.before_experience(e)
        w = s.model.head.fc.weight.detach().clone()
        s.after_experience(e)
        assert torch.equal(s.model.head.fc.weight, w) and s.head_backup is None


def test_slca_alignment_draws_are_fixed_by_seed_and_task(monkeypatch):
    exps, _ = three_tasks()
    sc = tasks_sc(exps[:2], 6, 2)

    def aligned(seed):
        torch.manual_seed(0)  # the same initial head: only the run seed differs
        s = make("slca", backbone("identity", shape=(2,)), sc, seed=seed, ca_epochs=1, ca_samples=4, cov_eps=0.1)
        for e in exps[:2]:
            s.before_experience(e)
            s.after_experience(e)
        return s.model.head.fc.weight.detach().clone()

    a, b, c = aligned(0), aligned(0), aligned(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_slca_predict_masks_unseen_classes():
    exps, _ = three_tasks()
    sc = tasks_sc(exps, 6, 2)
    s = make("slca", backbone("identity", shape=(2,)), sc)
    s.before_experience(exps[0])
    s.model.head.observe(torch.tensor([1, 3]))
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    p = s.predict(x)
    raw = s.model.head.raw(x)
    assert torch.equal(p[:, [1, 3]], raw[:, [1, 3]]) and torch.isinf(p[:, [0, 2, 4, 5]]).all()
    assert torch.equal(s.features(x), x)


def test_slca_alignment_noise_is_fixed_per_run_seed_and_task(monkeypatch):
    import strategies.slca as slca

    exps, _ = three_tasks()
    sc = tasks_sc(exps, 6, 2)
    seeds = []
    orig = slca.sample_gaussian
    monkeypatch.setattr(slca, "sample_gaussian", lambda mu, L, n, g: (seeds.append(g.initial_seed()), orig(mu, L, n, g))[1])

    def run(seed):
        seeds.clear()
        s = make("slca", backbone("identity", shape=(2,)), sc, seed=seed, ca_epochs=1, ca_samples=2)
        per_task = []
        for e in exps:
            s.before_experience(e)
            s.after_experience(e)
            per_task.append(set(seeds))
            seeds.clear()
        return per_task

    a, b = run(0), run(1)
    assert a[0] == set() and all(len(t) == 1 for t in a[1:] + b[1:])  # one generator per alignment
    assert run(0) == a  # the same draws when the run is repeated (or resumed)
    assert len(set().union(*a[1:], *b[1:])) == 4  # different for every (run seed, task)
