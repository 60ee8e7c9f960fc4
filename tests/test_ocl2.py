"""Issue 15 (ocl2): contrastive and prototype online-CL strategies (scr, pcr, ocm, onpro) and their shared
losses (cl/models/contrastive.py), checked on constructed cases."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl.core.config import resolve
from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from cl.models import contrastive as C
from strategies.ocm import OCM, OCMConfig
from strategies.onpro import OnPro, OnProConfig
from strategies.pcr import PCR, PCRConfig
from strategies.scr import SCR, SCRConfig

GAUSS = {"name": "gaussian", "n_tasks": 2, "n_classes": 4, "train_per_class": 12, "test_per_class": 6}


class Ident(nn.Module):
    """Features = the input (flattened), with the out_dim a backbone declares."""

    def __init__(self, d):
        super().__init__()
        self.out_dim = d

    def forward(self, x):
        return x.flatten(1)


def make(cls, cfg, backbone, n_classes, input_shape, boundaries="visible"):
    scen = SimpleNamespace(n_classes=n_classes, mean=None, std=None)
    model = cls.build_model(cfg, backbone, scen)
    info = RunInfo(n_classes=n_classes, input_shape=input_shape, device=torch.device("cpu"), seed=0,
                   boundaries=boundaries, protocol="online", n_experiences=2)
    s = cls(cfg, model, info)
    s.setup()
    return s


def hand_supcon(z, labels, tau):
    """Khosla et al.'s L_out written out: z is a list over samples of lists over views of vectors."""
    rows = [(z[i][v], labels[i]) for v in range(len(z[0])) for i in range(len(z))]
    total = 0.0
    for i, (zi, yi) in enumerate(rows):
        denom = sum(math.exp(float(zi @ za) / tau) for a, (za, _) in enumerate(rows) if a != i)
        pos = [p for p, (_, yp) in enumerate(rows) if p != i and yp == yi]
        total += -sum(math.log(math.exp(float(zi @ rows[p][0]) / tau) / denom) for p in pos) / len(pos)
    return total / len(rows)


def test_supcon_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(4, 2, 3, generator=g, dtype=torch.float64), dim=2)
    y = torch.tensor([0, 1, 0, 2])
    for tau in (0.07, 0.5):
        got = C.supcon_loss(z, y, tau)
        want = hand_supcon([[z[i, v] for v in range(2)] for i in range(4)], y.tolist(), tau)
        assert float(got) == pytest.approx(want, rel=1e-5)


def test_scr_loss_is_supcon_of_the_projections_of_both_views():
    torch.manual_seed(0)
    s = make(SCR, SCRConfig(buffer_size=8, replay_batch_size=4, temperature=0.1), Ident(3), 3, (3,))
    s.views = lambda x: 2 * x.flip(1) - 0.5  # a deterministic second view
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 0, 2, 1])
    got = s.contrastive_loss(x, y)
    with torch.no_grad():
        z1 = F.normalize(s.model.proj(x), dim=1)
        z2 = F.normalize(s.model.proj(2 * x.flip(1) - 0.5), dim=1)
    want = hand_supcon([[z1[i].double(), z2[i].double()] for i in range(5)], y.tolist(), 0.1)
    assert float(got.detach()) == pytest.approx(want, rel=1e-4)
    # a changed view changes the loss (the second view is used)
    s.views = lambda x: x
    assert float(s.contrastive_loss(x, y).detach()) != pytest.approx(want, rel=1e-3)


def test_scr_predict_is_nearest_mean_of_buffer_encoder_features():
    s = make(SCR, SCRConfig(buffer_size=10, replay_batch_size=2), Ident(2), 3, (2,))
    # buffer: class 0 around direction (1, 0), class 1 around (0, 1), class 2 at (-1, -1) -- raw lengths differ
    bx = torch.tensor([[3.0, 0.2], [1.0, -0.2], [0.1, 5.0], [-0.1, 0.5], [-2.0, -2.0]])
    by = torch.tensor([0, 0, 1, 1, 2])
    s.buffer.add(x=bx, y=by)
    s.model.observe(by)
    s.model.eval()
    q = torch.tensor([[10.0, 1.0], [0.2, 0.3], [-0.1, -3.0], [0.3, 0.2]])
    means = torch.stack([F.normalize(F.normalize(bx[by == c], dim=1).mean(0), dim=0) for c in range(3)])
    dist = torch.cdist(F.normalize(q, dim=1), means)
    want = dist.argmin(1)
    assert want.tolist() == [0, 1, 2, 0]
    assert s.predict(q).argmax(1).tolist() == want.tolist()
    # the means follow the encoder: after a (simulated) step with a new encoder, predictions are recomputed
    s.model.backbone.forward = lambda x: -x.flatten(1)
    s.steps += 1
    means2 = torch.stack([F.normalize(F.normalize(-bx[by == c], dim=1).mean(0), dim=0) for c in range(3)])
    want2 = torch.cdist(F.normalize(-q, dim=1), means2).argmin(1)
    assert s.predict(q).argmax(1).tolist() == want2.tolist()


def test_pcr_proxy_loss_on_a_constructed_case():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # proxies of classes 0, 1, 2
    y = torch.tensor([0, 1, 0])
    tau = 0.5
    # by hand: anchor i against the proxies of the batch's rows (classes 0, 1, 0): class 2 takes no part
    cos = lambda a, b: float(a @ b) / (a.norm().item() * b.norm().item())
    want = 0.0
    for i in range(3):
        denom = sum(math.exp(cos(f[i], w[y[j]]) / tau) for j in range(3))
        want += -math.log(math.exp(cos(f[i], w[y[i]]) / tau) / denom)
    want /= 3
    # e.g. anchor 0 = (1, 0): cos 1 with proxy 0 (twice in the batch), 0 with proxy 1
    assert -math.log(math.exp(2) / (2 * math.exp(2) + 1)) == pytest.approx(
        -math.log(math.exp(cos(f[0], w[0]) / tau) / sum(math.exp(cos(f[0], w[y[j]]) / tau) for j in range(3))))
    got = C.proxy_contrastive_loss(f, w, y, tau)
    assert float(got) == pytest.approx(want, rel=1e-5)
    w2 = w.clone()
    w2[2] = torch.tensor([5.0, 5.0], dtype=torch.float64)  # a class absent from the batch changes nothing
    assert float(C.proxy_contrastive_loss(f, w2, y, tau)) == pytest.approx(want, rel=1e-5)


def test_pcr_step_trains_the_proxies_of_the_batch_classes_only():
    torch.manual_seed(0)
    s = make(PCR, PCRConfig(buffer_size=20, replay_batch_size=4, view_augment="none"), Ident(4), 5, (4,))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    s.train_step(x, y)  # empty buffer: no update, the batch is stored
    w0 = s.model.head.weight.detach().clone()
    s.train_step(torch.randn(6, 4), y)
    moved = (s.model.head.weight.detach() - w0).abs().sum(1) > 0
    assert moved.tolist() == [True, True, False, False, False]


def test_ocm_xent_and_instance_loss_match_a_transcription():
    g = torch.Generator().manual_seed(1)
    b = 3
    sim = torch.randn(2 * b, 2 * b, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    lab = y.repeat(2)
    tau = 0.5
    # L_uni: every column in the denominator; weights over same-label columns (self included in the count)
    want = 0.0
    for i in range(2 * b):
        den = sum(math.exp(float(sim[i, k] - sim[i].max()) / tau) for k in range(2 * b))
        same = [j for j in range(2 * b) if lab[j] == lab[i]]
        want += sum(-math.log(math.exp(float(sim[i, j] - sim[i].max()) / tau) / den + 1e-8) for j in same) / len(same)
    assert float(C.ocm_xent(sim, lab, tau)) == pytest.approx(want / (2 * b), rel=1e-6)
    # L_n: self out of the denominator; twice the weighted term (self's constant dropped) plus the pair term
    nll = [[0.0] * (2 * b) for _ in range(2 * b)]
    for i in range(2 * b):
        den = sum(math.exp(float(sim[i, k] - sim[i].max()) / tau) for k in range(2 * b) if k != i)
        for j in range(2 * b):
            if j != i:
                nll[i][j] = -math.log(math.exp(float(sim[i, j] - sim[i].max()) / tau) / den + 1e-8)
    soft = sum(sum(nll[i][j] for j in range(2 * b) if j != i and lab[j] == lab[i])
               / sum(1 for j in range(2 * b) if lab[j] == lab[i]) for i in range(2 * b)) / (2 * b)
    pair = sum(nll[i][(i + b) % (2 * b)] for i in range(2 * b)) / (2 * b)
    assert float(C.ocm_instance_loss(sim, y, tau)) == pytest.approx(2 * soft + pair, rel=1e-6)


def test_rotations_are_16_distinct_copies_in_the_authors_order():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    r = C.ocm_rotations(x, 16)
    assert r.shape == (32, 1, 4, 4)
    assert torch.equal(r[:2], x)  # copy 0 is the input
    assert torch.equal(r[2:4, ..., :2], x[..., :2].flip(-2, -1)) and torch.equal(r[2:4, ..., 2:], x[..., 2:])
    assert torch.equal(r[8:10], torch.rot90(x, 2, (2, 3)))  # copy 4: the input rotated by 180 degrees
    flat = r.view(16, 2, -1)[:, 0]
    assert len({tuple(v.tolist()) for v in flat}) == 16
    assert C.rotation_labels(torch.tensor([1, 2]), 16, 10).tolist()[:6] == [1, 2, 11, 12, 21, 22]
    assert C.ocm_rotations(x, 4).shape == (8, 1, 4, 4)


def test_prototype_loss_on_a_constructed_case():
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 2])
    loss, p1, p2 = C.prototype_contrastive_loss(z1, z2, y, 3, temperature=1.0)
    assert torch.allclose(p1, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(p2, torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.0, 1.0]]))
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]  # normalised prototypes, view 1 (classes 0, 2)
    b = [F.normalize(torch.tensor([1.0, 1.0]), dim=0), torch.tensor([0.0, 1.0])]
    rows = a + b
    want = 0.0
    for i in range(4):
        den = sum(math.exp(float(rows[i] @ rows[k])) for k in range(4) if k != i)
        want += -math.log(math.exp(float(rows[i] @ rows[(i + 2) % 4])) / den)
    assert float(loss) == pytest.approx(want / 4, rel=1e-5)


# -- OCM and OnPro on a separable toy stream ------------------------------------------------------------
def toy_images(classes, n, g):
    """8x8 one-channel images: class c is a bright 4x4 quadrant c (no rotation maps one class onto another's
    exact pattern with the noise), plus noise."""
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    y = torch.tensor(classes).repeat(n // len(classes) + 1)[:n]
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * col:4 * col + 4] += 2.0
    return x, y


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.out_dim = 48

    def forward(self, x):
        return self.net(x)


def _run_two_experiences(strategy, steps=25):
    g = torch.Generator().manual_seed(0)
    curves = []
    for e, classes in enumerate(([0, 1], [2, 3])):
        strategy.before_experience(None)
        xs, ys = toy_images(classes, 40, g)
        losses = []
        for k in range(steps):
            idx = torch.randint(0, 40, (10,), generator=g)
            losses.append(float(strategy.train_step(xs[idx], ys[idx])))
        strategy.after_experience(None)
        curves.append(losses)
    return curves


@pytest.mark.parametrize("name", ["ocm", "onpro"])
def test_ocm_onpro_losses_finite_and_decreasing_on_a_separable_stream(name):
    torch.manual_seed(0)
    backbone = TinyCNN()
    if name == "ocm":
        cfg = OCMConfig(buffer_size=40, replay_batch_size=12, proj_dim=16, lr=3e-3)
        s = make(OCM, cfg, backbone, 4, (1, 8, 8))
    else:
        cfg = OnProConfig(buffer_size=40, replay_batch_size=12, proj_dim=16, lr=3e-3)
        s = make(OnPro, cfg, backbone, 4, (1, 8, 8))
    s.model.train()
    curves = _run_two_experiences(s)
    for losses in curves:
        assert all(math.isfinite(v) for v in losses)
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    # the mechanism's state after the boundary: OCM has its frozen teacher, OnPro its prototypes
    if name == "ocm":
        assert s.teacher and s.old_classes == [0, 1, 2, 3]
    else:
        assert s.classes_mean.abs().sum(1).gt(0).sum() >= 2


def test_onpro_apf_mixes_replay_within_batch_and_across_close_class_pairs():
    torch.manual_seed(0)
    cfg = OnProConfig(buffer_size=40, replay_batch_size=8, proj_dim=2, mixup_p=1.0)
    s = make(OnPro, cfg, Ident(2), 3, (2,))
    bx = torch.cat([torch.zeros(4, 2), torch.ones(4, 2), 10 * torch.ones(4, 2)])
    by = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    s.buffer.add(x=bx, y=by)
    s.classes_mean = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])  # classes 0 and 1 close, 2 far
    x, lab = s.apf(bx, by, 12)
    assert x.shape == (12, 2) and lab.shape == (12, 3)
    base, prob = lab[:9], lab[9:]  # int(12 * 0.75) in-batch mixes, then 3 drawn by prototype distance
    assert (base[:, 2] >= 0).all() and (base[:, 2] <= 0.6).all()
    pairs = {(int(a), int(b)) for a, b in prob[:, :2].tolist()}
    assert pairs == {(0, 1)}  # softmax(1 / distance): nearly all mass on the closest pair


# -- configuration errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,key,value,choices", [
    ("scr", "projection", "mlq", "linear, mlp"),
    ("scr", "view_augment", "simclr", "none, ocm, scr"),
    ("pcr", "view_augment", "x", "none, ocm, scr"),
    ("ocm", "rotations", 8, "1, 16, 4"),
    ("onpro", "rotations", 2, "1, 16, 4"),
])
def test_bad_choices_name_the_field_and_the_choices(name, key, value, choices):
    raw = {"strategy": {"name": name, key: value}, "scenario": GAUSS, "backbone": {"name": "mlp", "hidden": 8},
           "protocol": {"name": "online"}, "wandb": "off"}
    with pytest.raises(ConfigError) as e:
        resolve(raw)
    assert f"strategy.{key}" in str(e.value) and choices in str(e.value)


@pytest.mark.parametrize("name,key,value", [("scr", "temperature", 0.0), ("onpro", "mixup_upper", 1.5),
                                            ("pcr", "replay_batch_size", 0), ("ocm", "proj_dim", 0)])
def test_bad_numbers_name_the_field(name, key, value):
    raw = {"strategy": {"name": name, key: value}, "scenario": GAUSS, "backbone": {"name": "mlp", "hidden": 8},
           "protocol": {"name": "online"}, "wandb": "off"}
    with pytest.raises(ConfigError, match=key):
        resolve(raw)


def test_ocm_needs_boundaries_and_says_so():
    with pytest.raises(ConfigError, match=r"boundaries.*visible"):
        make(OCM, OCMConfig(), Ident(4), 4, (4,), boundaries="hidden")
    make(OnPro, OnProConfig(), Ident(4), 4, (4,), boundaries="hidden")  # task-free OnPro is allowed
    make(SCR, SCRConfig(), Ident(4), 4, (4,), boundaries="hidden")
    make(PCR, PCRConfig(), Ident(4), 4, (4,), boundaries="hidden")


@pytest.mark.parametrize("name", ["scr", "pcr", "ocm", "onpro"])
@pytest.mark.parametrize("protocol", ["online", "offline"])
def test_runs_under_both_protocols(tmp_path, name, protocol):
    from cl.train.engine import Run

    raw = {"strategy": {"name": name, "buffer_size": 16}, "scenario": GAUSS, "backbone": {"name": "mlp", "hidden": 8},
           "protocol": {"name": protocol, **({"epochs": 1, "batch_size": 8} if protocol == "offline" else {})},
           "wandb": "off"}
    res = Run(resolve(raw), progress=False, out_dir=tmp_path).execute()
    assert res["status"] == "finished", res.get("traceback")
    assert all(a is not None and math.isfinite(a) for a in res["R"][-1])


@pytest.mark.parametrize("boundaries", ["visible", "hidden"])
def test_boundary_hooks_are_ignored_when_boundaries_are_hidden(boundaries):
    """The engine calls before/after_experience in task-free runs too: SCR's review step and OnPro's
    first-batch reset must only react to visible boundaries."""
    torch.manual_seed(0)
    s = make(SCR, SCRConfig(buffer_size=20, replay_batch_size=4, view_augment="none"), Ident(3), 3, (3,),
             boundaries=boundaries)
    s.buffer.add(x=torch.randn(12, 3), y=torch.tensor([0, 1, 2] * 4))
    before = [p.detach().clone() for p in s.model.parameters()]
    s.after_experience(None)
    changed = any(not torch.equal(a, p) for a, p in zip(before, s.model.parameters()))
    assert changed == (boundaries == "visible")
    o = make(OnPro, OnProConfig(), Ident(4), 4, (4,), boundaries=boundaries)
    o.first_batch = False
    o.before_experience(None)
    assert o.first_batch == (boundaries == "visible")
