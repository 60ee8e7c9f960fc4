"""Tests written from the mutation run of strategies/onpro.py (issue 19): defaults and bounds, OPE on a buffer
batch, APF's two parts (in-batch mixup; class pairs drawn by prototype distance, with the rounding of the
counts corrected to the batch size), both branches of the loss written out from the library's pieces on a tiny
deterministic case, and the phase / first-batch bookkeeping."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.models import contrastive as C
from strategies.onpro import OnPro, OnProConfig

from test_mutation_ocm import record_samples
from test_ocl2 import Ident, make

N_CLASSES = 3


def onpro(shape=(1, 2, 2), boundaries="visible", **kw):
    kw.setdefault("proj_dim", 2)
    d = int(torch.tensor(shape).prod())
    s = make(OnPro, OnProConfig(**kw), Ident(d), N_CLASSES, shape, boundaries=boundaries)
    s.views = lambda a: 0.5 * a.flip(-1) + 0.1  # a deterministic second view
    s.offset = lambda f, z: 1
    return s


def test_defaults_are_the_authors():
    c = OnProConfig()
    assert (c.lr, c.buffer_size, c.ins_temperature, c.proto_temperature, c.sim_scale) == (5e-4, 200, 0.07, 0.5, 0.5)
    assert (c.mixup_base_rate, c.mixup_alpha, c.mixup_p, c.mixup_lower, c.mixup_upper) == (0.75, 0.4, 0.6, 0.0, 0.6)
    assert (c.optimizer, c.adam_beta2, c.weight_decay, c.replay_batch_size, c.per_class_cap) == ("adam", 0.99, 1e-4, 64, 7)
    assert OnPro.runs_task_free()
    assert OnPro.state_attrs == ("classes_mean", "boundaries_seen", "first_batch")


@pytest.mark.parametrize("field", ["ins_temperature", "proto_temperature", "mixup_alpha"])
def test_positive_fields(field):
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=f"strategy.{field}"):
            OnProConfig(**{field: bad}).validate()
    OnProConfig(**{field: 1e-3}).validate()


@pytest.mark.parametrize("field", ["mixup_base_rate", "mixup_p", "mixup_lower", "mixup_upper"])
def test_unit_interval_fields(field):
    for bad in (-0.1, 1.1):
        kw = {field: bad}
        if field == "mixup_lower":
            kw["mixup_upper"] = 1.0
        with pytest.raises(ConfigError, match=f"strategy.{field}"):
            OnProConfig(**kw).validate()
    for ok in (0.0, 1.0):
        kw = {field: ok, "mixup_lower": 0.0, "mixup_upper": 1.0}
        kw[field] = ok
        OnProConfig(**kw).validate()


def test_lower_bound_not_above_upper():
    with pytest.raises(ConfigError, match="mixup_lower"):
        OnProConfig(mixup_lower=0.5, mixup_upper=0.4).validate()
    OnProConfig(mixup_lower=0.5, mixup_upper=0.5).validate()


def test_setup_state():
    s = onpro(proj_dim=3)
    assert torch.equal(s.classes_mean, torch.zeros(N_CLASSES, 3))
    assert (s.boundaries_seen, s.first_batch) == (0, True)


def test_buffer_ope_is_the_prototype_loss_of_both_views_and_keeps_their_mean():
    torch.manual_seed(0)
    s = onpro(proto_temperature=0.3)
    bx, by = torch.randn(4, 1, 2, 2), torch.tensor([0, 2, 0, 2])
    loss = s.buffer_ope(bx, by)
    with torch.no_grad():
        z1 = F.normalize(s.model.proj(bx.flatten(1)), dim=1)
        z2 = F.normalize(s.model.proj(s.views(bx).flatten(1)), dim=1)
        want, p1, p2 = C.prototype_contrastive_loss(z1, z2, by, N_CLASSES, 0.3)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert torch.allclose(s.classes_mean, (p1 + p2) / 2, atol=1e-6) and not s.classes_mean.requires_grad
    assert s.classes_mean[1].abs().sum() == 0 and s.classes_mean[0].abs().sum() > 0


def test_phases_with_visible_and_hidden_boundaries():
    s = onpro()
    assert s.first_phase()
    s.buffer.add(x=torch.randn(2, 1, 2, 2), y=torch.tensor([0, 1]))
    assert s.first_phase()  # visible: the first experience, whatever the buffer holds
    s.after_experience(None)
    assert s.boundaries_seen == 1 and not s.first_phase()
    s.after_experience(None)
    assert s.boundaries_seen == 2
    h = onpro(boundaries="hidden")
    assert h.first_phase()
    h.buffer.add(x=torch.randn(1, 1, 2, 2), y=torch.tensor([0]))
    assert not h.first_phase()  # task-free: from the second step on
    h.after_experience(None)
    h.boundaries_seen = 0
    h.first_batch = False
    h.before_experience(None)
    assert not h.first_batch


def test_train_step_ends_the_first_batch():
    torch.manual_seed(0)
    s = onpro(replay_batch_size=4)
    s.train_step(torch.randn(2, 1, 2, 2), torch.tensor([0, 1]))
    assert s.first_batch is False and len(s.buffer) == 2
    s.before_experience(None)
    assert s.first_batch is True


def _first_by_hand(s, x, y, mem=None):
    cfg, n = s.cfg, len(y)
    r = C.ocm_rotations(x, 16)
    pair = torch.cat([r, s.views(r)])
    h = pair.flatten(1)
    f, z = F.normalize(h, dim=1), F.normalize(s.model.proj(h), dim=1)
    d = z.shape[1]
    loss = C.ocm_instance_loss(z @ z.t() + z @ f[:, 1:1 + d].t(), C.rotation_labels(y, 16, N_CLASSES),
                               cfg.ins_temperature)
    if mem is not None:
        z1 = F.normalize(s.model.proj(mem[0].flatten(1)), dim=1)
        z2 = F.normalize(s.model.proj(s.views(mem[0]).flatten(1)), dim=1)
        loss = loss + C.prototype_contrastive_loss(z1, z2, mem[1], N_CLASSES, cfg.proto_temperature)[0]
    nr = len(r)
    loss = loss + C.prototype_contrastive_loss(z[:n], z[nr:nr + n], y, N_CLASSES, cfg.proto_temperature)[0]
    return loss + F.cross_entropy(s.model(s.views(x)), y)


@pytest.mark.parametrize("with_buffer", [False, True])
def test_first_phase_loss(with_buffer):
    torch.manual_seed(0)
    s = onpro(ins_temperature=0.2, proto_temperature=0.4, sim_scale=0.3, replay_batch_size=50)
    x, y = torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 1])
    s.model.observe(y)
    mem = None
    if with_buffer:
        mem = (torch.randn(4, 1, 2, 2), torch.tensor([1, 0, 0, 1]))
        s.buffer.add(x=mem[0], y=mem[1])
    with torch.no_grad():
        want = float(_first_by_hand(s, x, y, mem))
    assert float(s.loss(x, y).detach()) == pytest.approx(want, rel=1e-5)


def _later_by_hand(s, x, y, ox, oy, mx, mix):
    cfg, n = s.cfg, len(y)
    sc = cfg.sim_scale
    my = oy.float() if mix is None else (1 - mix[:, 2]) * mix[:, 0] + mix[:, 2] * mix[:, 1]

    def emb(a):
        r = C.ocm_rotations(a, 16)
        h = torch.cat([r, s.views(r)]).flatten(1)
        return F.normalize(h, dim=1), F.normalize(s.model.proj(h), dim=1), len(r)

    def sim(f, z):
        return sc * (z @ z.t() + z @ f[:, 1:1 + z.shape[1]].t())

    f, z, nr = emb(x)
    fr, zr, _ = emb(mx)
    loss = (C.ocm_instance_loss(sim(f, z), C.rotation_labels(y, 16, N_CLASSES), cfg.ins_temperature)
            + C.ocm_xent(sim(fr, zr), C.rotation_labels(my, 16, N_CLASSES).repeat(2), cfg.ins_temperature))
    logits = s.model(s.views(mx))
    if mix is None:
        ce = F.cross_entropy(logits, oy)
    else:
        ce = ((1 - mix[:, 2]) * F.cross_entropy(logits, mix[:, 0].long(), reduction="none")
              + mix[:, 2] * F.cross_entropy(logits, mix[:, 1].long(), reduction="none")).mean()
    z1 = F.normalize(s.model.proj(ox.flatten(1)), dim=1)
    z2 = F.normalize(s.model.proj(s.views(ox).flatten(1)), dim=1)
    ope_r = C.prototype_contrastive_loss(z1, z2, oy, N_CLASSES, cfg.proto_temperature)[0]
    ope_b = C.prototype_contrastive_loss(z[:n], z[nr:nr + n], y, N_CLASSES, cfg.proto_temperature)[0]
    return ce + loss + ope_r + ope_b


@pytest.mark.parametrize("first_batch", [True, False])
def test_later_loss_with_and_without_apf(first_batch):
    torch.manual_seed(0)
    s = onpro(ins_temperature=0.2, proto_temperature=0.4, sim_scale=0.3, replay_batch_size=50)
    ox, oy = torch.randn(4, 1, 2, 2), torch.tensor([1, 0, 2, 0])  # partners oy.flip(0) differ from oy
    s.buffer.add(x=ox, y=oy)
    s.after_experience(None)
    x, y = torch.randn(3, 1, 2, 2), torch.tensor([2, 1, 2])
    s.model.observe(torch.arange(3))
    s.first_batch = first_batch
    # a fixed APF output: the buffer mixed with fixed partners and lambdas. Mixed labels only matter through
    # which rows share one: rows 0 and 1 share (1 - lam) y_a + lam y_b = 1 (and a wrong formula, e.g. (1 + lam) y_a
    # + lam y_b, would pair rows 0 and 2 instead); the second labels differ from the first (the two CE terms)
    mx = 0.7 * ox + 0.3 * ox.flip(0)
    mix = torch.tensor([[1.0, 1.0, 0.5], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.25]])
    s.buffer.sample = lambda n, replace=True: {"x": ox, "y": oy}
    s.apf = lambda a, b, n: (mx, mix)
    with torch.no_grad():
        want = _later_by_hand(s, x, y, ox, oy, ox if first_batch else mx, None if first_batch else mix)
        alt = _later_by_hand(s, x, y, ox, oy, mx, mix) if first_batch else _later_by_hand(s, x, y, ox, oy, ox, None)
        assert abs(float(want) - float(alt)) > 1e-3
    assert float(s.loss(x, y).detach()) == pytest.approx(float(want), rel=1e-5)


def test_later_replay_batch_is_min_of_its_size_and_the_per_class_cap(monkeypatch):
    s = onpro(replay_batch_size=10, per_class_cap=3)
    s.buffer.add(x=torch.randn(6, 1, 2, 2), y=torch.tensor([0, 1, 0, 1, 0, 1]))
    s.after_experience(None)
    s.model.observe(torch.tensor([0, 1]))
    asked = record_samples(monkeypatch, s.buffer)
    s.loss(torch.randn(2, 1, 2, 2), torch.tensor([1, 1]))
    s.cfg.replay_batch_size = 3
    s.loss(torch.randn(2, 1, 2, 2), torch.tensor([1, 1]))
    assert asked == [(6, False), (3, False)]  # min(10, 3 * 2 classes), then min(3, 6)


# -- APF ----------------------------------------------------------------------------------------------------
def _mixes(x, lab, mx, my):
    """Each row of x is (1 - lam) * A + lam * B for rows A, B of mx with labels lab[:, 0], lab[:, 1]."""
    for xi, (ya, yb, lam) in zip(x, lab.tolist()):
        ok = any(torch.allclose(xi, (1 - lam) * mx[i] + lam * mx[j], atol=1e-5)
                 for i in range(len(mx)) for j in range(len(mx)) if my[i] == ya and my[j] == yb)
        if not ok:
            return False
    return True


def test_apf_with_fewer_than_two_prototypes_mixes_the_whole_batch_in_batch():
    torch.manual_seed(0)
    s = onpro(shape=(1, 2, 2), mixup_p=1.0, mixup_lower=0.3, mixup_upper=0.3)
    mx, my = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    s.buffer.add(x=mx, y=my)
    s.classes_mean[1] = torch.tensor([1.0, 0.0])  # one prototype only
    x, lab = s.apf(mx, my, 6)
    assert x.shape == (6, 1, 2, 2) and torch.allclose(lab[:, 2], torch.full((6,), 0.3))
    a = {tuple(r.flatten().tolist()) for r in mx}
    firsts = []
    for xi, (ya, yb, _) in zip(x, lab.tolist()):  # lam = 0.3 with a partner drawn from the same batch
        hits = [(i, j) for i in range(6) for j in range(6)
                if torch.allclose(xi, 0.7 * mx[i] + 0.3 * mx[j], atol=1e-5) and my[i] == ya and my[j] == yb]
        assert hits
        firsts.append(hits[0][0])
    assert sorted(firsts) == list(range(6)) and len(a) == 6  # each row once: a permutation of the batch


def test_apf_without_mixing_returns_batch_rows_and_class_rows():
    torch.manual_seed(0)
    s = onpro(shape=(2,), mixup_p=0.0)
    mx = torch.arange(16, dtype=torch.float32).view(8, 2)
    my = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    s.buffer.add(x=mx, y=my)
    s.classes_mean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x, lab = s.apf(mx, my, 8)  # 6 in-batch rows and 2 from class pairs, every lambda 0
    assert x.shape == (8, 2) and torch.equal(lab[:, 2], torch.zeros(8))
    rows = [tuple(r.tolist()) for r in x]
    base = rows[:6]
    assert len(set(base)) == 6 and set(base) <= {tuple(r.tolist()) for r in mx}
    for r, (ya, _, _) in zip(x, lab.tolist()):  # lam 0: the row is a sample of its first label
        assert int(my[(mx == r).all(1)][0]) == int(ya)


@pytest.mark.parametrize("n", [8, 16, 9, 12, 4])
def test_apf_pair_counts_add_up_to_the_batch(n):
    """Three equidistant prototypes: every pair has probability 1/3, so round(p * n_prob) over- or
    undershoots n_prob (2 -> 3 x 1, 4 -> 3 x 1) and the correction makes the batch exactly n."""
    torch.manual_seed(0)
    s = onpro(shape=(2,), mixup_p=1.0)
    mx = torch.randn(n, 2)  # the replay batch is the whole input of apf (n = its length, as in the step)
    my = torch.arange(n) % 3
    s.buffer.add(x=mx, y=my)
    s.classes_mean = torch.tensor([[1.0, 0.0], [-0.5, 0.866025], [-0.5, -0.866025]])
    for _ in range(3):
        x, lab = s.apf(mx, my, n)
        n_base = int(n * 0.75)
        assert x.shape == (n, 2) and lab.shape == (n, 3)
        pairs = lab[n_base:, :2].long().tolist()
        assert all(a < b and (a, b) in {(0, 1), (0, 2), (1, 2)} for a, b in pairs)
        counts = [pairs.count(list(p)) for p in ((0, 1), (0, 2), (1, 2))]
        assert max(counts) - min(counts) <= 1  # each pair its rounded share, corrected by one at most
        assert _mixes(x, lab, mx, my)


def test_apf_pairs_of_classes_absent_from_the_buffer_use_stored_classes():
    torch.manual_seed(0)
    s = onpro(shape=(1, 2, 2), mixup_p=1.0)
    mx, my = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    s.buffer.add(x=mx, y=my)
    s.classes_mean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])  # class 2 is not in the buffer
    for _ in range(5):
        x, lab = s.apf(mx, my, 8)
        assert x.shape == (8, 1, 2, 2)
        assert set(lab[6:, :2].flatten().tolist()) <= {0.0, 1.0}
        assert (lab[6:, 2] > 0).all() and (lab[6:, 2] < 1).all()  # Beta(0.4, 0.4) lambdas with mixup_p = 1
        assert _mixes(x.flatten(1), lab, mx.flatten(1), my)


def test_apf_with_two_prototypes_draws_the_one_pair():
    torch.manual_seed(0)
    s = onpro(shape=(2,), mixup_p=1.0)
    mx, my = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    s.buffer.add(x=mx, y=my)
    s.classes_mean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # classes 0 and 1 only
    x, lab = s.apf(mx, my, 8)
    assert x.shape == (8, 2)
    assert lab[6:, :2].tolist() == [[0.0, 1.0], [0.0, 1.0]]  # int(8 * 0.75) in-batch, then 2 of the pair (0, 1)
    assert _mixes(x, lab, mx, my)


def test_apf_pair_counts_are_the_rounded_softmax_of_inverse_distances():
    """Prototypes at distances 0.5 (0-1), 0.6 (0-2) and 1.0 (1-2): softmax(2, 1.667, 1) = (0.480, 0.344, 0.177),
    so 10 pair samples split 5 / 3 / 2 (sum 10: no correction)."""
    torch.manual_seed(0)
    s = onpro(shape=(2,), mixup_p=1.0)
    mx, my = torch.randn(40, 2), torch.arange(40) % 3
    s.buffer.add(x=mx, y=my)
    s.classes_mean = torch.tensor([[1.0, 1.0], [1.5, 1.0], [0.61, 1.0 + 0.2079 ** 0.5]])
    assert torch.allclose(torch.pdist(s.classes_mean), torch.tensor([0.5, 0.6, 1.0]), atol=1e-4)
    x, lab = s.apf(mx, my, 40)  # int(40 * 0.75) = 30 in-batch rows, then 10 from pairs
    pairs = lab[30:, :2].long().tolist()
    assert [pairs.count(p) for p in ([0, 1], [0, 2], [1, 2])] == [5, 3, 2]
