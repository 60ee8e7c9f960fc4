"""Replay-family baselines (issue 14): buffers with arbitrary fields, sampling with and without replacement,
the class-balanced greedy policy, unmasked logits, step outputs reaching after_step, and the mechanism of
gdumb, der, derpp, xder, agem, gem and er-aml on constructed cases; exact resume from a boundary."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from cl.core.config import resolve
from cl.core.registry import ConfigError, strategies
from cl.core.strategy import RunInfo, Strategy
from cl.models.buffers import ClassBalancedBuffer, ReservoirBuffer, make_buffer
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
from cl.train.engine import Run
from conftest import tiny

pytestmark = pytest.mark.usefixtures("restore_registry")


def build(name, n_classes=4, in_dim=3, n_exp=2, **cfg):
    import importlib

    importlib.import_module("strategies." + name.replace("-", "_"))
    entry = strategies.get(name)
    torch.manual_seed(0)
    model = Model(nn.Identity(), IncrementalLinear(in_dim, n_classes))
    info = RunInfo(n_classes=n_classes, input_shape=(in_dim,), device=torch.device("cpu"), seed=0,
                   n_experiences=n_exp)
    s = entry.obj(entry.config(**cfg), model, info)
    s.setup()
    return s


# -- buffers -------------------------------------------------------------------------------------------
def test_buffer_stores_arbitrary_fields_and_samples_without_replacement():
    buf = ReservoirBuffer(10)
    buf.add(x=torch.randn(6, 2), y=torch.arange(6), logits=torch.randn(6, 5), t=torch.zeros(6, dtype=torch.long))
    assert set(buf.items()) == {"x", "y", "logits", "t"} and buf.items()["logits"].shape == (6, 5)
    for _ in range(20):
        s = buf.sample(6, replace=False, with_index=True)
        assert sorted(s["index"].tolist()) == list(range(6))  # all distinct, only valid slots
        assert torch.equal(s["y"], s["index"])  # the fields of the slots returned
    assert len(buf.sample(50, replace=False)["y"]) == 6  # capped at the size
    # with replacement 50 draws of 6 slots must repeat
    assert len(set(buf.sample(50)["y"].tolist())) < 50
    buf.update(torch.tensor([2]), logits=torch.ones(1, 5))
    assert torch.equal(buf.items()["logits"][2], torch.ones(5))


def test_default_reservoir_sample_is_bitwise_unchanged():
    """The with-replacement path draws exactly as before (same RNG use, same indices)."""
    buf = ReservoirBuffer(8)
    buf.add(y=torch.arange(5))
    torch.manual_seed(3)
    got = buf.sample(7)["y"]
    torch.manual_seed(3)
    u = torch.rand(7)
    assert torch.equal(got, (u * 5).long().clamp_max_(4))


def test_class_balanced_greedy_policy():
    buf = ClassBalancedBuffer(6)
    buf.add(x=torch.zeros(6, 1), y=torch.zeros(6, dtype=torch.long))  # class 0 fills the memory
    assert buf.class_counts() == {0: 6}
    buf.add(x=torch.ones(5, 1), y=torch.ones(5, dtype=torch.long))  # k_c = 3: class 1 takes 3 slots of class 0
    assert buf.class_counts() == {0: 3, 1: 3}
    buf.add(x=torch.full((4, 1), 2.0), y=torch.full((4,), 2))  # k_c = 2 for three classes
    assert buf.class_counts() == {0: 2, 1: 2, 2: 2} and len(buf) == 6 and buf.n_seen == 15
    items = buf.items()
    assert torch.equal(items["x"][:, 0].long(), items["y"])  # every slot holds the sample of its label
    s = buf.sample(6, replace=False)
    assert sorted(s["y"].tolist()) == [0, 0, 1, 1, 2, 2]
    st = buf.state_dict()
    other = ClassBalancedBuffer(6)
    other.load_state_dict(st)
    assert other.class_counts() == buf.class_counts() and torch.equal(other.items()["y"], items["y"])


def test_make_buffer_names_the_field():
    assert isinstance(make_buffer("class-balanced", 3), ClassBalancedBuffer)
    with pytest.raises(ConfigError, match="buffer_policy.*reservoir"):
        make_buffer("reservior", 3)


# -- core: unmasked logits, step outputs, the optimiser hook -----------------------------------------
def test_raw_logits_are_unmasked_and_forward_unchanged():
    torch.manual_seed(0)
    m = Model(nn.Identity(), IncrementalLinear(3, 4))
    m.observe(torch.tensor([0, 1]))
    x = torch.randn(2, 3)
    raw = m.raw_logits(x)
    assert torch.isfinite(raw).all() and torch.equal(raw, m.head.fc(x))
    assert torch.equal(m(x)[:, :2], raw[:, :2]) and torch.isinf(m(x)[:, 2:]).all()


def test_outputs_reach_after_step_only_when_accepted_and_hook_sees_gradients():
    seen = {}

    class WithOutputs(Strategy):
        def loss(self, x, y, t=None):
            return super().loss(x, y, t), {"tag": 7}

        def before_optimizer_step(self, x, y, t=None):
            seen["grad"] = self.model.head.fc.weight.grad.clone()
            seen["w"] = self.model.head.fc.weight.detach().clone()

        def after_step(self, x, y, t=None, outputs=None):
            seen["outputs"] = outputs

    class Plain(Strategy):
        def loss(self, x, y, t=None):
            return super().loss(x, y, t), {"tag": 1}

        def after_step(self, x, y, t=None):  # no outputs= parameter: still called, without it
            seen["plain"] = True

    info = RunInfo(n_classes=3, input_shape=(2,), device=torch.device("cpu"), seed=0)
    built = {}
    for cls in (WithOutputs, Plain):
        built[cls] = s = cls(cls.Config(), Model(nn.Identity(), IncrementalLinear(2, 3)), info)
        s.train_step(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    assert seen["outputs"] == {"tag": 7} and seen["plain"]
    assert seen["grad"].abs().sum() > 0  # gradients present in the hook ...
    w_after = built[WithOutputs].model.head.fc.weight.detach()
    assert torch.allclose(w_after, seen["w"] - 0.1 * seen["grad"])  # ... and the step came after it


# -- DER / DER++ -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["der", "derpp"])
def test_der_stores_unmasked_logits_of_the_step(name):
    s = build(name, buffer_size=10)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    w0 = s.model.head.fc.weight.detach().clone()
    b0 = s.model.head.fc.bias.detach().clone()
    s.train_step(x, y)
    stored = s.buffer.items()
    expect = x @ w0.t() + b0  # the logits at insertion: the model before this step's update, all 4 classes
    assert torch.allclose(stored["logits"], expect, atol=1e-6)
    assert torch.isfinite(stored["logits"]).all()  # unseen classes 2, 3 stored too, not -inf
    assert torch.equal(stored["x"], x) and torch.equal(stored["y"], y)


def test_der_replay_loss_is_alpha_mse_to_stored_logits():
    s = build("der", buffer_size=10, alpha=0.5, replay_batch_size=3)
    s.buffer.add(x=torch.randn(3, 3), y=torch.zeros(3, dtype=torch.long), logits=torch.randn(3, 4))
    torch.manual_seed(1)
    got = s.replay_loss()
    torch.manual_seed(1)
    mem = s.buffer.sample(3)
    want = 0.5 * ((s.model.head.fc(mem["x"]) - mem["logits"]) ** 2).mean()
    assert torch.allclose(got, want)


def test_derpp_adds_beta_ce_on_an_independent_batch():
    s = build("derpp", buffer_size=10, alpha=0.0, beta=2.0, replay_batch_size=4)
    s.model.observe(torch.tensor([0, 1, 2, 3]))
    s.buffer.add(x=torch.randn(5, 3), y=torch.tensor([0, 1, 2, 3, 0]), logits=torch.randn(5, 4))
    torch.manual_seed(2)
    got = s.replay_loss()
    torch.manual_seed(2)
    s.buffer.sample(4)  # the DER batch (alpha = 0 here)
    mem = s.buffer.sample(4)
    want = 2.0 * nn.functional.cross_entropy(s.model.head.fc(mem["x"]), mem["y"])
    assert torch.allclose(got, want)


# -- GDumb ------------------------------------------------------------------------------------------------
def test_gdumb_memory_is_class_balanced_and_no_step_is_taken_on_the_stream():
    from cl.core.streams import Experience

    s = build("gdumb", buffer_size=6, fit_epochs=0)
    w0 = s.model.head.fc.weight.detach().clone()
    y = torch.tensor([0] * 9 + [1] * 3)  # imbalanced stream
    e = Experience(torch.zeros(12, 3), y, torch.zeros(1, 3), torch.zeros(1), [0, 1], 0, 0)
    s.before_experience(e)
    for _ in range(2):  # second epoch: nothing more offered
        s.train_step(torch.randn(12, 3), y)
    assert s.buffer.class_counts() == {0: 3, 1: 3} and s.buffer.n_seen == 12
    assert torch.equal(s.model.head.fc.weight, w0)


def test_gdumb_retrains_from_scratch_on_the_memory():
    a, b = build("gdumb", buffer_size=8, fit_epochs=4, fit_batch_size=4), build("gdumb", buffer_size=8, fit_epochs=4,
                                                                                 fit_batch_size=4)
    torch.manual_seed(5)
    x, y = torch.randn(8, 3) * 3, torch.tensor([0, 1, 2, 3] * 2)
    init = a.model.head.fc.weight.detach().clone()
    for s in (a, b):
        s.model.observe(y)
        s.buffer.add(x=x, y=y)
    with torch.no_grad():  # b's weights drift away (as if trained): retraining must not start from them
        b.model.head.fc.weight.add_(5.0)
        b.model.head.fc.bias.add_(-2.0)
    torch.manual_seed(9)
    a.after_experience(None)
    torch.manual_seed(9)
    b.after_experience(None)
    assert torch.equal(a.model.head.fc.weight, b.model.head.fc.weight)
    assert not torch.equal(a.model.head.fc.weight, init)
    assert b.model.head.seen.all()  # the seen-class mask survives the reset
    # and it is a fit to the memory: the hand-reproduced schedule gives the same weights
    ref = build("gdumb", buffer_size=8)
    ref.model.observe(y)
    opt = torch.optim.SGD(ref.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-6)
    torch.manual_seed(9)
    for epoch, lr in enumerate([0.005, 0.05, 0.05, 5e-4 + (0.05 - 5e-4) * 0.5]):
        for g in opt.param_groups:
            g["lr"] = lr
        perm = torch.randperm(8)
        for i in (0, 4):
            idx = perm[i:i + 4]
            opt.zero_grad()
            nn.functional.cross_entropy(ref.model(x[idx]), y[idx]).backward()
            opt.step()
    assert torch.allclose(ref.model.head.fc.weight, a.model.head.fc.weight, atol=1e-6)


# -- ER-AML ----------------------------------------------------------------------------------------------
def test_aml_loss_matches_a_hand_computed_case():
    from strategies.er_aml import aml_loss

    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # anchors, labels 0 and 1
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])  # positives (0, 1) then negatives (1, 0)
    ya, yc = torch.tensor([0, 1]), torch.tensor([0, 1, 1, 0])
    T, Tb = 0.5, 0.25
    # anchor 0: dots (1, 0, .6, .8)/T = (2, 0, 1.2, 1.6); positives: c0 (2) and c3 (1.6)
    lse0 = np.log(np.exp(2) + np.exp(0) + np.exp(1.2) + np.exp(1.6))
    l0 = -((2 - lse0) + (1.6 - lse0)) / 2
    # anchor 1: dots (0, 1, .8, .6)/T = (0, 2, 1.6, 1.2); positives: c1 (2) and c2 (1.6)
    lse1 = np.log(np.exp(0) + np.exp(2) + np.exp(1.6) + np.exp(1.2))
    l1 = -((2 - lse1) + (1.6 - lse1)) / 2
    want = (T / Tb) * (l0 + l1) / 2
    assert abs(aml_loss(a, c, ya, yc, T, Tb).item() - want) < 1e-6


def test_aml_positives_and_negatives_are_valid():
    s = build("er-aml", buffer_size=10)
    s.buffer.add(x=torch.randn(4, 3), y=torch.tensor([0, 1, 2, 2]))
    x, y = torch.randn(3, 3), torch.tensor([2, 3, 3])
    for _ in range(10):
        bx, by, pi, ni, ok = s.pos_neg(x, y)
        assert ok.tolist() == [True, True, True]  # 2: buffer positives, negative 3; 3: the other 3
        assert (by[pi] == y).all() and (pi != torch.arange(3) + 4).all()  # same label, never itself
        assert (by[ni] != y).all() and torch.isin(by[ni], y).all()  # other label, among the batch's classes
    bx, by, pi, ni, ok = s.pos_neg(torch.randn(1, 3), torch.tensor([5]))
    assert not ok.any()  # no positive (and no negative among the batch's classes): dropped


def test_aml_uses_ce_before_the_second_experience():
    from cl.core.streams import Experience

    s = build("er-aml", buffer_size=10)
    s.buffer.add(x=torch.randn(4, 3), y=torch.tensor([0, 1, 0, 1]))
    assert not s.aml_phase()
    s.before_experience(Experience(torch.zeros(1, 3), torch.zeros(1), torch.zeros(1, 3), torch.zeros(1), [2], 1, 1))
    assert s.aml_phase()


# -- X-DER -----------------------------------------------------------------------------------------------
def test_xder_update_logits_formula():
    from strategies.xder import update_logits

    old = torch.tensor([[5.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    new = torch.tensor([[9.0, 9.0, 10.0, 4.0], [9.0, 9.0, 1.0, 0.5]])
    cols = torch.tensor([False, False, True, True])
    out = update_logits(old, new, torch.tensor([0, 0]), cols, gamma=0.5)
    # row 0: max 10 > true-class logit 5: scaled by 0.5 * 5 / 10; row 1: max 1 < 2: copied as is
    assert torch.equal(out, torch.tensor([[5.0, 1.0, 2.5, 1.0], [2.0, 0.0, 1.0, 0.5]]))


def test_xder_future_past_update_changes_only_current_and_future_entries():
    from cl.core.streams import Experience

    s = build("xder", n_classes=6, n_exp=3, buffer_size=4, gamma=0.85)
    def exp(i, classes, y):
        return Experience(torch.zeros(len(y), 3), y, torch.zeros(1, 3), torch.zeros(1), classes, i, i)
    y0 = torch.tensor([0, 1, 0, 1])
    e0 = exp(0, [0, 1], y0)
    s.before_experience(e0)
    s.model.observe(y0)
    s.after_step(torch.randn(4, 3), y0)
    s.after_experience(e0)
    before, y_before = s.mem["logits"].clone(), s.mem["y"].clone()
    assert torch.allclose(before, s.logits_of(s.mem["x"]))  # first experience: the model's unmasked logits
    y1 = torch.tensor([2, 3, 2, 3])
    e1 = exp(1, [2, 3], y1)
    s.before_experience(e1)
    with torch.no_grad():
        s.model.head.fc.weight.add_(torch.randn_like(s.model.head.fc.weight))  # the model moved on
    s.model.observe(y1)
    s.after_step(torch.randn(4, 3), y1)
    s.after_experience(e1)
    old = s.mem["y"] < 2
    assert int(old.sum()) == 2 and sorted(s.mem["y"].tolist()) == [0, 1, 2, 3]  # 1 per class now
    kept = torch.cat([before[y_before == c][:1] for c in (0, 1)])  # the first sample of each old class
    got = s.mem["logits"][old]
    assert torch.equal(got[:, :2], kept[:, :2])  # the past task's entries: untouched
    cur = s.logits_of(s.mem["x"][old])
    from strategies.xder import update_logits
    cols = torch.tensor([False, False, True, True, True, True])
    assert torch.allclose(got, update_logits(kept, cur, s.mem["y"][old], cols, 0.85))  # current+future replaced
    assert not torch.allclose(got[:, 2:], kept[:, 2:])


def test_xder_past_constraint_hand_computed():
    """mammoth's past logits constraint: softmax over the seen classes, relu(max past prob (detached) + m -
    max present prob); future classes take no part."""
    from strategies.xder import past_constraint

    logits = torch.tensor([[2.0, 0.0, 1.0, 0.0, 9.0], [0.0, 0.0, 3.0, 0.0, 9.0]], requires_grad=True)
    past = torch.tensor([True, True, False, False, False])
    present = torch.tensor([False, False, True, True, False])  # class 4: a future class
    h = past_constraint(logits, past, present, 0.3)
    p = torch.softmax(torch.tensor([[2.0, 0.0, 1.0, 0.0], [0.0, 0.0, 3.0, 0.0]]), 1)
    want = (p[:, :2].max(1).values + 0.3 - p[:, 2:].max(1).values).clamp_min(0)
    assert torch.allclose(h, want) and h[0] > 0 and h[1] == 0  # sample 1's present class wins by > 0.3
    h.sum().backward()
    assert logits.grad[0, 2] < 0 and logits.grad[0, 4] == 0  # raises the present class; future untouched


def test_xder_past_constraint_is_in_the_loss_after_the_first_task():
    s = build("xder", n_classes=4, n_exp=2, buffer_size=4, eta=1.0, alpha=0.0, beta=0.0)
    s.class_task[:] = torch.tensor([0, 0, 1, 1])
    s.cur = 1
    x, y = torch.randn(6, 3), torch.tensor([2, 3, 2, 3, 2, 3])
    s.model.observe(torch.arange(4))
    with torch.no_grad():
        s.model.head.fc.weight[:2] += 5 * x.mean(0)  # the past classes win on the new samples
    on = s.loss(x, y)
    s.cfg.past_constraint = False
    off = s.loss(x, y)
    from strategies.xder import past_constraint
    raw = s.model.raw_logits(x).float()
    h = past_constraint(raw, s.past(), s.class_task == 1, s.cfg.margin)
    assert (h > 0).any() and torch.allclose(on - off, h[h > 0].mean())


# -- exact resume from a boundary ---------------------------------------------------------------------
RESUME = {"der": {}, "derpp": {}, "agem": {}, "gem": {}, "gdumb": {"fit_epochs": 3}, "er-aml": {}, "xder": {}}


@pytest.mark.parametrize("name", sorted(RESUME))
def test_resume_from_a_boundary_is_exact(tmp_path, name):
    from test_resume import _interrupt_at

    cfg = resolve(tiny({"name": name, "buffer_size": 20, **RESUME[name]},
                       scenario={"name": "gaussian", "train_per_class": 12, "test_per_class": 4,
                                 "n_classes": 6, "n_tasks": 3}, protocol={"name": "offline", "epochs": 2}))
    full = Run(cfg, progress=False, out_dir=tmp_path / "full").execute()
    undo = _interrupt_at(name, 2)
    try:
        cut = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    finally:
        undo()
    assert cut["status"] == "interrupted"
    res = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    assert full["status"] == res["status"] == "finished" and res["resumed"]
    assert res["R"] == full["R"]


# -- A-GEM / GEM -----------------------------------------------------------------------------------------
def test_agem_projection():
    from cl.models.projection import agem_project

    g_ref = torch.tensor([1.0, 2.0, -1.0])
    g = torch.tensor([-3.0, 0.5, 2.0])  # g . g_ref = -4
    p = agem_project(g, g_ref)
    assert torch.dot(p, g_ref) >= -1e-6 and abs(torch.dot(p, g_ref).item()) < 1e-6
    assert torch.allclose(p, g - (-4.0 / 6.0) * g_ref)
    ok = torch.tensor([1.0, 1.0, 0.0])  # dot 3 > 0: unchanged, bitwise
    assert torch.equal(agem_project(ok, g_ref), ok)
    for seed in range(20):
        torch.manual_seed(seed)
        a, b = torch.randn(50), torch.randn(50)
        assert torch.dot(agem_project(a, b), b) >= -1e-4


def test_gem_projection_is_the_closest_feasible_gradient():
    from scipy.optimize import minimize

    from cl.models.projection import gem_project

    # constructed: g = (1, -1), one constraint g_1 = (0, 1): the projection is (1, 0)
    p = gem_project(torch.tensor([1.0, -1.0]), torch.tensor([[0.0, 1.0]]), margin=0.0, eps=1e-12)
    assert torch.allclose(p, torch.tensor([1.0, 0.0]), atol=1e-6)
    # two constraints, both violated: the cone's apex direction is the closest feasible point to g
    g, G = torch.tensor([-1.0, -1.0, 1.0]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(gem_project(g, G, 0.0, 1e-12), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    # random cases against a brute-force primal solve (SLSQP): every constraint holds and no closer point
    rng = np.random.default_rng(0)
    for _ in range(10):
        g, G = rng.normal(size=8), rng.normal(size=(3, 8))
        if (G @ g >= 0).all():
            continue
        p = gem_project(torch.tensor(g), torch.tensor(G), margin=0.0, eps=1e-12).numpy()
        assert (G @ p >= -1e-7).all()
        ref = minimize(lambda z: 0.5 * ((z - g) ** 2).sum(), g, jac=lambda z: z - g, method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda z: G @ z, "jac": lambda z: G}],
                       options={"ftol": 1e-12, "maxiter": 500})
        assert np.linalg.norm(p - g) <= np.linalg.norm(ref.x - g) + 1e-6
        assert np.allclose(p, ref.x, atol=1e-4)
    # margin > 0 (GEM's memory strength): every dual variable >= margin, so a satisfied constraint's
    # gradient is still added with weight margin; the violated one is met (up to eps)
    G2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.allclose(gem_project(torch.tensor([1.0, -1.0]), G2, 0.0, 1e-12), torch.tensor([1.0, 0.0]), atol=1e-6)
    p = gem_project(torch.tensor([1.0, -1.0]), G2, margin=0.5, eps=1e-3)
    assert torch.allclose(p, torch.tensor([1.5, -1.0 + 1 / 1.001]), atol=1e-6)


@pytest.mark.parametrize("name", ["agem", "gem"])
def test_episodic_memory_is_per_experience_and_first_pass_only(name):
    from cl.core.streams import Experience

    s = build(name, buffer_size=8, n_exp=2)  # 4 slots per experience
    e0 = Experience(torch.zeros(6, 3), torch.tensor([0, 1] * 3), torch.zeros(1, 3), torch.zeros(1), [0, 1], 0, 0)
    s.before_experience(e0)
    for _ in range(2):  # two epochs over the 6 samples: only the first pass is offered
        s.train_step(torch.randn(6, 3), e0.train_y)
    assert s.pending.n_seen == 6 and s.mem_x is None  # current experience not yet in the constraints
    s.after_experience(e0)
    assert sorted(s.mem_y.tolist()) == [0, 0, 1, 1] and (s.mem_t == 0).all()


def test_agem_step_uses_the_projected_gradient():
    s = build("agem", buffer_size=8, n_exp=2, lr=1.0, replay_batch_size=4)
    s.model.observe(torch.tensor([0, 1, 2, 3]))
    s.mem_x, s.mem_y, s.mem_t = torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.long)
    x, y = torch.randn(4, 3), torch.tensor([2, 3, 2, 3])
    params = s.params()
    w0 = [p.detach().clone() for p in params]
    from cl.models.projection import agem_project, grads_of

    g = grads_of(nn.functional.cross_entropy(s.model(x), y), params)
    g_ref = grads_of(nn.functional.cross_entropy(s.model(s.mem_x), s.mem_y), params)  # all 4 = the batch
    assert torch.dot(g, g_ref) < 0  # a conflicting case, so the projection matters
    s.train_step(x, y)
    step = torch.cat([(a - p.detach()).reshape(-1) for a, p in zip(w0, params)])  # lr 1: step = g~
    assert torch.allclose(step, agem_project(g, g_ref), atol=1e-5)
    assert torch.dot(step, g_ref) > -1e-5


def test_gem_step_satisfies_every_past_constraint():
    s = build("gem", buffer_size=8, n_exp=3, lr=1.0, margin=0.0, eps=1e-9)
    s.model.observe(torch.tensor([0, 1, 2, 3]))
    torch.manual_seed(1)
    s.mem_x, s.mem_y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    s.mem_t = torch.tensor([0, 0, 1, 1])
    x, y = torch.randn(4, 3), torch.tensor([2, 3, 3, 2])
    from cl.models.projection import grads_of

    params = s.params()
    w0 = [p.detach().clone() for p in params]
    G = torch.stack([grads_of(nn.functional.cross_entropy(s.model(s.mem_x[s.mem_t == k]), s.mem_y[s.mem_t == k]),
                              params) for k in (0, 1)])
    g = grads_of(nn.functional.cross_entropy(s.model(x), y), params)
    assert (G @ g < 0).any()
    s.train_step(x, y)
    step = torch.cat([(a - p.detach()).reshape(-1) for a, p in zip(w0, params)])
    assert (G @ step >= -1e-5).all() and not torch.allclose(step, g)


def test_gdumb_retrain_last_fits_only_after_the_last_experience():
    from cl.core.streams import HiddenBoundary

    x, y = torch.randn(8, 3) * 3, torch.tensor([0, 1, 2, 3] * 2)
    every, last = (build("gdumb", buffer_size=8, fit_epochs=3, fit_batch_size=4, n_exp=3, retrain=r)
                   for r in ("every", "last"))
    init = last.model.head.fc.weight.detach().clone()
    for s in (every, last):
        s.model.observe(y)
        s.buffer.add(x=x, y=y)
    for i in (0, 1):  # not the last of 3: only `every` retrains
        torch.manual_seed(i)
        every.after_experience(HiddenBoundary(i))
        torch.manual_seed(i)
        last.after_experience(HiddenBoundary(i))
        assert torch.equal(last.model.head.fc.weight, init)
        assert not torch.equal(every.model.head.fc.weight, init)
    torch.manual_seed(7)
    every.after_experience(HiddenBoundary(2))
    torch.manual_seed(7)
    last.after_experience(HiddenBoundary(2))
    # the last retraining starts from the initial weights either way: the final model is the same
    assert torch.equal(last.model.head.fc.weight, every.model.head.fc.weight)
    with pytest.raises(ConfigError, match="unknown strategy.retrain 'final'. Valid choices: every, last"):
        build("gdumb", retrain="final")
