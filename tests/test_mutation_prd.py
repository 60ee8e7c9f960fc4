"""PRD (strategies/prd.py, methods.md section 4) on constructed cases, written from its mutation run (issue 19):
the paper's / pre-release code's defaults, SupCon and the prototype loss against loops written out here, the
relation distillation's prototype normalisation, the two optimiser groups (prototypes: own lr, no momentum,
no weight decay), the views, the frozen copy taken at the end of a task and the state round trip."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from strategies.prd import PRD, PRDConfig, PRDModel, prototype_loss, relation_distillation, supcon_loss

CPU = torch.device("cpu")


def _backbone(bn=False):
    layers = [nn.Linear(5, 4)] + ([nn.BatchNorm1d(4)] if bn else [])
    b = nn.Sequential(*layers)
    b.out_dim = 4
    return b


def _prd(bn=False, n_classes=6, **kw):
    kw = {"views": 1, "projection_hidden": 8, "projection_size": 3, **kw}
    cfg = PRDConfig(**kw)
    model = PRD.build_model(cfg, _backbone(bn), SimpleNamespace(n_classes=n_classes))
    s = PRD(cfg, model, RunInfo(n_classes=n_classes, input_shape=(5,), device=CPU, seed=0))
    s.setup()
    return s


def test_prd_defaults_are_the_pre_release_codes():
    c = PRDConfig()
    assert (c.lr, c.momentum, c.proto_lr, c.supcon_temperature) == (0.01, 0.9, 0.01, 0.1)
    assert (c.prototypes_coef, c.distill_coef, c.distill_temp) == (2.0, 4.0, 1.0)
    assert (c.projection_hidden, c.projection_size, c.views) == (512, 128, 2)
    assert (c.tune, c.lora_r, c.lora_alpha, c.optimizer) == ("full", 8, 16, "sgd")
    # the functions' own defaults are the paper's temperatures too
    g = torch.Generator().manual_seed(0)
    z, y = F.normalize(torch.randn(6, 3, generator=g), dim=1), torch.tensor([0, 0, 1, 1, 2, 2])
    assert float(supcon_loss(z, y)) == pytest.approx(float(supcon_loss(z, y, 0.1)), rel=1e-6)
    assert float(supcon_loss(z, y)) != pytest.approx(float(supcon_loss(z, y, 1.1)), rel=1e-3)
    h, ho, p, po = (torch.randn(3, 4, generator=g) for _ in range(4))
    base = float(relation_distillation(h, ho, p, po, [[0, 1, 2]]))
    assert base == pytest.approx(float(relation_distillation(h, ho, p, po, [[0, 1, 2]], 1.0)), rel=1e-6)
    assert base != pytest.approx(float(relation_distillation(h, ho, p, po, [[0, 1, 2]], 2.0)), rel=1e-3)


def _supcon_by_hand(z, y, tau):
    n, total, anchors = len(y), 0.0, 0
    sim = [[float(z[i] @ z[j]) / tau for j in range(n)] for i in range(n)]
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        if not pos:
            continue
        lse = math.log(sum(math.exp(sim[i][a]) for a in range(n) if a != i))
        total += -sum(sim[i][p] - lse for p in pos) / len(pos)
        anchors += 1
    return total / max(anchors, 1)


def test_supcon_matches_a_loop_with_classes_of_different_sizes():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(6, 3, generator=g), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 2])  # anchors with 2, 1 and no positives
    for tau in (0.1, 0.5):
        assert float(supcon_loss(z, y, tau)) == pytest.approx(_supcon_by_hand(z, y, tau), rel=1e-5)
    # no anchor with a positive: the loss is 0, not nan
    assert float(supcon_loss(z[:3], torch.tensor([0, 1, 2]))) == 0.0


def test_prototype_loss_is_one_minus_cosine_to_the_own_classes_prototype():
    h = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([1, 0, 0])
    # cos((3,0),(0,2)) = 0; cos((1,1),(1,0)) = 1/sqrt2; a zero feature has cosine 0 (not nan)
    want = ((1 - 0.0) + (1 - 2 ** -0.5) + (1 - 0.0)) / 3
    assert float(prototype_loss(h, p, y)) == pytest.approx(want, rel=1e-6)
    # cosine: the scale of the features does not matter, even for small ones
    assert float(prototype_loss(h[:2] * 0.01, p, y[:2])) == pytest.approx(float(prototype_loss(h[:2], p, y[:2])),
                                                                          rel=1e-5)


def test_relation_distillation_normalises_prototypes_of_any_norm():
    g = torch.Generator().manual_seed(1)
    h, h_old = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    p, p_old = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    tasks = [[0, 1], [2, 3]]
    want = float(relation_distillation(h, h_old, p, p_old, tasks))
    assert want > 1e-3
    # s = <h, p / ||p||>: scaling the prototypes (down to small norms) changes nothing
    assert float(relation_distillation(h, h_old, 0.01 * p, p_old, tasks)) == pytest.approx(want, rel=1e-5)
    assert float(relation_distillation(h, h_old, p, 0.01 * p_old, tasks)) == pytest.approx(want, rel=1e-5)
    # a zero prototype has similarity 0 to every feature (finite), on either side
    pz, pz_old = p.clone(), p_old.clone()
    pz[1], pz_old[1] = 0.0, 0.0
    got = float(relation_distillation(h, h_old, pz, pz_old, [[0, 1]]))
    s_new = torch.stack([h @ (p[0] / p[0].norm()), torch.zeros(4)], 1)
    s_old = torch.stack([h_old @ (p_old[0] / p_old[0].norm()), torch.zeros(4)], 1)
    kl = (s_old.softmax(1) * (s_old.log_softmax(1) - s_new.log_softmax(1))).sum(1).mean()
    assert got == pytest.approx(float(kl), rel=1e-5)


def test_prd_model_projects_for_supcon_and_classifies_by_cosine_to_seen_prototypes():
    torch.manual_seed(0)
    m = PRDModel(_backbone(), 5)
    assert [l.weight.shape for l in m.projector if isinstance(l, nn.Linear)] == [(512, 4), (128, 512)]
    s = _prd(projection_hidden=7)  # build_model passes the config's sizes
    assert [l.weight.shape for l in s.model.projector if isinstance(l, nn.Linear)] == [(7, 4), (3, 7)]
    # prototypes: (n_classes, d) in the encoder space, initialised as the code's nn.Linear weight, U(+-1/sqrt(d))
    big = PRDModel(_backbone(), 4000)
    assert big.prototypes.shape == (4000, 4)
    bound = float(big.prototypes.detach().abs().max()) * math.sqrt(4)
    assert 0.99 < bound <= 1.0
    x = torch.randn(3, 5)
    assert torch.isinf(m(x)).all()  # nothing seen yet
    m.observe(torch.tensor([1, 3]))
    out = m(x)
    h = m.backbone(x)
    cos = F.cosine_similarity(h[:, None], m.prototypes[None], dim=2)
    assert torch.allclose(out[:, [1, 3]], cos[:, [1, 3]], atol=1e-5)
    assert torch.isinf(out[:, [0, 2, 4]]).all() and (out[:, [0, 2, 4]] < 0).all()


def test_prd_optimizer_groups_give_the_prototypes_their_own_lr_without_momentum_or_decay():
    s = _prd(lr=0.05, momentum=0.5, weight_decay=0.01, proto_lr=0.2)
    opt = s.optimizer
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 2
    enc, pro = opt.param_groups
    want = {id(p) for n, p in s.model.named_parameters() if n != "prototypes"}
    assert {id(p) for p in enc["params"]} == want and len(enc["params"]) == len(want)
    assert (enc["lr"], enc["momentum"], enc["weight_decay"]) == (0.05, 0.5, 0.01)
    assert [id(p) for p in pro["params"]] == [id(s.model.prototypes)]
    assert (pro["lr"], pro["momentum"], pro["weight_decay"]) == (0.2, 0.0, 0.0)
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        o = _prd(optimizer=name, lr=0.05, weight_decay=0.01, proto_lr=0.2).optimizer
        assert type(o) is cls and all("momentum" not in g for g in o.param_groups)  # Adam's own settings only
        assert [(g["lr"], g["weight_decay"]) for g in o.param_groups] == [(0.05, 0.01), (0.2, 0.0)]
    for bad in ("rmsprop", "yogi"):  # names sorting before and after "sgd"
        with pytest.raises(ConfigError) as e:
            _prd(optimizer=bad)
        assert str(e.value) == f"unknown optimizer '{bad}'. Valid choices: adam, adamw, sgd"
    for bad, hint in (("lorra", " Did you mean 'lora'?"), ("adapter", ""), ("zzz", "")):  # around "full" and "lora"
        with pytest.raises(ConfigError) as e:
            _prd(tune=bad)
        assert str(e.value) == f"unknown prd tune '{bad}'.{hint} Valid choices: full, lora"


def test_prd_views_stack_augmented_copies_with_repeated_labels():
    x, y = torch.arange(6.0).view(2, 3), torch.tensor([4, 5])
    for views, n in ((0, 1), (1, 1), (2, 2), (3, 3)):
        s = _prd(views=views)
        calls = []
        s.augment = lambda v, c=calls: (c.append(1), v + 10 * len(c))[1]
        xx, yy = s._views(x, y)
        assert torch.equal(xx, torch.cat([x + 10 * (k + 1) for k in range(n)]))
        assert yy.tolist() == [4, 5] * n
        s.augment = None
        xx, yy = s._views(x, y)
        assert torch.equal(xx, x.repeat(n, 1)) and yy.tolist() == [4, 5] * n


def test_prd_end_of_task_keeps_a_frozen_copy_and_its_prototypes():
    torch.manual_seed(0)
    s = _prd()
    s.after_experience(SimpleNamespace(classes=[0, 1]))
    s.after_experience(SimpleNamespace(classes=(2, 3)))
    assert s.old_tasks == [[0, 1], [2, 3]]
    ob = s.old_backbone
    assert ob is not s.model.backbone and not ob.training
    assert all(not p.requires_grad for p in ob.parameters())
    assert torch.equal(s.old_prototypes, s.model.prototypes.detach()) and not s.old_prototypes.requires_grad
    x = torch.randn(3, 5)
    want = ob(x).clone()
    with torch.no_grad():
        s.model.backbone[0].weight.add_(1.0)
        s.model.prototypes.add_(1.0)
    assert torch.equal(ob(x), want)  # a copy: the model moving on does not move it
    assert not torch.equal(s.old_prototypes, s.model.prototypes.detach())


def test_prd_state_round_trip_restores_the_frozen_copy_and_every_attribute():
    from test_reliability_state import differences, snapshot

    torch.manual_seed(0)
    x, y = torch.randn(4, 5), torch.tensor([2, 2, 3, 3])
    a = _prd()
    b = copy.deepcopy(a)
    b.load_state_dict(a.state_dict())  # before any task: no frozen copy
    assert b.old_backbone is None and b.old_prototypes is None and b.old_tasks == []
    a.train_step(x[:2], torch.tensor([0, 0]))
    a.after_experience(SimpleNamespace(classes=[0, 1]))
    with torch.no_grad():
        a.model.backbone[0].weight.add_(0.5)
    a.train_step(x, y)
    b = _prd()
    b.load_state_dict(a.state_dict())
    assert b.old_tasks == [[0, 1]] and torch.equal(b.old_prototypes, a.old_prototypes)
    assert all(not p.requires_grad for p in b.old_backbone.parameters()) and not b.old_backbone.training
    assert torch.equal(b.old_backbone(x), a.old_backbone(x))
    assert differences(snapshot(a), snapshot(b)) == []  # last_parts is the only transient attribute
    la, lb = a.loss(x, y), b.loss(x, y)
    assert float(la.detach()) == pytest.approx(float(lb.detach()), rel=1e-6) and "distill" in b.last_parts


def test_prd_lora_trains_one_shared_adapter_and_freezes_batchnorm():
    full, lora = _prd(bn=True), _prd(bn=True, tune="lora", lora_r=2, lora_alpha=6)
    assert not hasattr(full.model.backbone, "_prd_lora")
    ls = lora.model.backbone._prd_lora
    assert (ls.names, ls.active, ls.r, ls.alpha) == (["shared"], "shared", 2, 6)
    trainable = [n for n, p in lora.model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    enc = lora.optimizer.param_groups[0]["params"]
    assert all(p.requires_grad for p in enc)
    assert {id(p) for p in enc} >= {id(p) for p in lora.model.projector.parameters()}
    assert len(enc) == len(trainable) + len(list(lora.model.projector.parameters()))
    x, y = torch.randn(6, 5), torch.tensor([0, 0, 1, 1, 2, 2])
    for s, bn_trains in ((full, True), (lora, False)):
        s.model.train()
        before = s.model.backbone[1].running_mean.clone()
        s.loss(x, y)
        assert s.model.backbone[1].training is bn_trains
        assert (not torch.equal(before, s.model.backbone[1].running_mean)) is bn_trains


def test_prd_loading_a_state_before_the_first_boundary_clears_an_old_copy():
    s = _prd()
    s.after_experience(SimpleNamespace(classes=[0, 1]))
    assert s.old_backbone is not None
    s.load_extra_state(_prd().extra_state())  # a state saved before any boundary: no frozen copy
    assert s.old_backbone is None and s.old_prototypes is None and s.old_tasks == []
