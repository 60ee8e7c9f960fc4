"""Tests written from the mutation run of strategies/dualprompt.py (issue 19): defaults, validation bounds, the
uniform init, test-time matching before any task and with ``batchwise_prompt``, a layer with both prompts, the loss
and the gradient clipping by hand, and which parameters the optimiser holds.  Tiny ViTs (16 x 16 images, 4 patches)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from strategies.dualprompt import DualPromptConfig

from test_strategies2_mechanism import make_strategy
from tiny_prompt_models import SHAPE, scaled, scenario
from tiny_prompt_models import vit as _vit


def vit(depth=5):
    return _vit(depth)


def strategy(depth=5, n_tasks=2, **kw):
    return make_strategy("dualprompt", vit(depth), scenario(n_tasks), **kw)


def test_defaults_are_the_official_configs():
    c = DualPromptConfig()
    assert c.lr == pytest.approx(0.0028125)  # 0.03 * 24 / 256
    assert (c.optimizer, c.pool_size, c.g_length, c.e_length, c.g_layers, c.e_layers) == ("adam", 10, 5, 5, None, None)
    assert (c.pull_coef, c.class_mask, c.batchwise_prompt, c.readout, c.clip_grad) == (1.0, True, False, "auto", 1.0)
    s = strategy()
    assert s.model.g.shape == (2, 2, 5, 16) and len(s.model.e) == 10 and s.model.e[0].shape == (3, 2, 5, 16)
    assert s.model.readout == "cls" and s.model.batchwise is False


def test_prompts_and_keys_start_uniform_in_minus_one_one():
    m = strategy().model
    for t in (m.g.detach(), torch.stack(list(m.e)).detach(), torch.stack(list(m.keys)).detach()):
        assert float(t.min()) >= -1 and float(t.max()) <= 1
        assert float(t.min()) < -0.8 and float(t.max()) > 0.8


def test_validation_bounds():
    strategy(n_tasks=2, pool_size=2, g_length=1, e_length=1)  # the smallest valid values
    with pytest.raises(ConfigError, match=r"dualprompt pool_size=2: one E-prompt per task.*3 tasks; valid: pool_size >= 3"):
        strategy(n_tasks=3, pool_size=2)
    for f in ("g_length", "e_length"):
        with pytest.raises(ConfigError, match=rf"dualprompt {f}=0: valid values are >= 1"):
            strategy(**{f: 0})
    strategy(clip_grad=0.0)  # off
    with pytest.raises(ConfigError, match=r"dualprompt clip_grad=-1.0: valid values are >= 0 \(0: no clipping\)"):
        strategy(clip_grad=-1.0)  # was silently "off"


def test_test_time_matching_before_any_task_and_after_each():
    s = strategy()
    m = s.model
    x = torch.rand(3, *SHAPE) * 2 - 1
    q = m.query(x)
    with torch.no_grad():
        m.keys[1].copy_(q[0])  # key 1 is the closest for sample 0, but no task has been trained yet
    assert int(m.n_seen) == 0 and m.select(q).tolist() == [0, 0, 0]
    with torch.no_grad():
        m.keys[0].copy_(torch.arange(16.0))
        m.keys[1].mul_(3)
    keys = torch.stack([m.keys[0], m.keys[1]]).detach()
    want = (q @ keys.t()) / (q.norm(dim=1, keepdim=True) * keys.norm(dim=1))  # cosine, key by key
    assert torch.allclose(m.similarity(q, 2), want, atol=1e-6)
    exps = list(scenario())
    s.before_experience(exps[0])
    assert s.task == 0
    s.after_experience(exps[0])
    assert int(m.n_seen) == 1 and m.select(q).tolist() == [0, 0, 0]
    s.before_experience(exps[1])
    s.after_experience(exps[1])
    assert s.task == 1 and int(m.n_seen) == 2 and m.select(q)[0] == 1


def test_batchwise_prompt_gives_every_sample_the_batchs_most_frequent_key():
    from strategies.dualprompt import DualPrompt

    assert DualPrompt.build_model(DualPromptConfig(), vit(), scenario()).batchwise is False  # a model made alone
    s = strategy(batchwise_prompt=True)
    m = s.model
    assert m.batchwise is True
    m.n_seen.fill_(3)
    q = torch.eye(16)[:3]
    with torch.no_grad():
        m.keys[0].copy_(q[0])
        m.keys[1].copy_(q[1] + q[2])  # samples 1 and 2 pick key 1, sample 0 key 0
        m.keys[2].copy_(-q[0] - q[1] - q[2])
    m.batchwise = False
    assert m.select(q).tolist() == [0, 1, 1]
    m.batchwise = True
    assert m.select(q).tolist() == [1, 1, 1]


def test_a_layer_with_both_prompts_gets_the_e_prefix_then_the_g_prefix():
    s = strategy(depth=2, g_length=2, e_length=3)
    m = s.model
    assert (m.g_layers, m.e_layers) == ([0, 1], [1])
    from cl.models.prompts import attention_layers

    # every layer with a G- or an E-prompt takes a prefix: layer 1 (both) too, not only the layers with one kind
    assert all("_cl_prefix" in vars(a) for a in attention_layers(m.backbone))
    idx = torch.tensor([1, 0])
    out = m.per_layer(idx)
    assert set(out) == {0, 1}
    assert torch.equal(out[0][0], m.g[0, 0]) and torch.equal(out[0][1], m.g[0, 1])
    k, v = out[1]
    assert k.shape == (2, 5, 16) and v.shape == (2, 5, 16)
    for b, t in enumerate(idx.tolist()):
        assert torch.equal(k[b, :3], m.e[t][0, 0]) and torch.equal(k[b, 3:], m.g[1, 0])
        assert torch.equal(v[b, :3], m.e[t][0, 1]) and torch.equal(v[b, 3:], m.g[1, 1])


def test_training_forward_uses_the_tasks_e_prompt_for_every_sample():
    s = strategy()
    m = s.model.eval()
    m.observe(torch.arange(4))  # every class seen: finite logits
    x = torch.rand(2, *SHAPE) * 2 - 1
    with torch.no_grad():
        want = m.head(m.features(x, m.per_layer(torch.tensor([1, 1]))))
        assert torch.allclose(m(x, task=1), want, atol=1e-6)
        assert not torch.allclose(m(x, task=0), want, atol=1e-4)


@pytest.mark.parametrize("class_mask", [True, False])
def test_loss_is_masked_ce_plus_pull_coef_times_one_minus_cosine(class_mask):
    s = strategy(pull_coef=0.5, class_mask=class_mask)
    exps = list(scenario())
    s.before_experience(exps[0])
    s.before_experience(exps[1])  # task 1: classes 2, 3
    x, y = scaled(exps[1])[:4], exps[1].train_y[:4]
    m = s.model.eval()
    m.observe(torch.arange(4))
    with torch.no_grad():
        logits = m(x, task=1)
        if class_mask:
            logits = logits.clone()
            logits[:, :2] = float("-inf")
        q, k = m.query(x), m.keys[1]
        cos = (q @ k) / (q.norm(dim=1) * k.norm())
        want = F.cross_entropy(logits, y) + 0.5 * (1 - cos).mean()
        assert float(s.loss(x, y)) == pytest.approx(float(want), rel=1e-5)


def test_gradients_are_clipped_to_clip_grad_over_the_trained_parameters_only():
    exp = list(scenario())[0]
    for clip in (0.01, 0.0):
        s = strategy(clip_grad=clip)
        s.before_experience(exp)
        m = s.model
        x, y = scaled(exp), exp.train_y
        s.loss(x, y).backward()
        params = [m.g, m.e[0], m.keys[0], *m.head.parameters()]
        before = [p.grad.clone() for p in params]
        norm = float(torch.cat([g.flatten() for g in before]).norm())
        assert norm > 0.05
        s.before_optimizer_step(x, y)
        after = torch.cat([p.grad.flatten() for p in params])
        if clip:
            assert float(after.norm()) == pytest.approx(clip, rel=1e-4)
        else:
            assert torch.equal(after, torch.cat([g.flatten() for g in before]))


def test_the_optimiser_holds_g_e_t_key_t_and_the_head_only():
    s = strategy()
    m = s.model
    ids = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}
    head = {id(p) for p in m.head.parameters()}
    assert ids(s.optimizer) == {id(m.g), id(m.e[0]), id(m.keys[0])} | head  # made at construction: task 0's
    exps = list(scenario())
    s.before_experience(exps[0])
    assert ids(s.optimizer) == {id(m.g), id(m.e[0]), id(m.keys[0])} | head
    s.before_experience(exps[1])
    assert ids(s.optimizer) == {id(m.g), id(m.e[1]), id(m.keys[1])} | head
    assert isinstance(s.optimizer, torch.optim.Adam) and s.optimizer.param_groups[0]["lr"] == pytest.approx(0.0028125)
