"""Tests written from the mutation run of strategies/coda_prompt.py (issue 19): defaults, validation bounds, the
components per task, the Gram-Schmidt init when the components outnumber the dimension, the orthogonality term and
the loss by hand, which components are detached, and the optimiser's parameters.  Tiny ViTs (16 x 16 images)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from strategies.coda_prompt import CodaPromptConfig

from test_strategies2_mechanism import make_strategy
from tiny_prompt_models import scaled, scenario, vit


def strategy(depth=2, n_tasks=2, **kw):
    kw = {"pool_size": 4, "length": 2, **kw}
    return make_strategy("coda-prompt", vit(depth), scenario(n_tasks), **kw)


def penalty(X):
    X = X.reshape(X.shape[0], -1)
    G = X @ X.t()
    return sum(float((G[i, j] - float(i == j)) ** 2) for i in range(len(G)) for j in range(len(G))) / G.numel()


def test_defaults_are_the_official_configs():
    c = CodaPromptConfig()
    assert (c.lr, c.optimizer, c.pool_size, c.length, c.layers) == (0.001, "adam", 100, 8, None)
    assert (c.ortho_coef, c.class_mask, c.readout) == (0.0, True, "auto")
    s = make_strategy("coda-prompt", vit(depth=6), scenario())
    m = s.model
    assert m.layers == [0, 1, 2, 3, 4] and (m.n_tasks, m.per_task, m.length) == (2, 50, 8)
    assert m.P[0][1].shape == (50, 8, 16) and m.K[4][0].shape == (50, 16) and m.A[2][1].shape == (50, 16)
    assert m.readout == "cls"
    assert isinstance(s.optimizer, torch.optim.Adam) and s.optimizer.param_groups[0]["lr"] == 0.001


def test_validation_bounds():
    s = strategy(n_tasks=3, pool_size=3, length=2)  # the smallest valid values
    assert s.model.per_task == 1
    for exp in scenario(3):  # one component per task: each a unit row orthogonal to the earlier ones
        s.before_experience(exp)
    K = torch.cat(list(s.model.K[0])).detach()
    assert torch.allclose(K @ K.t(), torch.eye(3), atol=1e-5)
    assert strategy(n_tasks=2, pool_size=5).model.per_task == 2  # pool_size // n_tasks
    with pytest.raises(ConfigError, match=r"coda-prompt pool_size=2: .*3 tasks; valid: pool_size >= 3"):
        strategy(n_tasks=3, pool_size=2)
    for bad in (0, 1, 3):
        with pytest.raises(ConfigError, match=rf"coda-prompt length={bad}: half key, half value tokens; valid: an even"):
            strategy(length=bad)


def test_components_beyond_the_dimension_are_random_unit_vectors_with_a_warning():
    s = strategy(pool_size=40, length=2)  # 20 components per task; keys and attention vectors have 16 entries
    m = s.model
    exps = list(scenario())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s.before_experience(exps[0])
    import inspect
    from strategies.coda_prompt import CodaPrompt

    src, first = inspect.getsourcelines(CodaPrompt.before_experience)
    assert all(x.filename.endswith("coda_prompt.py") and first <= x.lineno < first + len(src)
               for x in w if "coda-prompt" in str(x.message))  # attributed to the strategy's hook (stacklevel)
    msgs = [str(x.message) for x in w if "coda-prompt" in str(x.message)]
    assert msgs and all(x == "coda-prompt: 20 components cannot be orthogonal in dimension 16; the last 4 are "
                        "random unit vectors" for x in msgs)
    assert len(msgs) == 2 * len(m.layers)  # K and A of every layer; P (2 x 16 = 32 entries) fits
    for j in range(len(m.layers)):
        K = m.K[j][0].detach()
        assert torch.allclose(K[:16] @ K[:16].t(), torch.eye(16), atol=1e-5)
        assert torch.allclose(K.norm(dim=1), torch.ones(20), atol=1e-5)
        assert not torch.allclose(K[16:] @ K[:16].t(), torch.zeros(4, 16), atol=1e-3)
        P = m.P[j][0].detach().flatten(1)
        assert torch.allclose(P @ P.t(), torch.eye(20), atol=1e-5)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s.before_experience(exps[1])
    msgs = [str(x.message) for x in w if "coda-prompt" in str(x.message)]
    assert "coda-prompt: 40 components cannot be orthogonal in dimension 16; the last 20 are random unit vectors" in msgs
    assert any("40 components cannot be orthogonal in dimension 32; the last 8 are" in x for x in msgs)  # P: 32 entries
    for j in range(len(m.layers)):
        K1 = m.K[j][1].detach()
        assert torch.allclose(K1.norm(dim=1), torch.ones(20), atol=1e-5)
        P0, P1 = m.P[j][0].detach().flatten(1), m.P[j][1].detach().flatten(1)
        assert torch.allclose(P1[:12] @ P0.t(), torch.zeros(12, 20), atol=1e-4)  # 20 + 12 = 32 orthogonal rows
        assert torch.allclose(P1.norm(dim=1), torch.ones(20), atol=1e-5)


def test_init_fits_exactly_without_a_warning():
    s = strategy(pool_size=32, length=2)  # 16 per task: exactly the dimension of K and A for task 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.before_experience(list(scenario())[0])
    K = s.model.K[0][0].detach()
    assert torch.allclose(K @ K.t(), torch.eye(16), atol=1e-5)


def test_each_task_and_run_seed_draws_its_own_init():
    exps = list(scenario())
    a, b = strategy(), strategy()
    a.before_experience(exps[0])
    b.before_experience(exps[0])
    assert torch.equal(a.model.K[0][0], b.model.K[0][0])  # reproducible
    c = strategy()
    c.info.seed = 1
    c.before_experience(exps[0])
    assert not torch.allclose(c.model.K[0][0], a.model.K[0][0], atol=1e-3)
    assert (a.task, int(a.model.n_used)) == (0, 1)
    a.before_experience(exps[1])
    assert (a.task, int(a.model.n_used)) == (1, 2)


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_loss_is_masked_ce_plus_ortho_coef_times_the_penalty_of_every_layer(coef):
    s = strategy(ortho_coef=coef)
    m = s.model
    exps = list(scenario())
    s.before_experience(exps[0])
    s.before_experience(exps[1])  # task 1: classes 2, 3; components of tasks 0 and 1 in use
    m.observe(torch.arange(4))
    x, y = scaled(exps[1])[:4], exps[1].train_y[:4]
    with torch.no_grad():  # move the components off their orthonormal init, so the penalty is not 0
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    m.eval()
    with torch.no_grad():
        logits = m(x).clone()
        logits[:, :2] = float("-inf")
        want_ortho = sum(penalty(torch.cat([plist[0], plist[1]])) for _, _, plist in m.groups())
        _, ortho = m.per_layer(m.query(x), train=True, ortho_terms=True)
        assert float(ortho) == pytest.approx(want_ortho, rel=1e-5)
        _, none = m.per_layer(m.query(x), train=True)
        assert float(none) == 0.0
        want = F.cross_entropy(logits, y) + coef * want_ortho
        assert float(s.loss(x, y)) == pytest.approx(float(want), rel=1e-5)
    s.cfg.class_mask = False
    with torch.no_grad():
        assert float(s.loss(x, y)) == pytest.approx(float(F.cross_entropy(m(x), y) + coef * want_ortho), rel=1e-5)


def test_training_detaches_the_earlier_tasks_components_only():
    s = strategy()
    m = s.model
    exps = list(scenario())
    s.before_experience(exps[0])
    s.before_experience(exps[1])
    q = m.query(scaled(exps[1])[:2])
    for train in (True, False):
        for p in m.parameters():
            p.grad = None
        per, _ = m.per_layer(q, train=train)
        sum(k.sum() + v.sum() for k, v in per.values()).backward()
        assert all(p.grad is not None for p in m.task_parameters(1))
        assert all((p.grad is None) == train for p in m.task_parameters(0))
    with torch.no_grad():
        for p in m.task_parameters(1):
            p.add_(0.3)  # far from orthonormal: the penalty, if computed, would be large
    logits, ortho = m(scaled(exps[1])[:2], train=True)
    assert logits.shape == (2, 4) and ortho.dim() == 0 and float(ortho) == 0.0  # no penalty unless asked for
    assert m(scaled(exps[1])[:2]).shape == (2, 4)


def test_the_optimiser_holds_the_tasks_components_and_the_head_only():
    s = strategy()
    m = s.model
    ids = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}
    head = {id(p) for p in m.head.parameters()}
    assert ids(s.optimizer) == {id(p) for p in m.task_parameters(0)} | head  # made at construction: task 0's
    assert len(m.task_parameters(0)) == 3 * len(m.layers)
    exps = list(scenario())
    s.before_experience(exps[0])
    assert ids(s.optimizer) == {id(p) for p in m.task_parameters(0)} | head
    s.before_experience(exps[1])
    assert ids(s.optimizer) == {id(p) for p in m.task_parameters(1)} | head


def test_prefix_is_the_cosine_weighted_sum_of_components_by_hand():
    s = strategy(length=4)
    m = s.model
    exps = list(scenario())
    s.before_experience(exps[0])
    s.before_experience(exps[1])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * torch.rand(p.shape[0], *[1] * (p.dim() - 1), generator=g) * 3)
    q = torch.randn(3, 16, generator=g)
    per, _ = m.per_layer(q, train=False)
    for j, layer in enumerate(m.layers):
        P = torch.cat([m.P[j][0], m.P[j][1]]).detach()
        K = torch.cat([m.K[j][0], m.K[j][1]]).detach()
        A = torch.cat([m.A[j][0], m.A[j][1]]).detach()
        for b in range(3):
            alpha = [float(torch.dot(q[b] * A[k], K[k]) / ((q[b] * A[k]).norm() * K[k].norm())) for k in range(4)]
            p = sum(a * P[k] for k, a in enumerate(alpha))
            assert torch.allclose(per[layer][0][b], p[:2], atol=1e-5) and torch.allclose(per[layer][1][b], p[2:], atol=1e-5)
