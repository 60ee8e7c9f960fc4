"""Tests written from the mutation run of strategies/pnn.py (issue 19): the columns (the first keeps the
backbone's initialisation, the later ones are re-initialised), the lateral maps (shapes, no bias, a 1x1
convolution with the main layer's stride), one head per task, the forward of eq. 1 written out for three
columns of a two-layer MLP, and frozen earlier columns run in eval mode without changing the model's mode."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl.models.backbones.small import MLP, CNNConfig, MLPConfig, SmallCNN
from strategies.pnn import PNNModel


def _mlp_pnn(n_tasks=3, n_classes=5):
    torch.manual_seed(0)
    return PNNModel(MLP(MLPConfig(hidden=4, layers=2), (3,)), n_tasks, n_classes)


def test_first_column_is_the_backbone_and_later_columns_are_reinitialised():
    torch.manual_seed(0)
    bb = MLP(MLPConfig(hidden=4, layers=2), (3,))
    w0 = [p.detach().clone() for p in bb.parameters()]
    m = PNNModel(bb, 3, 5)
    assert len(m.columns) == 3 and len(m.heads) == 3
    col = [[p.detach() for p in c.parameters()] for c in m.columns]
    assert all(torch.equal(a, b) for a, b in zip(col[0], w0))  # column 0: the backbone's initialisation
    for k in (1, 2):  # every parameter of a later column drawn afresh
        assert len(col[k]) == len(w0)
        assert all(a.shape == b.shape and not torch.equal(a, b) for a, b in zip(col[k], w0)), k
    assert not any(torch.equal(a, b) for a, b in zip(col[1], col[2]))
    for h in m.heads:
        assert (h.in_features, h.out_features) == (4, 5) and h.bias is not None


def test_laterals_are_bias_free_linear_maps_from_every_earlier_column():
    m = _mlp_pnn()
    assert len(m.laterals) == 3
    for k, lat in enumerate(m.laterals):
        assert len(lat) == 1  # stage 1 only (stage 0 has no stage below it)
        assert len(lat[0]) == k  # one map from each earlier column
        for u in lat[0]:
            assert isinstance(u, nn.Linear) and (u.in_features, u.out_features) == (4, 4) and u.bias is None


def test_cnn_laterals_are_bias_free_1x1_convolutions_with_the_main_layers_stride():
    torch.manual_seed(0)
    bb = SmallCNN(CNNConfig(channels=2, blocks=3), (1, 4, 4))
    convs = [c for c in bb.net if isinstance(c, nn.Conv2d)]
    convs[1].stride = (2, 2)  # a strided main layer (stage 1) to see the stride carried over
    m = PNNModel(bb, 2, 3)
    lat = m.laterals[1]
    assert len(lat) == 2 and [len(s) for s in lat] == [1, 1]
    u1, u2 = lat[0][0], lat[1][0]
    assert isinstance(u1, nn.Conv2d) and (u1.in_channels, u1.out_channels) == (2, 4) and (u2.in_channels, u2.out_channels) == (4, 8)
    assert u1.kernel_size == (1, 1) and u1.stride == (2, 2) and u2.stride == (1, 1)
    assert u1.bias is None and u2.bias is None
    m.eval()
    assert m(torch.randn(2, 1, 4, 4), 1).shape == (2, 3)


def test_forward_is_eq_1_written_out_for_three_columns():
    m = _mlp_pnn()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(6, 3)
    c, L = m.columns, m.laterals
    relu = F.relu
    a0 = relu(c[0][0].main(x))
    a1 = relu(c[0][1].main(a0))
    b0 = relu(c[1][0].main(x))
    b1 = relu(c[1][1].main(b0) + L[1][0][0](a0))
    c0 = relu(c[2][0].main(x))
    c1 = relu(c[2][1].main(c0) + L[2][0][0](a0) + L[2][0][1](b0))
    with torch.no_grad():
        assert torch.allclose(m(x, 0), m.heads[0](a1), atol=1e-6)
        assert torch.allclose(m(x, 1), m.heads[1](b1), atol=1e-6)
        assert torch.allclose(m(x, 2), m.heads[2](c1), atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_earlier_columns_run_without_gradient_and_the_modes_are_kept(training):
    m = _mlp_pnn()
    m.train(training)
    seen = []
    for st in m.columns[0]:
        st.main.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.requires_grad)))
    out = m(torch.randn(2, 3), 1)
    assert seen == [(False, False), (False, False)]  # column 0 in eval mode, no autograd graph
    assert all(mod.training == training for mod in m.modules())  # every mode as it was
    out.sum().backward()
    assert all(p.grad is None for p in m.columns[0].parameters())
    assert all(p.grad is not None for p in m.columns[1].parameters())
    assert m.observe(torch.tensor([1])) is None
