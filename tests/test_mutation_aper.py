"""Tests written from the mutation run of strategies/aper.py (issue 19): the paper's / PILOT's defaults, the
validation bounds, which PETL module each ``petl`` builds and with which settings, the tuning head's init and
scale, the two branches of the concatenated feature, what is trained in which session, the masked loss, the
frozen BatchNorm statistics and the prototypes, on a one-block ViT of width 8 (milliseconds a forward)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError, backbones, strategies
from cl.core.strategy import RunInfo
from cl.core.streams import Scenario
from cl.models.backbones import build_backbone
from cl.models.heads import cosine_logits
from cl.models.petl import SSF, AdapterBank, VisualPrompts
from strategies.aper import APERConfig, APERModel, petl_module

D = 8
SHAPE = (3, 16, 16)


def vit(seed=0):
    torch.manual_seed(seed)
    return build_backbone("vit-tiny", backbones.get("vit-tiny").config(depth=2, embed_dim=D, num_heads=2,
                                                                      patch_size=8, img_size=16), SHAPE)


def mlp():
    torch.manual_seed(0)
    return build_backbone("mlp", backbones.get("mlp").config(), SHAPE)


def scenario(n_tasks=2, per_task=2, per_class=3):
    g = torch.Generator().manual_seed(1)
    exps, c = [], 0
    for t in range(n_tasks):
        cls = list(range(c, c + per_task))
        c += per_task
        y = torch.tensor(cls).repeat_interleave(per_class)
        x = torch.randint(0, 256, (len(y), *SHAPE), generator=g, dtype=torch.uint8)
        exps.append(SimpleNamespace(train_x=x, train_y=y, test_x=x[:2], test_y=y[:2], classes=cls, task_id=None,
                                    index=t))
    return Scenario("aper-fake", exps, c, SHAPE, list(range(c)))


def make(bb=None, sc=None, **cfg):
    sc = sc or scenario()
    bb = bb if bb is not None else vit()
    entry = strategies.get("aper")
    scfg = entry.config(**cfg)
    model = entry.obj.build_model(scfg, bb, sc)
    info = RunInfo(n_classes=sc.n_classes, input_shape=SHAPE, device=torch.device("cpu"), seed=0,
                   n_experiences=len(sc))
    s = entry.obj(scfg, model, info)
    s.setup()
    return s, sc


def _randomize(module, std=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


def test_defaults_are_pilots():
    """aper_aperpter.json (CIFAR): SGD lr 0.01, momentum 0.9, wd 5e-4; AdaptFormer 64 / 0.1 / 0.1; SSF
    N(1, 0.02); VPT deep with 5 zero-init tokens; one epoch count from the protocol, cosine down to 0."""
    c = APERConfig()
    assert (c.petl, c.lr, c.momentum, c.weight_decay, c.tune_epochs, c.min_lr) == ("adapter", 0.01, 0.9, 5e-4, None, 0.0)
    assert (c.bottleneck, c.adapter_scale, c.adapter_dropout, c.ssf_init_std) == (64, 0.1, 0.1, 0.02)
    assert (c.vpt_type, c.vpt_length, c.vpt_init, c.feature_batch) == ("deep", 5, "zeros", 256)


def test_validation_bounds():
    for ok in ({"tune_epochs": 1}, {"tune_epochs": 3}, {"tune_epochs": None}, {"vpt_length": 1, "bottleneck": 1}):
        APERConfig(**ok).validate()
    with pytest.raises(ConfigError, match=r"strategy\.tune_epochs=0: give a number of epochs >= 1, or null"):
        APERConfig(tune_epochs=0).validate()
    for bad in ({"vpt_length": 0}, {"bottleneck": 0}, {"vpt_length": 0, "bottleneck": 0}):
        with pytest.raises(ConfigError, match=r"strategy\.vpt_length=.*strategy\.bottleneck=.*both must be >= 1"):
            APERConfig(**bad).validate()
    with pytest.raises(ConfigError, match=r"strategy\.vpt_init 'gauss'.*uniform, zeros"):
        APERConfig(vpt_init="gauss").validate()


def test_petl_module_of_each_kind_with_its_settings():
    cfg = APERConfig(bottleneck=3, adapter_scale=0.7, adapter_dropout=0.2, vpt_length=2, ssf_init_std=0.0)
    bb = mlp()
    assert petl_module("finetune", bb, cfg, "aper") is None
    assert all(p.requires_grad for p in bb.parameters())  # finetune: the backbone itself trains
    with pytest.raises(ConfigError, match=r"^aper petl=ssf needs transformer blocks: it works on timm ViTs "
                                          r"\(vit-tiny, timm:vit_\*\) and minilm; \w+ has none \(petl=finetune"):
        petl_module("ssf", bb, cfg, "aper")
    for kind, cls in (("adapter", AdapterBank), ("ssf", SSF), ("vpt", VisualPrompts)):
        bb = vit()
        m = petl_module(kind, bb, cfg, "aper")
        assert isinstance(m, cls)
        assert not any(p.requires_grad for p in bb.parameters() if all(p is not q for q in m.parameters()))
        if kind == "adapter":
            assert (m.bottleneck, m.scale, m.dropout, m.n_sets) == (3, 0.7, 0.2, 1)
        elif kind == "ssf":
            assert all(torch.equal(op.scale, torch.ones_like(op.scale)) for op in m.ops)  # init_std 0: identity
        else:
            assert m.length == 2 and m.deep and len(m.sites) == 2  # deep: one prompt set per block
    vp = petl_module("vpt", vit(), APERConfig(vpt_type="shallow", vpt_init="uniform"), "aper")
    assert not vp.deep and len(vp.sites) == 1 and vp.length == 5 and vp.sites[0].tokens.abs().sum() > 0
    ssf = petl_module("ssf", vit(), APERConfig(ssf_init_std=0.5), "aper")
    assert 0.3 < torch.cat([op.scale - 1 for op in ssf.ops]).std() < 0.7


def test_tuning_head_init_is_pilots_cosine_linear():
    m = APERModel(vit(), None, 400)
    w, bound = m.tune_weight, 1 / math.sqrt(D)
    assert w.shape == (400, D) and w.abs().max() <= bound and w.min() < -0.9 * bound and w.max() > 0.9 * bound
    assert torch.equal(m.sigma.data, torch.ones(1))
    assert (m.out_dim, m.protos.sums.shape, m.protos.metric, m.protos.normalize) == (2 * D, (400, 2 * D), "cosine", False)
    with torch.no_grad():
        m.sigma.fill_(2.5)
        h = torch.randn(3, D)
        assert torch.allclose(m.tune_logits(h), 2.5 * cosine_logits(h, w))


@pytest.mark.parametrize("petl", ["adapter", "ssf", "vpt", "finetune"])
def test_features_are_the_pretrained_then_the_adapted_branch(petl):
    ref = vit().eval()
    s, _ = make(vit(), petl=petl, ssf_init_std=0.0)
    m = s.model.eval()
    _randomize(m.backbone if petl == "finetune" else m.petl)
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        pre, ad = ref(x), m.adapted(x)
        assert not torch.allclose(ad, pre, atol=1e-3)
        assert torch.equal(m.plain(x), pre)
        m.plain(x)
        assert torch.equal(m.backbone(x), ad)  # plain() switched the module back on
        assert torch.equal(m.adapted(x), ad)
        assert torch.equal(m.features(x), torch.cat([pre, ad], 1))
        assert torch.equal(m.plain(x), pre)
    # only finetune keeps a second backbone; the PETL modules switch theirs off (no copy in the checkpoint)
    assert (m.pretrained is None) is (petl != "finetune")
    assert any(k.startswith("pretrained.") for k in m.state_dict()) is (petl == "finetune")


def test_tuned_parameters_are_the_module_and_the_tuning_head():
    ids = lambda ps: sorted(id(p) for p in ps)  # noqa: E731
    s, _ = make(petl="adapter")
    m = s.model
    assert ids(m.tuned_parameters()) == ids(list(m.petl.parameters()) + [m.tune_weight, m.sigma])
    s, _ = make(mlp(), petl="finetune")
    m = s.model
    assert ids(m.tuned_parameters()) == ids(list(m.backbone.parameters()) + [m.tune_weight, m.sigma])
    assert all(not p.requires_grad for p in m.pretrained.parameters())
    assert ids(p for g in s.optimizer.param_groups for p in g["params"]) == ids(m.tuned_parameters())


def test_first_session_trains_with_the_cosine_schedule_later_sessions_nothing():
    s, sc = make(petl="adapter", tune_epochs=3, lr=0.4, min_lr=0.1, momentum=0.5, weight_decay=0.01)
    m = s.model
    s.before_experience(sc[0])
    g = s.optimizer.param_groups[0]
    assert (g["momentum"], g["weight_decay"]) == (0.5, 0.01)
    x, y = s.train_data(sc[0])
    assert torch.equal(y, sc[0].train_y.repeat(3)) and len(x) == 18
    _randomize(m.petl, 0.1)
    before = [p.detach().clone() for p in m.tuned_parameters()]
    s.model.train()
    s.train_step(s.preprocess(x[:9]), y[:9])
    assert g["lr"] == pytest.approx(0.4)  # first step at the top of the cosine
    assert all(not torch.equal(a, b) for a, b in zip(before, m.tuned_parameters()))
    s.train_step(s.preprocess(x[9:]), y[9:])
    assert g["lr"] == pytest.approx(0.1 + 0.3 * 0.5 * (1 + math.cos(math.pi / 2)))
    s.after_experience(sc[0])
    opt = s.optimizer
    s.before_experience(sc[1])
    assert s.optimizer is opt  # no new optimiser after the first session
    x1, y1 = s.train_data(sc[1])
    assert torch.equal(x1, sc[1].train_x[:1]) and torch.equal(y1, sc[1].train_y[:1])
    before = [p.detach().clone() for p in m.tuned_parameters()]
    loss = s.train_step(s.preprocess(sc[1].train_x), sc[1].train_y)
    assert loss.shape == () and loss.item() == 0.0 and g["lr"] == pytest.approx(0.1 + 0.3 * 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, m.tuned_parameters()))


def test_no_tune_epochs_trains_the_data_once_at_a_constant_lr():
    s, sc = make(petl="adapter", lr=0.3)
    s.before_experience(sc[0])
    x, y = s.train_data(sc[0])
    assert torch.equal(x, sc[0].train_x) and torch.equal(y, sc[0].train_y)
    s.model.train()
    for _ in range(2):
        s.train_step(s.preprocess(x), y)
    assert s.optimizer.param_groups[0]["lr"] == 0.3


def test_loss_is_cross_entropy_of_the_cosine_head_over_the_current_classes():
    s, sc = make(petl="adapter", adapter_dropout=0.0)
    m = s.model
    _randomize(m.petl, 0.2)
    s.before_experience(sc[0])
    s.before_experience(sc[1])  # session 1: classes 2 and 3
    s.model.train()
    x, y = s.preprocess(sc[1].train_x), sc[1].train_y
    logits = m.tune_logits(m.adapted(x)).detach()
    want = F.cross_entropy(logits[:, 2:4], y - 2)
    assert torch.allclose(s.loss(x, y), want, atol=1e-6)


def test_a_frozen_backbone_keeps_its_batchnorm_statistics_and_finetune_does_not():
    for petl, frozen in (("adapter", True), ("finetune", False)):
        bb = vit()
        bb.bn = nn.BatchNorm1d(2)  # a BatchNorm layer anywhere in the backbone
        s, sc = make(bb, petl=petl)
        s.before_experience(sc[0])
        s.model.train()
        s.loss(s.preprocess(sc[0].train_x[:2]), sc[0].train_y[:2])
        assert s.model.backbone.bn.training is not frozen


def test_prototypes_are_raw_means_of_both_branches_in_eval_mode():
    s, sc = make(petl="adapter", feature_batch=4, adapter_dropout=0.9)
    m = s.model
    _randomize(m.petl, 0.3)
    s.before_experience(sc[0])
    s.model.train()
    s.after_experience(sc[0])
    assert s.model.training  # featurised in eval mode, then put back
    m.eval()
    with torch.no_grad():
        f = m.features(s.preprocess(sc[0].train_x))
        want = torch.stack([f[sc[0].train_y == c].mean(0) for c in sc[0].classes])
        assert torch.allclose(m.protos.means[:2], want, atol=1e-5)
        assert m.seen.tolist() == [True, True, False, False]
        x = s.preprocess(sc[1].train_x)
        out = s.predict(x)
        assert torch.allclose(out[:, :2], cosine_logits(m.features(x), want), atol=1e-5)
        assert torch.isinf(out[:, 2:]).all()


def test_vpt_needs_a_vit_and_adapter_ssf_take_a_bert_encoder():
    from transformers import BertConfig, BertModel

    def bert():
        torch.manual_seed(0)
        return BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16, max_position_embeddings=16))

    with pytest.raises(ConfigError, match=r"^aper petl=vpt needs a timm ViT \(vit-tiny, timm:vit_\*\); BertModel is "
                                          r"a bert encoder: use petl=adapter or ssf$"):
        petl_module("vpt", bert(), APERConfig(), "aper")
    assert isinstance(petl_module("adapter", bert(), APERConfig(bottleneck=2), "aper"), AdapterBank)
    assert isinstance(petl_module("ssf", bert(), APERConfig(), "aper"), SSF)
