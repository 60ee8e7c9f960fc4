"""Tests written from the mutation run of strategies/ocm.py (issue 19): defaults and bounds, both branches of the
loss written out from the library's pieces on a tiny deterministic case (2x2 one-channel images, identity
encoder, a fixed second view and a fixed similarity offset), the replay batch size, what the boundary keeps,
and the state round trip."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.models import contrastive as C
from strategies.ocm import OCM, OCMConfig

from test_ocl2 import Ident, make

N_CLASSES = 3


def ocm(**kw):
    kw.setdefault("proj_dim", 2)
    s = make(OCM, OCMConfig(**kw), Ident(4), N_CLASSES, (1, 2, 2))
    s.views = lambda a: 0.5 * a.flip(-1) + 0.1  # a deterministic second view
    s.offset = lambda f, z: 1  # the feature slice f[:, 1:3]
    return s


def embed(model, a):
    h = a.flatten(1)  # the identity encoder
    return F.normalize(h, dim=1), F.normalize(model.proj(h), dim=1)


def sim(f, z, scale):
    return scale * (z @ z.t() + z @ f[:, 1:1 + z.shape[1]].t())


def first_loss_by_hand(s, x, y, tau):
    r = C.ocm_rotations(x, 16)
    f, z = embed(s.model, torch.cat([r, s.views(r)]))
    l_ins = C.ocm_instance_loss(sim(f, z, 1.0), C.rotation_labels(y, 16, N_CLASSES), tau)
    return F.cross_entropy(s.model(s.views(x)), y) + l_ins


def later_loss_by_hand(s, teacher, old, x, y, mx, my, tau, scale):
    r, rr = C.ocm_rotations(x, 16), C.ocm_rotations(mx, 16)
    ry, ryr = C.rotation_labels(y, 16, N_CLASSES), C.rotation_labels(my, 16, N_CLASSES)
    f, z = embed(s.model, torch.cat([r, s.views(r)]))
    fr, zr = embed(s.model, torch.cat([rr, s.views(rr)]))
    l_ins = C.ocm_instance_loss(sim(f, z, scale), ry, tau)
    l_uni = C.ocm_xent(sim(fr, zr, scale), ryr.repeat(2), tau)
    z_pre = F.normalize(teacher.proj(rr.flatten(1)), dim=1)
    l_pre = C.ocm_xent(zr[:len(rr)] @ z_pre.t(), ryr, tau)
    xa = s.views(mx)
    logits = s.model(xa)
    l_kd = F.mse_loss(teacher(xa)[:, old], logits[:, old])
    return F.cross_entropy(logits, my) + l_ins + l_uni + l_pre + l_kd, (l_ins, l_uni, l_pre, l_kd)


def test_defaults_are_the_authors():
    c = OCMConfig()
    assert (c.buffer_size, c.temperature, c.sim_scale) == (500, 0.07, 0.5)
    assert (c.lr, c.optimizer, c.weight_decay, c.adam_beta2) == (1e-3, "adam", 1e-4, 0.99)
    assert (c.replay_batch_size, c.per_class_cap, c.rotations, c.proj_dim, c.view_augment) == (64, 7, 16, 128, "ocm")
    assert not OCM.runs_task_free()


def test_validation():
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="strategy.temperature"):
            OCMConfig(temperature=bad).validate()
    OCMConfig(temperature=1e-3).validate()
    with pytest.raises(ConfigError, match="strategy.rotations"):  # the shared checks run too
        OCMConfig(rotations=8).validate()


def test_setup_starts_without_a_teacher():
    s = ocm()
    assert not s.teacher and s.old_classes == []
    assert s.model.proj.net.out_features == 2 and s.model.head.fc.weight.shape == (N_CLASSES, 4)


def test_first_experience_loss_is_ce_on_the_view_plus_the_instance_loss_unscaled():
    torch.manual_seed(0)
    s = ocm(temperature=0.3, sim_scale=0.25)
    x, y = torch.randn(2, 1, 2, 2), torch.tensor([0, 1])
    s.model.observe(y)
    with torch.no_grad():
        want = float(first_loss_by_hand(s, x, y, 0.3))
        assert abs(want - float(first_loss_by_hand(s, x, y, 0.07))) > 1e-3
    assert float(s.loss(x, y).detach()) == pytest.approx(want, rel=1e-5)


def _after_one_experience(**kw):
    torch.manual_seed(0)
    s = ocm(**kw)
    bx, by = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 0, 1, 1])
    s.model.observe(by)
    s.buffer.add(x=bx, y=by)
    s.after_experience(None)
    teacher = copy.deepcopy(s.model).eval()
    with torch.no_grad():  # the model moves on after the boundary: the teacher does not
        for p in s.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return s, teacher, bx, by


def test_boundary_keeps_a_frozen_teacher_and_the_seen_classes():
    s, teacher, _, _ = _after_one_experience()
    assert s.old_classes == [0, 1] and isinstance(s.old_classes[0], int)
    for a, b in zip(s.teacher.module.parameters(), teacher.parameters()):
        assert torch.equal(a, b) and not a.requires_grad
    assert not s.teacher.module.training


def test_later_loss_has_every_term_scaled_and_distils_old_classes_only():
    s, teacher, bx, by = _after_one_experience(temperature=0.2, sim_scale=0.4, replay_batch_size=64, per_class_cap=7)
    x, y = torch.randn(2, 1, 2, 2), torch.tensor([2, 2])
    s.model.observe(y)
    with torch.no_grad():
        want, terms = later_loss_by_hand(s, teacher, [0, 1], x, y, bx, by, 0.2, 0.4)
        other, _ = later_loss_by_hand(s, teacher, [0, 1], x, y, bx, by, 0.2, 1.0)
        assert all(float(t) > 1e-4 for t in terms) and abs(float(want) - float(other)) > 1e-3
    assert float(s.loss(x, y).detach()) == pytest.approx(float(want), rel=1e-5)


def record_samples(monkeypatch, buffer):
    """The (n, replace) of every buffer.sample call, in a list that fills as the strategy samples."""
    asked = []
    real = buffer.sample

    def spy(n, replace=True, **kw):
        asked.append((n, replace))
        return real(n, replace=replace, **kw)

    monkeypatch.setattr(buffer, "sample", spy)
    return asked


def test_replay_batch_is_min_of_its_size_and_the_per_class_cap(monkeypatch):
    s, _, _, _ = _after_one_experience(replay_batch_size=4, per_class_cap=1)
    s.model.observe(torch.tensor([2]))  # 3 classes seen
    asked = record_samples(monkeypatch, s.buffer)
    x, y = torch.randn(2, 1, 2, 2), torch.tensor([2, 2])
    s.loss(x, y)
    s.cfg.replay_batch_size = 2
    s.loss(x, y)
    assert asked == [(3, False), (2, False)]


def test_state_round_trip_keeps_teacher_old_classes_and_buffer():
    s, teacher, bx, by = _after_one_experience()
    state = s.extra_state()
    assert state["old_classes"] == [0, 1]
    t = ocm()
    t.model.load_state_dict(s.model.state_dict())
    t.load_extra_state(state)
    assert t.old_classes == [0, 1] and len(t.buffer) == 5
    for a, b in zip(t.teacher.module.parameters(), teacher.parameters()):
        assert torch.equal(a, b)
    x, y = torch.randn(2, 1, 2, 2), torch.tensor([2, 2])
    s.model.observe(y)
    t.model.observe(y)
    torch.manual_seed(3)
    a = float(s.loss(x, y).detach())
    torch.manual_seed(3)
    assert float(t.loss(x, y).detach()) == pytest.approx(a, rel=1e-6)
