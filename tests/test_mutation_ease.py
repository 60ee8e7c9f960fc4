"""Tests written from the mutation run of strategies/ease.py (issue 19): the released defaults, the validation
bounds and refusals, the subspace weights of the logits (three subspaces, hand-computed), the prototype
complement's edge cases, the per-task training head and adapter sets, the epoch counts per session, the
prototypes and the resume of the adapter sets, on a two-block ViT of width 8."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError, strategies
from cl.core.strategy import RunInfo
from cl.models.heads import cosine_logits
from strategies.ease import EASEConfig, EASEModel, complement, ease_logits

from test_mutation_aper import SHAPE, D, mlp, scenario, vit


def make(bb=None, sc=None, setting="class", **cfg):
    sc = sc or scenario()
    entry = strategies.get("ease")
    scfg = entry.config(**cfg)
    model = entry.obj.build_model(scfg, bb if bb is not None else vit(), sc)
    info = RunInfo(n_classes=sc.n_classes, input_shape=SHAPE, device=torch.device("cpu"), seed=0, setting=setting,
                   n_experiences=len(sc))
    s = entry.obj(scfg, model, info)
    s.setup()
    return s, sc


def test_defaults_are_the_released_ones():
    """exps/ease_cifar.json: SGD lr 0.025, momentum 0.9, wd 5e-4, cosine to 0; adapter 64 / 0.1 / 0.1; alpha 0.1."""
    c = EASEConfig()
    assert (c.lr, c.momentum, c.weight_decay, c.min_lr, c.session_epochs, c.feature_batch) == (
        0.025, 0.9, 5e-4, 0.0, None, 256)
    assert (c.bottleneck, c.adapter_scale, c.adapter_dropout, c.alpha) == (64, 0.1, 0.1, 0.1)


def test_validation_bounds():
    for ok in ({"session_epochs": [1]}, {"session_epochs": [1, 1]}, {"session_epochs": [20, 3]}, {"session_epochs": None}, {"bottleneck": 1}):
        EASEConfig(**ok).validate()
    for bad in ([], [1, 1, 1], [0], [2, 0], [0, 2]):
        with pytest.raises(ConfigError, match=r"strategy\.session_epochs=.*give \[first, later\] epochs"):
            EASEConfig(session_epochs=bad).validate()
    with pytest.raises(ConfigError, match=r"strategy\.bottleneck=0 must be >= 1"):
        EASEConfig(bottleneck=0).validate()


def test_logits_weigh_the_other_subspaces_alpha_over_s_minus_one():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # one sample, 3 subspaces
    protos = torch.zeros(3, 4, 2)  # 4 subspaces built, 3 in use
    protos[0, :3] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # task 0
    protos[1, :3] = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # task 2
    protos[:, 3] = 5.0  # the unused subspace must not count
    got = ease_logits(feats, protos, torch.tensor([0, 2, -1]), alpha=0.3)
    r = 1 / math.sqrt(2)
    # class 0: 1 + 0.3 / 2 * (cos(f1, p01) + cos(f2, p02)) = 1 + 0.15 * (0 + r)
    # class 1 (own subspace 2): cos(f2, p12) + 0.15 * (cos(f0, p10) + cos(f1, p11)) = r + 0.15 * (0 + 1)
    assert torch.allclose(got[0, :2], torch.tensor([1 + 0.15 * r, r + 0.15]), atol=1e-6)
    assert got[0, 2] == float("-inf")
    one = ease_logits(feats[:, :1] * 3, protos, torch.tensor([0, 0, -1]), alpha=0.3)  # one subspace: no others
    assert torch.allclose(one[0, :2], torch.tensor([1.0, 0.0]), atol=1e-6)


def test_logits_before_any_task_are_minus_infinity():
    out = ease_logits(torch.zeros(4, 0, 2), torch.zeros(3, 2, 2), torch.full((3,), -1), 0.1)
    assert out.shape == (4, 3) and torch.isinf(out).all() and (out < 0).all()


def test_complement_leaves_a_subspace_alone_when_no_class_of_its_tasks_was_learnt():
    P = torch.randn(3, 2, 4)
    Q = P.clone()
    complement(Q, torch.tensor([0, 0, -1]), t=1)  # task 1 registered no class (no data)
    assert torch.equal(Q, P)
    complement(Q, torch.tensor([-1, -1, 1]), t=1)  # task 0 registered none: nothing to complement
    assert torch.equal(Q, P)


def test_model_init_training_head_and_empty_subspaces():
    bb = vit()
    from cl.models.petl import AdapterBank

    m = EASEModel(bb, AdapterBank(bb, 4), 300, 3)
    bound = 1 / math.sqrt(D)
    assert m.proxy.shape == (300, D) and m.proxy.abs().max() <= bound
    assert m.proxy.min() < -0.9 * bound and m.proxy.max() > 0.9 * bound
    assert torch.equal(m.sigma.data, torch.ones(1)) and m.alpha == 0.1
    assert torch.equal(m.protos, torch.zeros(300, 3, D)) and torch.equal(m.class_task, torch.full((300,), -1))
    assert not m.seen.any()
    assert m.subspaces(torch.rand(2, *SHAPE)).shape == (2, 0, D)
    with torch.no_grad():
        m.proxy.fill_(7.0)
        m.sigma.fill_(3.0)
    m.reset_proxy(torch.tensor([1, 4]))
    assert (m.proxy[[1, 4]].abs() <= bound).all() and (m.proxy[[0, 2, 3, 5]] == 7.0).all()
    assert m.sigma.item() == 1.0


def test_build_model_freezes_the_backbone_and_takes_the_settings():
    s, _ = make(bottleneck=3, adapter_scale=0.7, adapter_dropout=0.2, alpha=0.4)
    m = s.model
    assert (m.bank.bottleneck, m.bank.scale, m.bank.dropout, m.alpha, m.bank.n_sets) == (3, 0.7, 0.2, 0.4, 0)
    bank = {id(p) for p in m.bank.parameters()}
    assert not any(p.requires_grad for p in m.backbone.parameters() if id(p) not in bank)
    assert m.protos.shape == (4, 2, D)
    with pytest.raises(ConfigError, match=r"ease adds AdaptFormer adapters to transformer blocks: it works on timm "
                                          r"ViTs \(vit-tiny, timm:vit_\*\) and minilm; \w+ has none"):
        make(mlp())
    with pytest.raises(ConfigError, match=r"scenario setting=domain is not supported; use setting=class or task"):
        make(setting="domain")
    make(setting="task")


def test_sessions_epochs_and_schedules():
    sc = scenario(n_tasks=3)
    s, _ = make(sc=sc, session_epochs=[3, 2], lr=0.5, min_lr=0.1)
    lens = []
    for exp in sc:
        s.before_experience(exp)
        x, y = s.train_data(exp)
        lens.append(len(y))
        assert torch.equal(y, exp.train_y.repeat(len(y) // len(exp.train_y)))
        assert s.schedule.total == len(y)
    assert lens == [18, 12, 12]
    s, _ = make(sc=sc, session_epochs=[2])
    for exp in sc:
        s.before_experience(exp)
        assert len(s.train_data(exp)[1]) == 12
    s, _ = make(sc=sc, lr=0.5)
    s.before_experience(sc[0])
    x, y = s.train_data(sc[0])
    assert torch.equal(x, sc[0].train_x) and s.schedule.total == 0


def test_each_task_trains_its_own_set_and_a_fresh_head_with_sgd_settings():
    s, sc = make(lr=0.5, momentum=0.3, weight_decay=0.02, session_epochs=[2], min_lr=0.05, adapter_dropout=0.0)
    m = s.model
    s.before_experience(sc[0])
    with torch.no_grad():
        m.proxy[2:].fill_(9.0)
    s.model.train()
    x, y = s.preprocess(sc[0].train_x), sc[0].train_y
    s.train_step(x, y)
    g = s.optimizer.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (pytest.approx(0.5), 0.3, 0.02)
    s.train_step(x, y)
    assert g["lr"] == pytest.approx(0.05 + 0.45 * 0.5)  # half of the 12 repeated samples done
    s.after_experience(sc[0])
    with torch.no_grad():
        m.sigma.fill_(4.0)
    s.before_experience(sc[1])
    assert m.bank.n_sets == 2 and m.sigma.item() == 1.0
    assert not any(p.requires_grad for p in m.bank.set_parameters(0))
    assert all(p.requires_grad for p in m.bank.set_parameters(1))
    assert (m.proxy[2:].abs() <= 1 / math.sqrt(D)).all()  # this task's rows drawn afresh
    ids = sorted(id(p) for p in list(m.bank.set_parameters(1)) + [m.proxy, m.sigma])
    assert sorted(id(p) for gr in s.optimizer.param_groups for p in gr["params"]) == ids
    with torch.no_grad():
        for p in m.bank.set_parameters(1):
            p.normal_(0, 0.3)
    x, y = s.preprocess(sc[1].train_x), sc[1].train_y
    h = m.subspace(x, 1)
    want = F.cross_entropy((m.sigma * cosine_logits(h, m.proxy))[:, 2:4], y - 2)
    assert torch.allclose(s.loss(x, y), want, atol=1e-6)
    assert not torch.allclose(h, m.subspace(x, 0), atol=1e-3)


def test_a_frozen_backbone_keeps_its_batchnorm_statistics():
    bb = vit()
    bb.bn = nn.BatchNorm1d(2)
    s, sc = make(bb)
    s.before_experience(sc[0])
    s.model.train()
    s.loss(s.preprocess(sc[0].train_x[:2]), sc[0].train_y[:2])
    assert not s.model.backbone.bn.training


def test_prototypes_and_refusals_after_the_tasks_built_for():
    sc = scenario(n_tasks=2)
    s, _ = make(sc=sc, feature_batch=4)
    m = s.model
    for t, exp in enumerate(sc):
        s.before_experience(exp)
        with torch.no_grad():
            for p in m.bank.set_parameters(t):
                p.normal_(0, 0.3)
        s.model.train()
        s.after_experience(exp)
        assert s.model.training
    m.eval()
    with torch.no_grad():
        f = m.subspaces(s.preprocess(sc[1].train_x))
    assert m.class_task.tolist() == [0, 0, 1, 1] and m.seen.all()
    for c in (2, 3):
        assert torch.allclose(m.protos[c], f[sc[1].train_y == c].mean(0), atol=1e-5)
    f0 = m.subspaces(s.preprocess(sc[0].train_x))
    assert torch.allclose(m.protos[0, 0], f0[sc[0].train_y == 0, 0].mean(0), atol=1e-5)
    sim = cosine_logits(m.protos[0:2, 0], m.protos[2:4, 0]).softmax(1)
    assert torch.allclose(m.protos[0:2, 1], sim @ m.protos[2:4, 1], atol=1e-5)  # complemented
    assert s.extra_metrics()["n_adapters"] == 2
    extra = SimpleNamespace(train_x=sc[0].train_x, train_y=sc[0].train_y + 0, classes=[0, 1], index=2)
    with pytest.raises(ConfigError, match=r"ease was built for 2 tasks; experience 2 is one more"):
        s.before_experience(extra)
    s2, _ = make(sc=scenario(n_tasks=2))
    s2.before_experience(sc[0])
    s2.after_experience(sc[0])
    with pytest.raises(ConfigError, match=r"a class of this experience was learnt in an earlier one"):
        s2.before_experience(SimpleNamespace(train_x=sc[1].train_x, train_y=sc[1].train_y, classes=[1, 2], index=1))


def test_load_state_rebuilds_the_adapter_sets_with_only_the_last_trainable():
    sc = scenario(n_tasks=2)
    s, _ = make(sc=sc)
    for exp in sc:
        s.before_experience(exp)
        s.after_experience(exp)
    state = s.state_dict()
    r, _ = make(sc=sc)
    r.load_state_dict(state)
    assert r.model.bank.n_sets == 2 and r.session == 1
    assert not any(p.requires_grad for p in r.model.bank.set_parameters(0))
    assert all(p.requires_grad for p in r.model.bank.set_parameters(1))
    for a, b in zip(r.model.state_dict().values(), s.model.state_dict().values()):
        assert torch.equal(a, b)
    one, _ = make(sc=sc)  # after the first task: one set, trainable
    s1, _ = make(sc=sc)
    s1.before_experience(sc[0])
    s1.after_experience(sc[0])
    one.load_state_dict(s1.state_dict())
    assert one.model.bank.n_sets == 1 and all(p.requires_grad for p in one.model.bank.set_parameters(0))
    fresh, _ = make(sc=sc)
    fresh.load_state_dict(make(sc=sc)[0].state_dict())  # before any task: nothing to rebuild
    assert fresh.model.bank.n_sets == 0


def test_complement_of_a_one_class_task():
    P = torch.randn(3, 3, 4)
    Q = P.clone()
    complement(Q, torch.tensor([0, 1, 2]), t=2)
    assert torch.allclose(Q[0, 2], P[2, 2])  # one class of tasks >= 2: softmax weight 1
    assert torch.allclose(Q[1, 2], P[2, 2])
