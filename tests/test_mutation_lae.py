"""LAE (strategies/lae.py), tests written from its mutation run (issue 19): defaults and bounds, which ViT
blocks get the LoRA, the online / offline pair, the head-only epochs, the EMA from the second task on, the local
CE, frozen BatchNorm, and each ensemble mode of the prediction."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, strategies
from cl.core.strategy import RunInfo
from test_ptm3 import backbone, gaussian_tasks, make, scenario, train

VIT = {"depth": 2, "embed_dim": 24, "num_heads": 2, "patch_size": 8, "img_size": 16}


def two_tasks(**cfg):
    tasks, C = gaussian_tasks(n_tasks=3)
    sc = scenario(tasks, C, (8,))
    return make("lae", backbone("mlp", hidden=8), sc, **cfg), sc


def snap(ps):
    return [p.detach().clone() for p in ps]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_lae_defaults_are_the_official_config():
    c = strategies.get("lae").config()
    assert (c.lr, c.optimizer, c.weight_decay, c.r, c.alpha, c.blocks) == (0.0028125, "adam", 0.0, 5, 5, [0, 1, 2, 3, 4])
    assert (c.ema_decay, c.freeze_epochs, c.ensemble) == (0.9999, 3, "max_prob")


@pytest.mark.parametrize("cfg,bad", [({"ema_decay": -0.1}, True), ({"ema_decay": 0.0}, False),
                                     ({"ema_decay": 1.0}, False), ({"ema_decay": 1.1}, True),
                                     ({"freeze_epochs": -1}, True), ({"freeze_epochs": 0}, False)])
def test_lae_bounds(cfg, bad):
    sc = scenario([(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))], 2, (8,))
    if bad:
        with pytest.raises(ConfigError, match=r"strategy\.ema_decay must be in \[0, 1\] and freeze_epochs >= 0") as e:
            make("lae", backbone("mlp", hidden=4), sc, **cfg)
        assert str(list(cfg.values())[0]) in str(e.value)
    else:
        make("lae", backbone("mlp", hidden=4), sc, **cfg)


def test_lae_refuses_a_backbone_without_layers_and_task_free_runs():
    sc = scenario([(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))], 2, (8,))
    with pytest.raises(ConfigError, match="lae needs a backbone a LoRA adapter can target.*got Identity"):
        make("lae", backbone("identity"), sc)
    entry = strategies.get("lae")
    model = entry.obj.build_model(entry.config(), backbone("mlp", hidden=4), sc)
    info = RunInfo(n_classes=2, input_shape=(8,), device=torch.device("cpu"), seed=0, boundaries="blurry")
    with pytest.raises(ConfigError, match="scenario.boundaries"):
        entry.obj(entry.config(), model, info).setup()


@pytest.mark.parametrize("blocks,adapted", [([1], {"blocks.1.attn.qkv"}),
                                            (None, {f"blocks.{i}.attn.{m}" for i in (0, 1) for m in ("qkv", "proj")})])
def test_lae_lora_goes_on_the_chosen_vit_blocks(blocks, adapted):
    sc = scenario([(torch.randn(4, 3, 16, 16), torch.tensor([0, 0, 1, 1]))], 2, (3, 16, 16))
    s = make("lae", backbone("vit-tiny", shape=(3, 16, 16), **VIT), sc, blocks=blocks, r=2, alpha=6)
    names = {n.split("blocks.", 1)[1].rsplit(".lora_", 1)[0] for n, _ in s.model.backbone.named_parameters()
             if ".lora_A.online" in n}
    assert {f"blocks.{n}" for n in names} == adapted
    a = next(p for n, p in s.model.backbone.named_parameters() if ".lora_A.online" in n)
    assert a.shape[0] == 2 and s.lora.r == 2 and s.lora.alpha == 6


def test_lae_optimiser_trains_the_online_adapter_and_the_head():
    s, sc = two_tasks(lr=0.01)
    s.before_experience(sc[0])
    trained = [p for g in s.optimizer.param_groups for p in g["params"]]
    want = list(s.lora.parameters("online")) + list(s.model.head.parameters())
    assert {id(p) for p in trained} == {id(p) for p in want} and len(trained) == len(want)
    assert isinstance(s.optimizer, torch.optim.Adam) and s.optimizer.param_groups[0]["lr"] == 0.01
    pairs = s._pairs()
    online = {id(p) for p in s.lora.parameters("online")}
    assert pairs and {id(on) for on, _ in pairs} == online and not {id(off) for _, off in pairs} & online
    assert s.lora.active == "online" and s.session == 0 and s.current.tolist() == [True, True, False, False, False,
                                                                                   False]
    assert s.extra_metrics() == {"adapter_params": s.lora.trainable_parameters("online")} and \
        s.extra_metrics()["adapter_params"] > 0


def test_lae_first_task_trains_the_online_adapter_from_the_first_step_and_leaves_the_offline_one():
    s, sc = two_tasks(freeze_epochs=3, lr=0.01)
    s.before_experience(sc[0])
    on0, off0 = snap(on for on, _ in s._pairs()), snap(off for _, off in s._pairs())
    x, y = sc[0].train_x, sc[0].train_y
    s.train_step(x[:8], y[:8])
    assert s._done == 8 and s._n_train == len(y)
    assert all(p.requires_grad for p in s.lora.parameters("online"))
    assert not same(on0, [on for on, _ in s._pairs()])
    assert same(off0, [off for _, off in s._pairs()])  # no EMA on the first task


def test_lae_head_only_epochs_then_the_adapter_trains():
    s, sc = two_tasks(freeze_epochs=2, lr=0.01)
    train(s, sc[0])
    s.before_experience(sc[1])
    x, y = sc[1].train_x[:16], sc[1].train_y[:16]
    s._n_train = 16  # two steps of 8 an epoch
    on0 = snap(on for on, _ in s._pairs())
    grads = []
    for i in range(7):
        s.train_step(x[i % 2 * 8:i % 2 * 8 + 8], y[i % 2 * 8:i % 2 * 8 + 8])
        grads.append(all(p.requires_grad for p in s.lora.parameters("online")))
        if i == 3:
            assert same(on0, [on for on, _ in s._pairs()])  # epochs 0 and 1: the classifier only
    assert grads == [False] * 4 + [True] * 3 and s._done == 56  # and from epoch 2 on, the adapter too
    assert not same(on0, [on for on, _ in s._pairs()])
    # a task of one sample: every step is a new epoch
    one = SimpleNamespace(train_x=x[:1], train_y=y[:1], test_x=x[:1], test_y=y[:1], classes=sc[1].classes, index=2,
                          task_id=None)
    s.cfg.freeze_epochs = 1
    s.before_experience(one)
    s.train_step(x[:1], y[:1])
    assert not any(p.requires_grad for p in s.lora.parameters("online"))
    s.train_step(x[:1], y[:1])
    assert all(p.requires_grad for p in s.lora.parameters("online"))


@pytest.mark.parametrize("d", [0.0, 1.0])
def test_lae_ema_at_the_decay_bounds(d):
    s, sc = two_tasks(freeze_epochs=0, ema_decay=d, lr=0.01)
    train(s, sc[0])
    s.before_experience(sc[1])
    off0 = snap(off for _, off in s._pairs())
    x, y = sc[1].train_x, sc[1].train_y
    s.train_step(x[:8], y[:8])
    s.train_step(x[8:16], y[8:16])
    on = [on for on, _ in s._pairs()]
    off = [off for _, off in s._pairs()]
    assert same(off, on if d == 0 else off0)
    assert not same(on, off0)


def test_lae_offline_copy_is_taken_at_the_second_task_only():
    s, sc = two_tasks(freeze_epochs=0, ema_decay=0.5, lr=0.01)
    train(s, sc[0])
    train(s, sc[1])
    off1 = snap(off for _, off in s._pairs())
    assert not same(off1, [on for on, _ in s._pairs()])
    s.before_experience(sc[2])  # the offline module carries on as the EMA, not a new copy
    assert same(off1, [off for _, off in s._pairs()]) and s.session == 2


def test_lae_loss_is_the_local_ce_of_the_augmented_batch():
    s, sc = two_tasks()
    s.before_experience(sc[1])
    x, y = sc[1].train_x[:6], sc[1].train_y[:6]
    logits = s.model.head.raw(s.model.backbone(x))[:, 2:4]
    assert s.loss(x, y).item() == pytest.approx(F.cross_entropy(logits, y - 2).item(), rel=1e-5)
    s.augment = lambda b: b * 0
    logits0 = s.model.head.raw(s.model.backbone(x * 0))[:, 2:4]
    assert s.loss(x, y).item() == pytest.approx(F.cross_entropy(logits0, y - 2).item(), rel=1e-5)


def test_lae_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8) * 3 + 1, torch.tensor([0, 1] * 4)
    sc = scenario([(x, y)], 2, (3, 8, 8))
    s = make("lae", backbone("cnn", shape=(3, 8, 8), channels=4, blocks=1), sc)
    bn = next(m for m in s.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    s.before_experience(sc[0])
    s.model.train()
    s.train_step(x, y)
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("ensemble", ["max_prob", "online", "offline"])
def test_lae_prediction_of_each_ensemble_mode(ensemble):
    s, sc = two_tasks(freeze_epochs=0, ema_decay=0.5, lr=0.05, ensemble=ensemble)
    train(s, sc[0])
    s.model.head.observe(torch.tensor([0, 1]))
    x = sc[0].train_x[:5]
    s.model.eval()
    with torch.no_grad():
        s.lora.switch("offline")
        first_offline = s.model(x).float()
        s.lora.switch("online")
        first = s.model(x).float()
        assert torch.equal(s.predict(x), first) and s.lora.active == "online"  # the first task: online alone
        assert not torch.allclose(first_offline[:, :2], first[:, :2])
    for t, seen in ((1, 4), (2, 6)):  # the second task and a later one
        train(s, sc[t])
        s.model.head.observe(torch.arange(seen))
        s.model.eval()
        with torch.no_grad():
            s.lora.switch("offline")
            off = s.model(x).float()
            s.lora.switch("online")
            on = s.model(x).float()
            got = s.predict(x)
        assert s.lora.active == "online"
        assert not torch.allclose(on[:, :seen], off[:, :seen])
        want = {"online": on, "offline": off, "max_prob": torch.maximum(on.softmax(1), off.softmax(1)).log()}[ensemble]
        assert torch.allclose(got, want, atol=1e-6) and torch.isinf(got[:, seen:]).all()
