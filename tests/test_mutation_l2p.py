"""Tests written from the mutation run of strategies/l2p.py (issue 19): defaults, the readout by backbone family,
the batch majority by hand, the query, the prompted forward and the loss by hand, the selection counts and their
entropy, the optimiser's groups, what is frozen and which modes a step runs in, and L2L's keyed LoRA pool.
Tiny ViTs (16 x 16 images, 4 patches)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, backbones
from cl.models.backbones import build_backbone
from strategies.l2p import KeyedLoraPool, L2LConfig, L2PConfig, majority, resolve_readout

from test_strategies2_mechanism import make_strategy
from tiny_prompt_models import SHAPE, scaled, scenario, vit


def strategy(name="l2p", **kw):
    kw = {"pool_size": 4, "top_k": 2, "length": 2, **kw}
    return make_strategy(name, vit(), scenario(), **kw)


def test_defaults_are_the_papers_and_official_configs():
    c = L2PConfig()
    assert (c.lr, c.optimizer, c.pool_size, c.length, c.top_k, c.pull_coef) == (0.03, "adam", 10, 5, 5, 1.0)
    assert (c.class_mask, c.batchwise_prompt, c.reset_optimizer, c.train_eval_mode) == (True, False, True, False)
    assert (c.readout, c.prompt_init, c.prompt_lr) == ("auto", "uniform", None)
    d = L2LConfig()
    assert (d.lr, d.top_k, d.r, d.alpha, d.targets, d.pool_size) == (0.01, 1, 8, 16, None, 10)
    s = make_strategy("l2p", vit(), scenario())
    assert s.model.readout == "prompts" and s.model.batchwise is False
    assert (s.model.pool.size, s.model.pool.length, s.model.pool.top_k) == (10, 5, 5)
    assert float(s.model.pool.prompts.max()) <= 0.01 and float(s.model.pool.prompts.min()) >= 0  # U(0, 0.01)
    assert s.model.last_index is None and s.model.last_key_loss is None


def test_readout_by_backbone_family_and_bad_values():
    assert resolve_readout("auto", SimpleNamespace(family="bert")) == "mean"
    assert resolve_readout("auto", SimpleNamespace(family="vit")) == "prompts"
    assert resolve_readout("auto", SimpleNamespace()) == "prompts"
    for r in ("prompts", "cls", "mean"):
        assert resolve_readout(r, SimpleNamespace(family="bert")) == r
    with pytest.raises(ConfigError, match=r"unknown l2p readout 'pool'. Valid choices: auto, cls, mean, prompts"):
        resolve_readout("pool", SimpleNamespace())
    assert strategy(readout="cls").model.readout == "cls"


def test_majority_is_the_k_most_frequent_entries_for_every_sample():
    idx = torch.tensor([[3, 1], [1, 2], [1, 3], [0, 3]])  # counts: 0:1, 1:3, 2:1, 3:3, 4:0
    got = majority(idx, 5, 2)
    assert got.shape == (4, 2) and all(sorted(r) == [1, 3] for r in got.tolist())
    assert majority(torch.tensor([[4], [4], [0]]), 5, 1).tolist() == [[4], [4], [4]]
    assert majority(torch.tensor([[0], [0]]), 5, 3).shape == (2, 3)  # minlength: entries never chosen can fill k


def test_query_is_the_unprompted_feature_and_keeps_the_mode():
    s = strategy()
    m = s.model
    x = torch.rand(3, *SHAPE) * 2 - 1
    with torch.no_grad():
        ref = m.backbone.eval()(x)
    for mode in (True, False):
        m.train(mode)
        q = m.query(x)
        assert torch.allclose(q, ref, atol=1e-6) and m.backbone.training is mode and not q.requires_grad


def test_forward_prompts_the_top_k_prompts_and_records_the_key_loss():
    s = strategy()
    m = s.model.eval()
    m.observe(torch.arange(4))
    x = torch.rand(3, *SHAPE) * 2 - 1
    with torch.no_grad():
        m.pool.keys.copy_(torch.randn(4, 16))
        q = m.backbone(x)
        sim = F.normalize(q, dim=-1) @ F.normalize(m.pool.keys, dim=-1).t()
        idx = sim.topk(2, dim=1).indices
        P = m.pool.prompts[idx].reshape(3, 4, 16)
        want = m.head(m.backbone(x, prompts=P, pool="prompts"))
        assert torch.allclose(m(x), want, atol=1e-5)
        assert torch.equal(m.last_index, idx)
        assert float(m.last_key_loss) == pytest.approx(float((1 - sim.gather(1, idx)).mean()), rel=1e-5)
        m.batchwise = True
        m(x)
        maj = majority(idx, 4, 2)
        assert torch.equal(m.last_index, maj)
        assert float(m.last_key_loss) == pytest.approx(float((1 - sim.gather(1, maj)).mean()), rel=1e-5)


def test_build_freezes_the_backbone_and_passes_the_pool_options():
    s = strategy(pool_size=5, top_k=3, length=4, prompt_init="symmetric", batchwise_prompt=True)
    m = s.model
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert (m.pool.size, m.pool.length, m.pool.top_k) == (5, 4, 3) and m.pool.prompts.shape == (5, 4, 16)
    assert m.pool.keys.shape == (5, 16) and float(m.pool.prompts.min()) < -0.5  # U(-1, 1)
    assert m.batchwise is True and s.selection_counts.tolist() == [0] * 5
    mlp = build_backbone("mlp", backbones.get("mlp").config(hidden=8), SHAPE)
    with pytest.raises(ConfigError, match="l2p needs a backbone with prompt tokens .*MLP.* has none .use l2l"):
        make_strategy("l2p", mlp, scenario())


def test_optimiser_one_group_or_the_entries_at_prompt_lr():
    s = strategy(lr=0.02)
    m = s.model
    g = s.optimizer.param_groups
    assert len(g) == 1 and g[0]["lr"] == 0.02
    assert {id(p) for p in g[0]["params"]} == {id(m.pool.prompts), id(m.pool.keys), *map(id, m.head.parameters())}
    s = strategy(lr=0.02, prompt_lr=0.5)
    m = s.model
    g = s.optimizer.param_groups
    assert [x["lr"] for x in g] == [0.02, 0.5]
    assert {id(p) for p in g[0]["params"]} == {id(m.pool.keys), *map(id, m.head.parameters())}
    assert [id(p) for p in g[1]["params"]] == [id(m.pool.prompts)]
    for bad in (0.0, -0.1):
        with pytest.raises(ConfigError, match=rf"strategy.prompt_lr must be > 0 .*got {bad}"):
            strategy(prompt_lr=bad)


def test_before_experience_sets_the_class_mask_and_resets_the_optimiser_if_asked():
    exps = list(scenario())
    for reset in (True, False):
        s = strategy(reset_optimizer=reset)
        first = s.optimizer
        s.before_experience(exps[1])
        assert s.current.tolist() == [False, False, True, True]
        assert (s.optimizer is not first) == reset
        s.before_experience(exps[0])
        assert s.current.tolist() == [True, True, False, False]


@pytest.mark.parametrize("class_mask", [True, False])
def test_loss_is_masked_ce_plus_pull_coef_times_top_k_times_the_key_loss(class_mask):
    s = strategy(pull_coef=0.5, class_mask=class_mask)
    m = s.model.eval()
    exp = list(scenario())[1]
    s.before_experience(exp)
    m.observe(torch.arange(4))
    x, y = scaled(exp)[:4], exp.train_y[:4]
    with torch.no_grad():
        m.pool.keys.copy_(torch.randn(4, 16))
        logits = m(x).clone()
        if class_mask:
            logits[:, :2] = float("-inf")
        want = F.cross_entropy(logits, y) + 0.5 * 2 * m.last_key_loss
        counts = torch.bincount(m.last_index.flatten(), minlength=4)
        assert float(s.loss(x, y)) == pytest.approx(float(want), rel=1e-5)
        assert torch.equal(s.selection_counts, counts)
        s.loss(x, y)
        assert torch.equal(s.selection_counts, 2 * counts)


def test_pool_selection_metrics_by_hand_and_state():
    s = strategy()
    assert s.extra_metrics() == {"pool_entries_used": 0, "pool_selection_entropy": 0.0,
                                 "pool_selection_max_entropy": pytest.approx(math.log(4))}
    s.selection_counts = torch.tensor([3, 1, 0, 0])
    got = s.extra_metrics()
    assert got["pool_entries_used"] == 2
    assert got["pool_selection_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    s.selection_counts = torch.tensor([0, 1, 0, 0])  # one selection: all of it on one entry
    assert s.extra_metrics()["pool_selection_entropy"] == 0.0 and s.extra_metrics()["pool_entries_used"] == 1
    s.selection_counts = torch.tensor([3, 1, 0, 0])
    st = s.extra_state()
    assert set(st) == {"selection_counts"} and st["selection_counts"].tolist() == [3, 1, 0, 0]
    t = strategy()
    t.load_extra_state(st)
    assert t.selection_counts.tolist() == [3, 1, 0, 0]
    t.load_extra_state({})
    assert t.selection_counts.tolist() == [3, 1, 0, 0]


@pytest.mark.parametrize("eval_mode", [True, False])
def test_a_step_runs_in_eval_mode_only_with_train_eval_mode(eval_mode):
    s = strategy(train_eval_mode=eval_mode)
    exp = list(scenario())[0]
    s.before_experience(exp)
    s.model.train()
    modes = []
    orig = s.loss
    s.loss = lambda x, y, t=None: (modes.append(s.model.training), orig(x, y, t))[1]
    s.train_step(scaled(exp)[:4], exp.train_y[:4])
    assert modes == [not eval_mode]


def test_keyed_lora_pool_selects_top_k_by_cosine_with_the_key_loss():
    lora = SimpleNamespace()
    with pytest.raises(ConfigError, match="l2l top_k=4 is larger than the pool size 3"):
        KeyedLoraPool(lora, 3, 2, 4)
    assert KeyedLoraPool(lora, 3, 2, 3).top_k == 3  # the whole pool is a valid top_k
    pool = KeyedLoraPool(lora, 3, 2, 2)
    assert pool.keys.shape == (3, 2) and pool.names == ["pool0", "pool1", "pool2"] and pool.lora is lora
    assert float(pool.keys.min()) >= -1 and float(pool.keys.max()) <= 1
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    q = torch.tensor([[2.0, 1.0], [-1.0, 0.0]])
    idx, loss = pool.select(q)
    assert idx.tolist() == [[0, 1], [2, 1]]
    cos = [[2 / 5 ** 0.5, 1 / 5 ** 0.5], [1 / 2 ** 0.5, 0.0]]
    assert float(loss) == pytest.approx(1 - sum(map(sum, cos)) / 4, rel=1e-5)
    idx, loss = pool.select(q, torch.tensor([[2], [0]]))
    assert idx.tolist() == [[2], [0]] and float(loss) == pytest.approx(1 - (-3 / 10 ** 0.5 - 1) / 2, rel=1e-5)
    torch.manual_seed(0)
    big = KeyedLoraPool(lora, 50, 4, 1)
    assert float(big.keys.min()) < -0.8 and float(big.keys.max()) > 0.8  # U(-1, 1)


def test_l2l_runs_each_sample_with_its_selected_adapters_only():
    s = strategy("l2l", pool_size=3, top_k=2)
    m = s.model
    assert m.pool.top_k == 2 and [id(p) for p in s.prompt_params()] == [id(p) for n in m.pool.names
                                                                        for p in m.pool.lora.parameters(n)]
    assert {id(p) for p in s.trainable()} == {id(m.pool.keys), *map(id, m.head.parameters()), *map(id, s.prompt_params())}
    m.observe(torch.arange(4))
    with torch.no_grad():
        for p in s.prompt_params():
            p.add_(0.3 * torch.randn_like(p))  # LoRA updates away from zero: every adapter changes the output
        m.pool.keys.copy_(torch.randn(3, 16))
    m.eval()
    x = torch.rand(5, *SHAPE) * 2 - 1
    with torch.no_grad():
        out = m(x)
        idx = m.last_index
        for b in range(5):
            m.pool.activate(sorted(set(idx[b].tolist())))
            assert torch.allclose(out[b], m.head(m.backbone(x[b:b + 1]))[0], atol=1e-5)
        real = m.pool.select
        chosen = torch.tensor([[0, 1], [2, 0], [1, 2], [2, 1], [1, 0]])  # every pair of adapters, in both orders
        m.pool.select = lambda q, index=None: real(q, chosen if index is None else index)
        out = m(x)
        assert torch.equal(m.last_index, chosen)
        idx = chosen
        for b in range(5):
            m.pool.activate(sorted(set(idx[b].tolist())))
            assert torch.allclose(out[b], m.head(m.backbone(x[b:b + 1]))[0], atol=1e-5)
        outs = []
        for ids in ([0], [1], [2], [0, 1]):
            m.pool.activate(ids)
            outs.append(m.backbone(x))
        for i in range(4):  # each adapter set gives its own features
            assert all(not torch.allclose(outs[i], outs[j], atol=1e-4) for j in range(i))
        m.pool.activate([0])
        with m.pool.lora.disabled():
            plain = m.backbone(x)
        assert torch.allclose(m.query(x), plain, atol=1e-6)
        assert not torch.allclose(m.backbone(x), plain, atol=1e-4)


def test_l2l_step_trains_the_selected_adapters_whatever_the_query_left_active():
    s = strategy("l2l", pool_size=3, top_k=2)
    m = s.model
    exp = list(scenario())[0]
    s.before_experience(exp)
    m.observe(exp.train_y)
    real = m.pool.select
    m.pool.select = lambda q, index=None: real(q, torch.tensor([[1, 2]]).expand(len(q), -1) if index is None else index)
    x, y = scaled(exp)[:4], exp.train_y[:4]
    for p in m.parameters():
        p.grad = None
    s.loss(x, y).backward()  # the query's lora.disabled() re-applies LoraSet's active adapter (pool0) on exit
    grads = {n: [p.grad is not None for p in m.pool.lora.parameters(n)]  # (lora_A gets zeros while B is 0)
             for n in m.pool.names}
    assert all(grads["pool1"]) and all(grads["pool2"]) and not any(grads["pool0"])
    # the whole pool stays trainable, so the next task's optimiser holds every entry (not only the last forward's)
    s.before_experience(list(scenario())[1])
    held = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in s.prompt_params()} <= held
