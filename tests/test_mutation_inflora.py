"""InfLoRA (strategies/inflora.py), tests written from its mutation run (issue 19): defaults and bounds, the
branch layer by hand (forward on a row slice, Gram collection, merge), where the branch is attached, the
DualGPM memory update on hand-made Gram matrices, the designed A, the memory threshold schedule."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import strategies.inflora as inflora
from cl.core.registry import ConfigError, strategies
from cl.core.strategy import RunInfo
from cl.core.streams import Scenario
from strategies.inflora import InfLoRALinear, attach, update_memory
from test_ptm3 import backbone, make, scenario

VIT = {"depth": 2, "embed_dim": 24, "num_heads": 2, "patch_size": 8, "img_size": 16}


def exp(x, y, index=0):
    return SimpleNamespace(train_x=x, train_y=y, test_x=x[:4], test_y=y[:4], classes=sorted(set(y.tolist())),
                           task_id=None, index=index)


def proj(M):
    return M @ M.t()


def test_inflora_defaults_are_the_official_config():
    c = strategies.get("inflora").config()
    assert (c.lr, c.optimizer, c.weight_decay, c.rank, c.lamb, c.lame) == (5e-4, "adam", 0.0, 10, 0.95, 1.0)
    assert (c.train_eval_mode, c.feature_batch) == (True, 128)


@pytest.mark.parametrize("cfg,bad", [({"rank": 0}, True), ({"rank": 1}, False), ({"lamb": 0.0}, True),
                                     ({"lamb": 1.0}, False), ({"lamb": 1.01}, True), ({"lamb": -0.5}, True),
                                     ({"lame": 0.0}, True), ({"lame": -0.5}, True),
                                     ({"lame": 1.0}, False), ({"lame": 1.5}, True)])
def test_inflora_bounds(cfg, bad):
    sc = scenario([(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))], 2, (8,))
    if bad:
        (k, v), = cfg.items()
        with pytest.raises(ConfigError, match=rf"strategy\.rank must be >= 1.*{k}={v}"):
            make("inflora", backbone("mlp", hidden=4), sc, **cfg)
    else:
        make("inflora", backbone("mlp", hidden=4), sc, **cfg)


def test_inflora_needs_boundaries():
    sc = scenario([(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))], 2, (8,))
    entry = strategies.get("inflora")
    model = entry.obj.build_model(entry.config(), backbone("mlp", hidden=4), sc)
    info = RunInfo(n_classes=2, input_shape=(8,), device=torch.device("cpu"), seed=0, boundaries="hidden")
    with pytest.raises(ConfigError, match="scenario.boundaries"):
        entry.obj(entry.config(), model, info).setup()


def test_branch_layer_by_hand_on_a_row_slice():
    torch.manual_seed(0)
    base = nn.Linear(3, 5)
    layer = InfLoRALinear(base, rank=2, rows=(1, 3))
    assert layer.A.shape == (2, 3) and layer.B.shape == (2, 2) and not layer.A.any() and not layer.B.any()
    assert isinstance(layer.B, nn.Parameter) and layer.weight is base.weight
    assert sorted(layer.state_dict()) == ["A", "B", "base.bias", "base.weight"]  # the Gram buffers are not state
    A = torch.tensor([[1.0, 0, 2], [0, 1, -1]])
    B = torch.tensor([[1.0, 2], [-1, 0.5]])
    layer.A.copy_(A)
    with torch.no_grad():
        layer.B.copy_(B)
    x = torch.randn(2, 4, 3)  # tokens
    y = layer(x)
    want = base(x)
    want[..., 1:3] += x @ A.t() @ B.t()
    assert torch.allclose(y, want, atol=1e-6)
    # Gram collection: sum over every token of x x^T (float64), and the token count
    assert not layer.gram.any() and layer.count == 0
    layer._collect = True
    layer(x)
    layer(x[:1])
    z = torch.cat([x.reshape(-1, 3), x[:1].reshape(-1, 3)]).double()
    assert torch.allclose(layer.gram, z.t() @ z) and layer.count == 12
    layer._collect = False
    layer(x)
    assert layer.count == 12
    # merge: the same function, B A folded into the slice of the weight
    w0 = base.weight.detach().clone()
    layer.merge()
    assert not layer.B.any()
    assert torch.allclose(base.weight[1:3], w0[1:3] + B @ A) and torch.equal(base.weight[[0, 3, 4]], w0[[0, 3, 4]])
    assert torch.allclose(layer(x), want, atol=1e-5)


def test_branch_layer_on_every_output():
    base = nn.Linear(2, 2)
    layer = InfLoRALinear(base, rank=1)
    assert layer.B.shape == (2, 1)
    layer.A.copy_(torch.tensor([[1.0, 1.0]]))
    with torch.no_grad():
        layer.B.copy_(torch.tensor([[2.0], [-1.0]]))
    x = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(layer(x), base(x) + torch.tensor([[6.0, -3.0]]))
    w0 = base.weight.detach().clone()
    layer.merge()
    assert torch.allclose(base.weight, w0 + torch.tensor([[2.0, 2], [-1, -1]]))


def test_attach_on_a_vit_adapts_key_and_value_of_each_qkv_only():
    bb = backbone("vit-tiny", shape=(3, 16, 16), **VIT)
    layers = attach(bb, rank=3)
    names = [n for n, m in bb.named_modules() if isinstance(m, InfLoRALinear)]
    assert len(layers) == 2 and all(n.endswith("attn.qkv") for n in names) and len(names) == 2
    assert all(m.rows == (24, 72) and m.B.shape == (48, 3) for m in layers)


def test_attach_on_an_mlp_and_on_a_direct_child():
    bb = backbone("mlp", shape=(8,), hidden=4)
    layers = attach(bb, rank=2)
    assert [type(m).__name__ for m in bb.net] == ["Flatten", "InfLoRALinear", "ReLU", "InfLoRALinear", "ReLU"]
    assert [m.rows for m in layers] == [None, None] and layers[0] is bb.net[1]

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

    flat = Flat()
    layers = attach(flat, rank=1)
    assert isinstance(flat.fc, InfLoRALinear) and layers == [flat.fc]


def test_attach_refuses_what_it_cannot_adapt():
    with pytest.raises(ConfigError, match=r"cannot run on Identity \(family None\); backbones that work"):
        attach(backbone("identity"), rank=2)

    class NoLinear(nn.Module):  # a BERT-like naming without linear projections
        def __init__(self):
            super().__init__()
            self.enc = nn.Module()
            self.enc.query, self.enc.value = nn.Identity(), nn.Identity()

    with pytest.raises(ConfigError, match="found no linear layer to adapt in NoLinear"):
        attach(NoLinear(), rank=2)


E = torch.eye(4, dtype=torch.float64)
ACT = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64))  # squared singular values 16, 4, 1, 0


@pytest.mark.parametrize("threshold,k", [(0.5, 1), (0.76, 1), (0.77, 1), (0.96, 2), (0.99, 2)])
def test_first_memory_keeps_the_directions_below_the_threshold(threshold, k):
    # cumulative shares 16/21 = 0.762, 20/21 = 0.952, 1, 1: r = #{share < threshold}, at least 1
    M = update_memory(None, ACT, threshold)
    assert M.shape == (4, k) and torch.allclose(proj(M), proj(E[:, :k]))


@pytest.mark.parametrize("threshold,k", [(0.7, 1), (0.9, 2), (0.96, 3), (0.99, 3)])
def test_memory_grows_by_the_new_energy_of_the_projected_gram(threshold, k):
    # with e1 kept, the captured share starts at 16/21 = 0.762; e2 adds 4/21 (0.952), e3 1/21 (1.0)
    basis = E[:, :1].clone()
    M = update_memory(basis, ACT, threshold)
    assert M.shape == (4, k) and torch.allclose(proj(M), proj(E[:, :k]))
    if k == 1:
        assert M is basis


def test_memory_never_exceeds_the_dimension():
    # threshold 1 on a full-rank Gram: every direction is added, then the basis is cut to d columns
    act = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    M = update_memory(E[:, :1].clone(), act, 1.0 + 1e-9)
    assert M.shape == (4, 4) and torch.allclose(proj(M), E)


def test_grams_are_the_mean_input_gram_of_each_layer():
    sc = scenario([(torch.randn(6, 8), torch.tensor([0, 1] * 3))], 2, (8,))
    s = make("inflora", backbone("mlp", hidden=4), sc)
    x = torch.randn(5, 8)
    first = s._grams(x)[0]
    assert torch.allclose(first, x.double().t() @ x.double() / 5)
    assert torch.allclose(s._grams(x)[0], first)  # restarted each time
    assert torch.allclose(s._grams(x[:1])[0], x[:1].double().t() @ x[:1].double())
    assert not s._grams(x[:0])[0].any()  # no data: zeros, not nan
    assert not any(m._collect for m in s.layers)
    h = s.model.backbone.net[:3](x).double()  # the second layer's inputs
    assert torch.allclose(s._grams(x)[1], h.t() @ h / 5, atol=1e-6)


def test_designed_a_is_the_top_singular_basis_over_sqrt3_and_zero_beyond_the_dimension():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, generator=g) * torch.tensor([5.0, 4, 3, 2, 1, 0.5, 0.2, 0.1])
    sc = scenario([(x, torch.tensor([0, 1] * 15))], 2, (8,))
    s = make("inflora", backbone("mlp", hidden=4), sc, rank=3)
    s.before_experience(sc[0])
    first = s.layers[0]
    C = x.double().t() @ x.double() / 30
    U = torch.linalg.svd(C)[0][:, :3]
    A = first.A.double()
    assert torch.allclose(A @ A.t(), torch.eye(3, dtype=torch.float64) / 3, atol=1e-5)
    assert torch.allclose(A.t() @ A, proj(U) / 3, atol=1e-5)
    assert s.session == 0 and s.current.tolist() == [True, True]
    assert isinstance(s.optimizer, torch.optim.Adam) and s.optimizer.param_groups[0]["lr"] == 5e-4
    # rank 10 > the layer's 8 inputs: the rows past the dimension stay zero
    s = make("inflora", backbone("mlp", hidden=4), sc)
    s.before_experience(sc[0])
    A = s.layers[0].A.double()
    assert A.shape == (10, 8) and not A[8:].any()
    assert torch.allclose(A[:8] @ A[:8].t(), torch.eye(8, dtype=torch.float64) / 3, atol=1e-5)


def test_designed_a_stays_orthogonal_to_the_memory_when_the_new_task_has_few_new_directions():
    g = torch.Generator().manual_seed(0)

    def ortho(k):  # 40 samples whose Gram matrix is diagonal: orthogonal columns of norm sqrt(40)
        return torch.linalg.qr(torch.randn(40, k, generator=g))[0] * math.sqrt(40)

    # task 0: three strong directions and a weak fourth (below the memory threshold); task 1: two beyond the three
    x0 = (ortho(4) * torch.tensor([3.0, 2, 1.5, 0.1])) @ E8[:4].float()
    x1 = (ortho(5) * torch.tensor([1.0, 1, 1, 2, 1])) @ E8[:5].float()
    sc = scenario([(x0, torch.tensor([0, 1] * 20)), (x1, torch.tensor([2, 3] * 20))], 4, (8,))
    s = make("inflora", backbone("mlp", hidden=4), sc, rank=4, lamb=1 - 1e-9, lame=1 - 1e-9)
    s.before_experience(sc[0])
    s.after_experience(sc[0])
    M = s.bases[0]
    assert M.shape[1] == 3 and torch.allclose(proj(M), proj(E8[:, :3]), atol=1e-6)
    s.before_experience(sc[1])
    A = s.layers[0].A.double()
    assert (A @ M).abs().max() < 1e-6
    assert torch.allclose(proj(A[:2].t()) * 3, proj(E8[:, 3:5]), atol=1e-5)  # the two new directions first
    assert s.session == 1 and s.current.tolist() == [False, False, True, True]


E8 = torch.eye(8, dtype=torch.float64)


def test_after_experience_merges_then_grows_the_memory_at_the_scheduled_threshold(monkeypatch):
    x = torch.randn(12, 8)
    sc = scenario([(x, torch.tensor([0, 1] * 6))] * 3, 2, (8,))
    s = make("inflora", backbone("mlp", hidden=4), sc, lamb=0.5, lame=0.9)
    s.info.n_experiences = 4
    calls = []
    monkeypatch.setattr(inflora, "update_memory", lambda M, C, t: calls.append((M, C, t)) or torch.eye(C.shape[0],
                                                                                                        2).double())
    for i in range(3):
        s.before_experience(sc[i])
        with torch.no_grad():
            for m in s.layers:
                m.B.fill_(0.1)
        w = [m.base.weight.detach().clone() + (m.B @ m.A).detach() for m in s.layers]
        s.after_experience(sc[i])
        assert all(not m.B.any() and torch.allclose(m.base.weight, wi) for m, wi in zip(s.layers, w))
        h = s.model.backbone.net[:3](x).double()  # through the merged layer
        assert torch.allclose(calls[-1][1], h.t() @ h / 12, atol=1e-6)
    # threshold lamb + (lame - lamb) t / T: 0.5, 0.6, 0.7 over T = 4 experiences
    assert [t for _, _, t in calls[::2]] == pytest.approx([0.5, 0.6, 0.7])
    assert calls[0][0] is None and calls[2][0] is not None
    assert s.extra_metrics() == {"memory_dims": [2, 2]}
    # n_experiences unknown (0): the threshold is lamb at the first task, not a division by zero
    s = make("inflora", backbone("mlp", hidden=4), sc, lamb=0.5, lame=0.9)
    s.info.n_experiences = 0
    s.before_experience(sc[0])
    s.after_experience(sc[0])
    assert calls[-1][2] == 0.5


@pytest.mark.parametrize("eval_mode", [True, False])
def test_inflora_trains_in_eval_mode_as_the_code(eval_mode):
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    sc = scenario([(x, y)], 4, (8,))
    s = make("inflora", backbone("mlp", hidden=4), sc, train_eval_mode=eval_mode)
    s.before_experience(sc[0])
    s.model.train()
    loss = s.loss(x, y)
    assert s.model.training != eval_mode
    logits = s.model.head.raw(s.model.backbone(x))[:, :2]
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)  # local CE
    s.model.head.observe(torch.tensor([0, 1]))
    p = s.predict(x)
    assert torch.isinf(p[:, 2:]).all() and torch.allclose(p[:, :2], logits)


def test_memory_at_threshold_one_stops_once_all_the_energy_is_kept():
    # squared singular values 4, 4, 0, 0 (shares exactly 0.5 each): at the threshold 1.0 (lame) the memory stops
    # when the captured share reaches 1, without the zero-energy directions
    act = torch.diag(torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64))
    M = update_memory(E[:, :1].clone(), act, 1.0)
    assert M.shape == (4, 2) and torch.allclose(proj(M), proj(E[:, :2]))
    # the first memory counts the directions whose cumulative share is below the threshold (GPM's rule): 1 of 2
    M = update_memory(None, act, 1.0)
    assert M.shape == (4, 1)


def test_memory_growth_weighs_the_new_directions_by_their_squared_singular_values():
    # squared singular values 9, 1, 1 (total 11): with e1 kept the share is 9/11; each new direction adds 1/11,
    # so reaching 0.95 takes both
    act = torch.diag(torch.tensor([3.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    M = update_memory(E[:, :1].clone(), act, 0.95)
    assert M.shape == (4, 3) and torch.allclose(proj(M), proj(E[:, :3]))


def test_attach_on_an_mlp_family_module_adapts_a_layer_named_qkv_whole():
    class NotViT(nn.Module):  # a layer named attn.qkv but no patch embedding: the mlp family, every output adapted
        def __init__(self):
            super().__init__()
            self.attn = nn.Module()
            self.attn.qkv = nn.Linear(2, 6)

    layers = attach(NotViT(), rank=1)
    assert len(layers) == 1 and layers[0].rows is None and layers[0].B.shape == (6, 1)
