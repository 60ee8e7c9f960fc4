"""Tests written from the mutation run of strategies/hnet.py (issue 19): the defaults (the authors' CIFAR
configuration), the parsing of hnet_hidden and the bounds of chunk_size, the chunked hypernetwork and the
recurrent one against their forwards written out, the per-tensor scale of the generated weights, the target's
parameters cut from the generated vector, the per-task BatchNorm statistics, the optimiser's parameters per task,
the targets of the output regulariser and the loss CE + beta / (number of earlier tasks) * sum of squared
differences."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_mutation_task_il import build_iso, exp_of
from torch import nn
from torch.func import functional_call

from cl.core.registry import ConfigError
from cl.models.backbones.small import CNNConfig, SmallCNN
from strategies.hnet import (
    ChunkedHNet,
    HNETConfig,
    HNETRNNConfig,
    RecurrentHNet,
    _widths,
)

X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0], [2.0, 0.1, 0.4], [-0.5, 1.5, 1.0]])
N_OUT = 12 + 4 + 16 + 4 + 16 + 4  # MLP 3 -> 4 -> 4 and a head of 4 classes


def _rnn(name, hidden=8):
    return {"rnn_hidden": hidden} if name == "hnet-rnn" else {}


def test_defaults_are_the_authors():
    c, r = HNETConfig(), HNETRNNConfig()
    assert (c.lr, c.optimizer, c.beta, c.chunk_size, c.task_emb_dim, c.chunk_emb_dim, c.hnet_hidden) == (
        0.001, "adam", 0.05, 7000, 32, 32, "")
    assert (r.lr, r.optimizer, r.beta, r.chunk_size, r.task_emb_dim, r.chunk_emb_dim, r.rnn_hidden) == (
        0.001, "adam", 0.05, 2000, 32, 32, 128)


def test_hidden_widths_and_chunk_size_bounds():
    assert _widths("") == [] and _widths("100,150") == [100, 150] and _widths(" 5, ,7") == [5, 7]
    with pytest.raises(ConfigError, match=r"strategy.hnet_hidden='5,a': expected comma-separated integers"):
        _widths("5,a")
    for name in ("hnet", "hnet-rnn"):
        build_iso(name, chunk_size=1, task_emb_dim=2, chunk_emb_dim=2, **_rnn(name, 2))  # the smallest chunk
        for bad in (0, -3):
            with pytest.raises(ConfigError, match=f"strategy.chunk_size={bad}: must be a positive integer"):
                build_iso(name, chunk_size=bad)


@pytest.mark.parametrize("name", ["hnet", "hnet-rnn"])
def test_validation_bounds(name):
    small = {"chunk_size": 20, "task_emb_dim": 1, "chunk_emb_dim": 1, "beta": 0.0, "hnet_hidden": "1"}
    build_iso(name, **small, **_rnn(name, 1))  # the smallest valid values
    for bad in ({"beta": -0.01}, {"task_emb_dim": 0}, {"chunk_emb_dim": 0}, {"hnet_hidden": "3,0"},
                {"hnet_hidden": "-2"}) + (({"rnn_hidden": 0},) if name == "hnet-rnn" else ()):
        with pytest.raises(ConfigError, match=f"{name}: beta must be >= 0 and task_emb_dim, chunk_emb_dim, the "
                                              "hnet_hidden widths and rnn_hidden >= 1"):
            build_iso(name, **{**small, **_rnn(name, 1), **bad})
    want = "got beta=-1.0, task_emb_dim=0, chunk_emb_dim=2, hnet_hidden='3,0'" + (", rnn_hidden=1" if name == "hnet-rnn" else "")
    with pytest.raises(ConfigError, match=re.escape(want) + "$"):
        build_iso(name, beta=-1.0, task_emb_dim=0, chunk_emb_dim=2, hnet_hidden="3,0", **_rnn(name, 1))


def test_chunked_hypernetwork_is_an_mlp_over_task_and_chunk_embeddings():
    torch.manual_seed(0)
    cfg = HNETConfig(chunk_size=10, task_emb_dim=3, chunk_emb_dim=2, hnet_hidden="5,7")
    h = ChunkedHNet(4, 56, cfg)
    assert h.n_out == 56 and h.n_chunks == 6 and tuple(h.chunk_emb.shape) == (6, 2)
    assert len(h.task_emb) == 4 and all(tuple(e.shape) == (3,) for e in h.task_emb)
    lin = [m for m in h.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(5, 5), (5, 7), (7, 10)]
    assert [type(m) for m in h.net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    e = h.task_emb[2]
    inp = torch.cat([e.view(1, 3).repeat(6, 1), h.chunk_emb], 1)
    want = lin[2](F.relu(lin[1](F.relu(lin[0](inp))))).reshape(-1)[:56]
    assert torch.allclose(h(e), want) and h(e).shape == (56,)
    h0 = ChunkedHNet(1, 20, HNETConfig(chunk_size=10, task_emb_dim=3, chunk_emb_dim=2))
    assert h0.n_chunks == 2 and [type(m) for m in h0.net] == [nn.Linear] and h0.net[0].in_features == 5


def test_recurrent_hypernetwork_cuts_each_layer_into_its_own_steps():
    torch.manual_seed(0)
    cfg = HNETRNNConfig(chunk_size=5, task_emb_dim=3, chunk_emb_dim=2, rnn_hidden=6)
    sizes = [12, 4, 16, 4, 16, 4]
    h = RecurrentHNet(2, sizes, cfg)
    assert h.steps == [3, 1, 4, 1, 4, 1] and tuple(h.chunk_emb.shape) == (14, 2)
    assert (h.rnn.input_size, h.rnn.hidden_size) == (5, 6) and (h.readout.in_features, h.readout.out_features) == (6, 5)
    e = h.task_emb[1]
    out, _ = h.rnn(torch.cat([e.view(1, 3).repeat(14, 1), h.chunk_emb], 1))
    chunks = h.readout(out)
    starts = [0, 3, 4, 8, 9, 13]
    layers = h.layers(e)
    for n, k, s0, got in zip(sizes, h.steps, starts, layers):
        assert torch.allclose(got, chunks[s0:s0 + k].reshape(-1)[:n])
    assert torch.equal(h(e), torch.cat(layers)) and h(e).shape == (56,)


def _expected_scale(m):
    per = [torch.full((p.numel(),), float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0)
           for p in m.target.parameters()]
    with torch.no_grad():
        raw = float(m.hnet(m.hnet.task_emb[0]).std())
    return torch.cat(per) / raw


@pytest.mark.parametrize("name", ["hnet", "hnet-rnn"])
def test_generated_values_are_scaled_to_each_tensors_initial_spread(name):
    s = build_iso(name, chunk_size=20, task_emb_dim=4, chunk_emb_dim=4, **_rnn(name))
    m = s.model
    assert torch.allclose(m.scale, _expected_scale(m)) and m.scale.shape == (N_OUT,)
    assert not any(p.requires_grad for p in m.target.parameters())
    assert m.names == [n for n, _ in m.target.named_parameters()]


def test_scale_of_constant_and_two_element_tensors():
    torch.manual_seed(0)
    bb = SmallCNN(CNNConfig(channels=2, blocks=1), (1, 4, 4))  # conv bias of 2, BatchNorm weight all ones
    s = build_iso("hnet", backbone=bb, input_shape=(1, 4, 4), n_classes=1, chunk_size=30, task_emb_dim=4,
                  chunk_emb_dim=4)
    m = s.model
    want = _expected_scale(m)
    assert torch.allclose(m.scale, want)
    names = m.names
    off = {n: sum(math.prod(m.shapes[j]) for j in range(i)) for i, n in enumerate(names)}
    raw = float(m.hnet(m.hnet.task_emb[0]).detach().std())
    bias2 = dict(m.target.named_parameters())["backbone.net.0.bias"]
    assert m.scale[off["backbone.net.0.bias"]].item() == pytest.approx(float(bias2.std()) / raw)
    assert m.scale[off["backbone.net.1.weight"]].item() == pytest.approx(1.0 / raw)  # std 0: scale 1
    assert m.scale[off["head.fc.bias"]].item() == pytest.approx(1.0 / raw)  # one element: scale 1


def test_forward_cuts_the_target_parameters_from_the_scaled_vector():
    s = build_iso("hnet", chunk_size=20, task_emb_dim=4, chunk_emb_dim=4)
    m = s.model
    m.observe(torch.arange(4))
    theta = torch.linspace(-1, 1, N_OUT)
    v = theta * m.scale
    params, o = {}, 0
    for n, p in m.target.named_parameters():
        params[n] = v[o:o + p.numel()].view(p.shape)
        o += p.numel()
    assert torch.allclose(m(X, 0, theta), functional_call(m.target, params, (X,)))
    assert torch.allclose(m(X, 1), m(X, 1, m.generate(1)))
    assert torch.equal(m.generate(1), m.hnet(m.hnet.task_emb[1]))


def test_batchnorm_statistics_are_one_copy_per_task():
    torch.manual_seed(0)
    bb = SmallCNN(CNNConfig(channels=2, blocks=1), (1, 4, 4))
    s = build_iso("hnet", backbone=bb, input_shape=(1, 4, 4), n_tasks=3, chunk_size=30, task_emb_dim=4,
                  chunk_emb_dim=4)
    m = s.model
    assert m.bn_names == ["backbone.net.1.running_mean", "backbone.net.1.running_var",
                          "backbone.net.1.num_batches_tracked"]
    assert m._bn_key(2, "a.b.c") == "bn2__a__b__c"
    for t in range(3):
        assert torch.equal(getattr(m, m._bn_key(t, "backbone.net.1.running_var")), torch.ones(2))
    m.train()
    m.observe(torch.arange(4))
    m(torch.randn(4, 1, 4, 4) * 3 + 1, 1)
    assert not torch.equal(getattr(m, m._bn_key(1, "backbone.net.1.running_var")), torch.ones(2))
    assert torch.equal(getattr(m, m._bn_key(0, "backbone.net.1.running_var")), torch.ones(2))
    assert torch.equal(getattr(m, m._bn_key(2, "backbone.net.1.running_var")), torch.ones(2))


def test_the_optimiser_trains_theta_and_the_current_embedding_only():
    s = build_iso("hnet", n_tasks=3, chunk_size=20, task_emb_dim=4, chunk_emb_dim=4, lr=0.02)
    h = s.model.hnet
    theta = [p for n, p in h.named_parameters() if not n.startswith("task_emb.")]
    for t in (0, 2):
        s.before_experience(exp_of(X, torch.tensor([0, 1, 0, 1]), [0, 1], t))
        ps = [q for g in s.optimizer.param_groups for q in g["params"]]
        assert len(ps) == len(theta) + 1 and all(any(q is p for q in ps) for p in theta)
        assert any(q is h.task_emb[t] for q in ps) and not any(q is h.task_emb[k] for k in range(3) if k != t for q in ps)
        assert isinstance(s.optimizer, torch.optim.Adam) and s.optimizer.param_groups[0]["lr"] == 0.02
    s2 = build_iso("hnet", chunk_size=20, task_emb_dim=4, chunk_emb_dim=4)  # before any boundary: task 0
    assert any(q is s2.model.hnet.task_emb[0] for g in s2.optimizer.param_groups for q in g["params"])


@pytest.mark.parametrize("name", ["hnet", "hnet-rnn"])
def test_regulariser_targets_and_loss(name):
    s = build_iso(name, n_tasks=3, chunk_size=20, task_emb_dim=4, chunk_emb_dim=4, beta=0.5, **_rnn(name))
    y = torch.tensor([2, 3, 2, 3])
    s.before_experience(exp_of(X, y, [0, 1], 0))
    assert s.targets == [] and s.regulariser().item() == 0.0
    s.model.observe(torch.arange(4))
    ce = F.cross_entropy(s.model(X, 0)[:, :2], torch.tensor([0, 1, 0, 1]))
    assert s.loss(X, torch.tensor([0, 1, 0, 1]), 0).item() == pytest.approx(ce.item(), rel=1e-6)
    s.before_experience(exp_of(X, y, [2, 3], 2))
    assert len(s.targets) == 2
    assert all(torch.equal(tk, s.model.generate(k)) and not tk.requires_grad for k, tk in enumerate(s.targets))
    s.targets = [s.model.generate(0).detach() + 1.0, s.model.generate(1).detach() - 2.0]
    reg = (N_OUT * 1.0 + N_OUT * 4.0) / 2  # the mean over earlier tasks of the summed squared differences
    assert s.regulariser().item() == pytest.approx(reg, rel=1e-5)
    ce = F.cross_entropy(s.model(X, 2)[:, 2:], y - 2)
    assert s.loss(X, y, 2).item() == pytest.approx(ce.item() + 0.5 * reg, rel=1e-5)
    assert s.model.hnet.__class__ is (RecurrentHNet if name == "hnet-rnn" else ChunkedHNet)
