"""Tests written from the mutation run of strategies/_contrastive.py (issue 19), what SCR, PCR, OCM and OnPro
share: the config checks and their bounds, the buffer and the views set up from the scenario's normalisation,
the optimiser (Adam with the authors' beta2 where the config has one), the state round trip, the model with a
linear projection, and the rotation pieces (copies, labels, embeddings, the similarity offset)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from cl.models import contrastive as C
from strategies._contrastive import (
    ROTATIONS,
    ContrastiveReplay,
    RotationConfig,
    check_choice,
    check_positive,
    model_with_projection,
    record_stats,
)
from strategies.ocm import OCM, OCMConfig
from strategies.onpro import OnPro, OnProConfig
from strategies.pcr import PCR, PCRConfig
from strategies.scr import SCR, SCRConfig

from test_ocl2 import Ident, make


def test_check_choice_and_check_positive():
    check_choice("k", "a", ("a", "b"))
    with pytest.raises(ConfigError, match=r"strategy\.k.*a, b"):
        check_choice("k", "c", ("a", "b"))
    cfg = SimpleNamespace(u=1, v=1e-9, w=0, z=-2)
    check_positive(cfg, "u", "v")
    for bad in ("w", "z"):
        with pytest.raises(ConfigError, match=rf"strategy\.{bad} must be > 0, got {getattr(cfg, bad)}"):
            check_positive(cfg, "u", bad)


def test_rotation_config_defaults_and_checks():
    c = RotationConfig()
    assert (c.lr, c.optimizer, c.weight_decay, c.adam_beta2) == (1e-3, "adam", 1e-4, 0.99)
    assert (c.replay_batch_size, c.per_class_cap, c.rotations, c.proj_dim, c.view_augment) == (64, 7, 16, 128, "ocm")
    assert ROTATIONS == (1, 4, 16)
    for r in ROTATIONS:
        RotationConfig(rotations=r).validate()
    for v in ("scr", "ocm", "none"):
        RotationConfig(view_augment=v).validate()
    with pytest.raises(ConfigError, match="strategy.rotations"):
        RotationConfig(rotations=2).validate()
    with pytest.raises(ConfigError, match="strategy.view_augment"):
        RotationConfig(view_augment="x").validate()
    for f in ("replay_batch_size", "proj_dim", "per_class_cap"):
        with pytest.raises(ConfigError, match=f"strategy.{f}"):
            RotationConfig(**{f: 0}).validate()
        RotationConfig(**{f: 1}).validate()


@pytest.mark.parametrize("cls,cfg", [(SCR, SCRConfig), (PCR, PCRConfig), (OCM, OCMConfig), (OnPro, OnProConfig)])
def test_buffer_size_bound_and_view_check_at_setup(cls, cfg):
    with pytest.raises(ConfigError, match=r"strategy.buffer_size must be >= 1"):
        make(cls, cfg(buffer_size=0), Ident(4), 4, (4,))
    s = make(cls, cfg(buffer_size=1), Ident(4), 4, (4,))
    assert s.buffer.capacity == 1 and len(s.buffer) == 0
    bad = cfg(buffer_size=3)
    bad.view_augment = "simclr"  # set after the config's own validation
    with pytest.raises(ConfigError, match="strategy.view_augment"):
        make(cls, bad, Ident(4), 4, (4,))


def test_views_use_the_scenario_normalisation():
    scen = SimpleNamespace(n_classes=2, mean=(0.5,), std=(0.25,))
    cfg = OCMConfig(buffer_size=4, view_augment="ocm")
    model = OCM.build_model(cfg, Ident(4), scen)
    assert model._view_stats == ([0.5], [0.25])
    info = RunInfo(n_classes=2, input_shape=(1, 2, 2), device=torch.device("cpu"), seed=0, boundaries="visible",
                   protocol="online", n_experiences=2)
    s = OCM(cfg, model, info)
    s.setup()
    assert s.views.kind == "ocm" and float(s.views.mean.flatten()[0]) == 0.5 and float(s.views.std.flatten()[0]) == 0.25
    assert "views" in ContrastiveReplay.transient_attrs
    plain = record_stats(nn.Linear(1, 1), SimpleNamespace(mean=None, std=None))
    assert plain._view_stats == (None, None)


class Half(nn.Module):
    """A backbone with one frozen and one trainable layer."""

    def __init__(self):
        super().__init__()
        self.frozen, self.free = nn.Linear(4, 4), nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.out_dim = 4

    def forward(self, x):
        return self.free(self.frozen(x.flatten(1)))


def test_adam_with_the_authors_beta2_over_trainable_parameters_only():
    s = make(OCM, OCMConfig(lr=0.02, weight_decay=0.003, adam_beta2=0.9), Half(), 3, (4,))
    opt = s.optimizer
    assert isinstance(opt, torch.optim.Adam)
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.9) and g["lr"] == 0.02 and g["weight_decay"] == 0.003
    ids = {id(p) for p in g["params"]}
    assert id(s.model.backbone.frozen.weight) not in ids and id(s.model.backbone.free.weight) in ids
    assert len(ids) == sum(1 for p in s.model.parameters() if p.requires_grad)
    sgd = make(OCM, OCMConfig(optimizer="sgd", lr=0.05), Ident(4), 3, (4,)).optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.05
    adam = make(SCR, SCRConfig(optimizer="adam", lr=0.01), Ident(4), 3, (4,)).optimizer  # no adam_beta2 field
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.9, 0.999)
    onpro = make(OnPro, OnProConfig(), Ident(4), 3, (4,)).optimizer
    for bad in ("adagrad", "rmsprop"):  # an unknown name is an error, also one that sorts before "adam"
        with pytest.raises(ConfigError, match=r"optimizer.*adam"):
            make(OCM, OCMConfig(optimizer=bad), Ident(4), 3, (4,))
    assert onpro.param_groups[0]["betas"] == (0.9, 0.99) and onpro.param_groups[0]["lr"] == 5e-4
    adamw = make(OnPro, OnProConfig(optimizer="adamw", adam_beta2=0.95), Ident(4), 3, (4,)).optimizer
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["betas"] == (0.9, 0.95)
    assert adamw.param_groups[0]["weight_decay"] == 1e-4


def test_buffer_is_filled_after_the_step_and_round_trips():
    torch.manual_seed(0)
    s = make(PCR, PCRConfig(buffer_size=5, view_augment="none"), Ident(3), 3, (3,))
    x, y = torch.randn(3, 3), torch.tensor([0, 1, 2])
    s.after_step(x, y)
    assert len(s.buffer) == 3 and torch.equal(s.buffer.items()["x"], x)
    state = s.extra_state()
    t = make(PCR, PCRConfig(buffer_size=5, view_augment="none"), Ident(3), 3, (3,))
    t.load_extra_state(state)
    assert torch.equal(t.buffer.items()["x"], x) and torch.equal(t.buffer.items()["y"], y)


def test_model_with_projection_is_linear_and_at_most_the_feature_size():
    scen = SimpleNamespace(n_classes=5, mean=None, std=None)
    m = model_with_projection(SimpleNamespace(proj_dim=3), Ident(4), scen)
    assert isinstance(m.proj.net, nn.Linear) and (m.proj.net.in_features, m.proj.net.out_features) == (4, 3)
    assert m.head.fc.weight.shape == (5, 4) and m._view_stats == (None, None)
    m = model_with_projection(SimpleNamespace(proj_dim=128), Ident(4), scen)
    assert m.proj.net.out_features == 4


def test_rotation_pieces():
    s = make(OCM, OCMConfig(rotations=4, proj_dim=2, view_augment="none"), Ident(4), 3, (1, 2, 2))
    s.views = lambda a: a + 100
    img = torch.arange(8, dtype=torch.float32).view(2, 1, 2, 2)
    assert s.n_rot(img) == 4 and s.n_rot(img.flatten(1)) == 1
    pair, r = s.rotated_pair(img)
    assert torch.equal(r, C.ocm_rotations(img, 4)) and torch.equal(pair, torch.cat([r, r + 100]))
    assert s.rot_labels(torch.tensor([1, 2]), img).tolist() == [1, 2, 4, 5, 7, 8, 10, 11]
    assert s.rot_labels(torch.tensor([1, 2]), img.flatten(1)).tolist() == [1, 2]
    pair2, r2 = s.rotated_pair(img.flatten(1))  # non-image inputs: one copy
    assert torch.equal(r2, img.flatten(1)) and pair2.shape == (4, 4)
    f, z = s.embed(pair)
    h = pair.flatten(1)
    assert torch.allclose(f, F.normalize(h, dim=1)) and torch.allclose(z, F.normalize(s.model.proj(h), dim=1))


def test_similarity_offset_is_uniform_over_the_slices_that_fit():
    s = make(OCM, OCMConfig(proj_dim=2), Ident(4), 3, (4,))
    torch.manual_seed(0)
    f, z = torch.zeros(1, 5), torch.zeros(1, 2)
    got = {s.offset(f, z) for _ in range(200)}
    assert got == {0, 1, 2}  # D - d = 3 starts
    assert {s.offset(torch.zeros(1, 2), z) for _ in range(50)} == {0}  # D == d: the one slice
    assert isinstance(s.offset(f, z), int)
    fz = F.normalize(torch.randn(3, 5), dim=1)
    zz = F.normalize(torch.randn(3, 2), dim=1)
    s.offset = lambda a, b: 2
    assert torch.allclose(s.sim(fz, zz, 0.5), 0.5 * (zz @ zz.t() + zz @ fz[:, 2:4].t()))
