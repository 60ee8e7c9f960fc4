"""Mechanism tests for the regularisation and distillation baselines (issue 14, base1): every test checks the
defining step against a hand computation on a constructed case, and fails if that step broke."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny
from test_resume import _interrupt_at
from torch import nn

from cl.core.config import resolve
from cl.core.registry import strategies
from cl.core.strategy import RunInfo
from cl.models.distill import feature_distill, kd_loss, sigmoid_distill
from cl.models.frozen import FrozenCopy
from cl.models.heads import IncrementalLinear
from cl.models.herding import class_means, herding, nme_logits
from cl.models.model import Model
from cl.train.engine import Run

pytestmark = pytest.mark.usefixtures("restore_registry")


def make(name, n_in=2, n_classes=3, seen=None, **cfg):
    cls = strategies.get(name)
    scfg = cls.config(**cfg)
    model = Model(nn.Identity(), IncrementalLinear(n_in, n_classes))
    model.backbone.out_dim = n_in
    with torch.no_grad():
        model.head.fc.weight.copy_(torch.arange(n_in * n_classes, dtype=torch.float).view(n_classes, n_in) / 10 - 0.2)
        model.head.fc.bias.copy_(torch.linspace(-0.1, 0.1, n_classes))
    model.head.observe(torch.tensor(seen if seen is not None else list(range(n_classes))))
    info = RunInfo(n_classes=n_classes, input_shape=(n_in,), device=torch.device("cpu"), seed=0)
    s = cls.obj(scfg, model, info)
    s.setup()
    return s


def exp_of(x, y, classes=None, index=0):
    return SimpleNamespace(train_x=x, train_y=y, classes=classes if classes is not None else sorted(set(y.tolist())),
                           index=index, task_id=index)


X = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.4], [0.8, 0.8]])
Y = torch.tensor([0, 2, 1, 2])


def hand_fisher(W, b, x, y):
    """Per-sample grad of -log softmax(Wx+b)_y: dW = (p - e_y) x^T, db = p - e_y; F = mean of squares."""
    fw, fb = torch.zeros_like(W), torch.zeros_like(b)
    for xi, yi in zip(x, y):
        p = torch.softmax(W @ xi + b, 0)
        e = torch.zeros_like(p)
        e[yi] = 1
        fw += torch.outer(p - e, xi) ** 2
        fb += (p - e) ** 2
    return fw / len(y), fb / len(y)


# -- core pieces ------------------------------------------------------------------------------------------
def test_kd_loss_matches_hand_computation_at_T2_and_is_zero_for_equal_logits():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    ps = [v / 2 for v in (1.0, 2.0, 0.5)]
    pt = [v / 2 for v in (0.0, 3.0, 1.0)]
    import math
    zs, zt = sum(math.exp(v) for v in ps), sum(math.exp(v) for v in pt)
    qs, qt = [math.exp(v) / zs for v in ps], [math.exp(v) / zt for v in pt]
    kl = sum(a * math.log(a / b) for a, b in zip(qt, qs))
    assert kd_loss(s, t, 2.0).item() == pytest.approx(kl, rel=1e-5)
    assert kd_loss(s, t, 2.0, scale_t2=True).item() == pytest.approx(4 * kl, rel=1e-5)
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_sigmoid_and_feature_distill():
    s, t = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.0]])
    q = torch.sigmoid(t)
    ps = torch.sigmoid(s)
    bce = -(q * ps.log() + (1 - q) * (1 - ps).log()).mean()
    assert sigmoid_distill(s, t).item() == pytest.approx(bce.item(), rel=1e-5)
    a, b = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert feature_distill(a, b, "cosine").item() == pytest.approx((1 + 0) / 2, abs=1e-6)
    assert feature_distill(a, b, "l2").item() == pytest.approx((2 + 2) / 2, abs=1e-6)


def test_frozen_copy_is_frozen_eval_mode_and_round_trips():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    fc = FrozenCopy()
    assert not fc and fc.state_dict() is None
    fc.take(m)
    with torch.no_grad():
        m[0].weight.add_(1.0)  # the copy does not follow the live model
    x = torch.randn(4, 2)
    out = fc(x)
    assert not out.requires_grad and not fc.module.training
    assert not torch.equal(out, m.eval()(x))
    fc2 = FrozenCopy()
    fc2.load_state_dict(fc.state_dict(), like=m)
    assert torch.equal(fc2(x), out)


def test_herding_picks_running_mean_closest_to_class_mean():
    # 1-D points (mean 2.1): herding picks 2.0, 0.5, 0.0, then 10 (running mean (2.5+10)/4 = 3.125 is closer
    # to 2.1 than (2.5-2)/4); ranking by distance to the mean would pick -2 fourth.
    f = torch.tensor([[0.0, 0], [2.0, 0], [-2.0, 0], [0.5, 0], [10.0, 0]])
    assert herding(f, 5, normalize=False).tolist() == [1, 3, 0, 4, 2]
    assert herding(f, 2, normalize=False).tolist() == [1, 3]  # a prefix of the longer order
    # normalised: only directions count
    g = torch.tensor([[1.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    assert herding(g, 3).tolist() == herding(g * torch.tensor([[7.0], [0.1], [2.0]]), 3).tolist() == [2, 0, 1]


def test_nme_assigns_to_nearest_normalised_exemplar_mean():
    feats = torch.tensor([[10.0, 0.0], [0.1, 0.1]])
    means = class_means(feats, torch.tensor([0, 1]), 3)
    assert torch.allclose(means[0], torch.tensor([1.0, 0.0])) and torch.isnan(means[2]).all()
    q = torch.tensor([[5.0, 0.5]])  # nearer to [0.1, 0.1] than to [10, 0] unnormalised; nearer class 0 normalised
    logits = nme_logits(q, means)
    assert logits.argmax(1).item() == 0 and logits[0, 2] == float("-inf")
    qn = F.normalize(q, dim=1)[0]
    assert logits[0, 1].item() == pytest.approx(-(qn - means[1]).pow(2).sum().item(), rel=1e-5)


# -- EWC ---------------------------------------------------------------------------------------------------
def test_ewc_penalty_is_fisher_weighted_distance():
    s = make("ewc", ewc_lambda=3.0)
    W0, b0 = s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    s.after_experience(exp_of(X, Y))
    fw, fb = hand_fisher(W0, b0, X, Y)
    assert torch.allclose(s.terms[0]["fisher"]["head.fc.weight"], fw, atol=1e-6)
    assert torch.allclose(s.terms[0]["fisher"]["head.fc.bias"], fb, atol=1e-6)
    with torch.no_grad():
        s.model.head.fc.weight.add_(torch.tensor([[0.5, -1.0], [0.2, 0.0], [1.0, 1.0]]))
        s.model.head.fc.bias.add_(torch.tensor([0.3, -0.3, 0.0]))
    W, b = s.model.head.fc.weight.detach(), s.model.head.fc.bias.detach()
    want = 1.5 * ((fw * (W - W0) ** 2).sum() + (fb * (b - b0) ** 2).sum())
    assert s.penalty().item() == pytest.approx(want.item(), rel=1e-5)
    assert s.loss(X, Y).item() == pytest.approx(F.cross_entropy(s.model(X), Y).item() + want.item(), rel=1e-5)


def test_ewc_warns_when_the_penalty_is_too_stiff_for_sgd():
    s = make("ewc", ewc_lambda=1e4, lr=0.1)
    with pytest.warns(UserWarning, match="diverges"):
        s.after_experience(exp_of(X, Y))
    s = make("ewc", ewc_lambda=1.0, lr=0.1)  # lr * lambda * max F < 2: silent
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.after_experience(exp_of(X, Y))


@pytest.mark.parametrize("online", [True, False])
def test_online_ewc_running_fisher_follows_gamma(online):
    s = make("ewc", online=online, gamma=0.25)
    W1, b1 = s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    s.after_experience(exp_of(X, Y))
    with torch.no_grad():
        s.model.head.fc.weight.mul_(-2.0)
    W2, b2 = s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    X2, Y2 = X.flip(0) * 2, torch.tensor([1, 1, 0, 2])
    s.after_experience(exp_of(X2, Y2, index=1))
    f1, f2 = hand_fisher(W1, b1, X, Y)[0], hand_fisher(W2, b2, X2, Y2)[0]
    if online:
        assert len(s.terms) == 1
        assert torch.allclose(s.terms[0]["fisher"]["head.fc.weight"], 0.25 * f1 + f2, atol=1e-6)
        assert torch.equal(s.terms[0]["anchor"]["head.fc.weight"], W2)
    else:
        assert len(s.terms) == 2
        assert torch.allclose(s.terms[0]["fisher"]["head.fc.weight"], f1, atol=1e-6)
        assert torch.allclose(s.terms[1]["fisher"]["head.fc.weight"], f2, atol=1e-6)
        assert torch.equal(s.terms[0]["anchor"]["head.fc.weight"], W1)


# -- SI ----------------------------------------------------------------------------------------------------
class Quad(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0]))

    def observe(self, y):
        pass


A, B1, B2 = torch.tensor([2.0, 0.5]), torch.tensor([0.0, 1.0]), torch.tensor([3.0, -1.0])


def test_si_importance_is_hand_computed_path_integral_on_a_quadratic():
    from strategies.si import SI, SIConfig

    target = {"b": B1}

    class QuadSI(SI):
        def task_loss(self, x, y, t=None):
            return 0.5 * (A * (self.model.theta - target["b"]) ** 2).sum()

    lr, c, xi = 0.1, 0.7, 0.05
    s = QuadSI(SIConfig(lr=lr, si_c=c, xi=xi), Quad(), RunInfo(1, (1,), torch.device("cpu"), 0))
    s.setup()
    th = torch.tensor([1.0, -2.0])
    th0, omega = th.clone(), torch.zeros(2)
    for _ in range(5):  # plain SGD on L = 1/2 a (theta - b)^2: g = a (theta - b), dtheta = -lr g
        g = A * (th - B1)
        omega += -g * (-lr * g)
        th = th - lr * g
        s.train_step(None, None)
    assert torch.allclose(s.model.theta.detach(), th, atol=1e-6)
    assert torch.allclose(s.omega["theta"], omega, atol=1e-6)
    s.after_experience(None)
    Om = omega / ((th - th0) ** 2 + xi)
    assert torch.allclose(s.big_omega["theta"], Om, atol=1e-6)
    # second task: the path integral uses the task gradient only, the step follows task + penalty gradients
    target["b"] = B2
    anchor, omega2 = th.clone(), torch.zeros(2)
    for _ in range(4):
        g_task = A * (th - B2)
        g_all = g_task + 2 * c * Om * (th - anchor)
        omega2 += -g_task * (-lr * g_all)
        th = th - lr * g_all
        s.train_step(None, None)
    assert torch.allclose(s.model.theta.detach(), th, atol=1e-5)
    assert torch.allclose(s.omega["theta"], omega2, atol=1e-5)


# -- MAS ---------------------------------------------------------------------------------------------------
def test_mas_importance_is_mean_absolute_gradient_of_output_norm():
    s = make("mas", seen=[0, 1, 2], mas_lambda=1.0)
    W0, b0 = s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    Xm = torch.tensor([[1.0, 0.5], [-1.0, -0.5], [0.2, -2.0]])  # first two give opposite gradients
    s.after_experience(exp_of(Xm, torch.tensor([0, 1, 2])))
    gw, gb = torch.zeros_like(W0), torch.zeros_like(b0)
    for xi in Xm:  # d ||W x + b||^2 / dW = 2 f x^T, / db = 2 f
        f = W0 @ xi + b0
        gw += (2 * torch.outer(f, xi)).abs()
        gb += (2 * f).abs()
    assert torch.allclose(s.importance["head.fc.weight"], gw / 3, atol=1e-5)
    assert torch.allclose(s.importance["head.fc.bias"], gb / 3, atol=1e-5)
    with torch.no_grad():
        s.model.head.fc.bias.add_(1.0)
    want = F.cross_entropy(s.model(Xm), torch.tensor([0, 1, 2])) + (gb / 3).sum()
    assert s.loss(Xm, torch.tensor([0, 1, 2])).item() == pytest.approx(want.item(), rel=1e-5)


def test_mas_ignores_unseen_classes():
    s = make("mas", seen=[0, 1])
    s.after_experience(exp_of(X, Y.clamp(max=1)))
    assert torch.isfinite(s.importance["head.fc.weight"]).all()
    assert (s.importance["head.fc.weight"][2] == 0).all()


# -- LwF and LwF.MC -------------------------------------------------------------------------------------------
def test_lwf_distillation_is_zero_for_the_frozen_copy_and_hand_kd_after_a_change():
    s = make("lwf", seen=[0, 1], alpha=2.0)
    s.before_experience(exp_of(X, Y.clamp(max=1)))
    s.after_experience(exp_of(X, Y.clamp(max=1)))
    assert s.old_classes == [0, 1]
    s.model.head.observe(torch.tensor([2]))
    y = torch.tensor([2, 2, 0, 1])
    assert s.loss(X, y).item() == pytest.approx(F.cross_entropy(s.model(X), y).item(), abs=1e-6)
    old = s.model(X).detach()[:, :2]
    with torch.no_grad():
        s.model.head.fc.weight[0].add_(0.7)
    new = s.model(X)
    p_t, logp_s = torch.softmax(old / 2, 1), torch.log_softmax(new[:, :2] / 2, 1)
    kd = (p_t * (p_t.log() - logp_s)).sum(1).mean()
    want = F.cross_entropy(new, y) + 2.0 * kd
    assert s.loss(X, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_lwf_mc_targets_are_one_hot_new_and_teacher_sigmoid_old():
    s = make("lwf-mc", seen=[0, 1])
    s.before_experience(exp_of(X, Y.clamp(max=1)))
    s.after_experience(exp_of(X, Y.clamp(max=1)))
    teacher = s.model(X).detach()
    s.model.head.observe(torch.tensor([2]))
    s.before_experience(exp_of(X, torch.tensor([2, 2, 2, 2]), index=1))
    with torch.no_grad():
        s.model.head.fc.weight.add_(0.3)
    y = torch.tensor([2, 2, 2, 2])
    z = s.model(X)
    target = torch.stack([torch.sigmoid(teacher[:, 0]), torch.sigmoid(teacher[:, 1]), torch.ones(4)], 1)
    want = -(target * torch.sigmoid(z).log() + (1 - target) * (1 - torch.sigmoid(z)).log()).mean()
    assert s.loss(X, y).item() == pytest.approx(want.item(), rel=1e-5)


# -- iCaRL -------------------------------------------------------------------------------------------------
def test_icarl_memory_is_herded_reduced_and_classifies_by_nme():
    s = make("icarl", seen=[0, 1], buffer_size=4)
    x = torch.tensor([[0.0, 1], [2.0, 1], [-2.0, 1], [0.5, 1], [10.0, 1], [1.0, -3], [1.0, -1], [1.0, -2]])
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    e = exp_of(x, y)
    s.before_experience(e)
    s.after_experience(e)
    # m = 4 // 2 = 2 per class, in herding order of the normalised features
    for c in (0, 1):
        idx = (y == c).nonzero().flatten()
        want = x[idx[herding(x[idx], 2)]]
        assert torch.equal(s.memory.x[s.memory.y == c], want)
    s.model.head.observe(torch.tensor([2]))
    x2, y2 = torch.tensor([[-1.0, -1.0], [-2.0, -1.5]]), torch.tensor([2, 2])
    e2 = exp_of(x2, y2, index=1)
    s.before_experience(e2)
    _, ty = s.train_data(e2)
    assert len(ty) == 2 + 4  # new data + exemplars
    s.after_experience(e2)
    assert sorted(s.memory.y.tolist()) == [0, 1, 2]  # 4 // 3 = 1 per class: the first of each herding order
    mx = s.memory.x[s.memory.y == 0]
    assert torch.equal(mx, want[:0] if False else x[(y == 0).nonzero().flatten()[herding(x[y == 0], 1)]])
    logits = s.predict(torch.tensor([[-1.5, -1.2]]))
    means = class_means(s.memory.x, s.memory.y, 3)
    assert torch.allclose(logits, nme_logits(torch.tensor([[-1.5, -1.2]]), means))
    assert logits.argmax().item() == 2


# -- exact resume from a boundary ------------------------------------------------------------------------------
REG = ["ewc", "si", "mas", "lwf", "lwf-mc", "icarl", "lucir", "bic", "rwalk"]


@pytest.mark.parametrize("name,extra", [(n, {}) for n in REG] + [("ewc", {"online": True})])
def test_resume_from_a_boundary_is_exact(tmp_path, name, extra):
    strat = {"name": name, **extra}
    if name in ("icarl", "lucir", "bic"):
        strat["buffer_size"] = 20
    cfg = resolve(tiny(strat, scenario={"name": "gaussian", "train_per_class": 12, "test_per_class": 4,
                                        "n_classes": 6, "n_tasks": 3}, protocol={"name": "offline", "epochs": 2}))
    full = Run(cfg, progress=False, out_dir=tmp_path / "full").execute()
    undo = _interrupt_at(name, 2)
    try:
        cut = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    finally:
        undo()
    assert cut["status"] == "interrupted"
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    torch.save(ck["strategy"], tmp_path / "s.pt")
    torch.load(tmp_path / "s.pt", weights_only=True)  # the strategy's own state is plain tensors and values
    res = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    assert full["status"] == res["status"] == "finished" and res["resumed"]
    assert res["R"] == full["R"]


# -- LUCIR -------------------------------------------------------------------------------------------------
def make_lucir(**cfg):
    from strategies.lucir import LUCIR, LUCIRConfig

    torch.manual_seed(0)
    bb = nn.Linear(2, 3)
    bb.out_dim = 3
    sc = SimpleNamespace(n_classes=4, preprocess_fn=lambda dev: (lambda x: x.float()))
    c = LUCIRConfig(momentum=0.0, weight_decay=0.0, lr=0.1, sigma_init=2.0, **cfg)
    model = LUCIR.build_model(c, bb, sc)
    s = LUCIR(c, model, RunInfo(4, (2,), torch.device("cpu"), 0))
    s.setup()
    x0 = torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, 0.4], [-0.2, 1.1]])
    e0 = exp_of(x0, torch.tensor([0, 1, 0, 1]))
    s.model.observe(e0.train_y)
    s.before_experience(e0)
    s.after_experience(e0)
    x1 = torch.tensor([[-1.0, -0.3], [0.5, -1.0], [-0.8, -0.1], [0.2, -0.9]])
    e1 = exp_of(x1, torch.tensor([2, 3, 2, 3]), index=1)
    w_old = s.model.head.weight.detach()[:2].clone()
    s.before_experience(e1)
    s.model.observe(e1.train_y)
    return s, x1, e1, w_old


def test_lucir_imprints_new_weights_and_less_forget_is_zero_for_unchanged_model():
    s, x1, e1, w_old = make_lucir()
    assert s.lam == pytest.approx(5.0 * (2 / 2) ** 0.5)
    f = F.normalize(s.model.features(x1), dim=1).detach()
    want = F.normalize(f[e1.train_y == 2].mean(0), dim=0) * w_old.norm(dim=1).mean()
    assert torch.allclose(s.model.head.weight[2], want, atol=1e-6)
    y = e1.train_y  # new classes only: no margin term; unchanged model: no less-forget term
    assert s.loss(x1, y).item() == pytest.approx(F.cross_entropy(s.model(x1), y).item(), abs=1e-6)
    with torch.no_grad():
        s.model.backbone.weight.add_(torch.tensor([[0.5, 0.0], [0.0, -0.5], [0.3, 0.3]]))
    h, h_old = s.model.features(x1), s.teacher.features(x1)
    lf = (1 - F.cosine_similarity(h, h_old, dim=1)).mean()
    assert lf.item() > 1e-3
    assert s.loss(x1, y).item() == pytest.approx((F.cross_entropy(s.model(x1), y) + s.lam * lf).item(), rel=1e-5)


def test_lucir_margin_ranking_matches_hand_computation_and_old_weights_stay_fixed():
    s, x1, _, w_old = make_lucir(margin=0.9, k_mr=1)
    x = torch.cat([x1, torch.tensor([[1.0, 0.3], [0.0, 1.0]])])
    y = torch.tensor([2, 3, 2, 3, 0, 1])
    cos = F.normalize(s.model.features(x), dim=1) @ F.normalize(s.model.head.weight, dim=1).t()
    mr = []
    for i in (4, 5):  # the old-class samples: gt cosine vs the hardest new class (k = 1)
        mr.append(max(0.0, 0.9 - cos[i, y[i]].item() + cos[i, 2:].max().item()))
    want = F.cross_entropy(s.model(x), y).item() + sum(mr) / 2
    assert sum(mr) > 0
    assert s.loss(x, y).item() == pytest.approx(want, rel=1e-5)
    w_new = s.model.head.weight.detach()[2:].clone()
    s.train_step(x, y)
    assert torch.equal(s.model.head.weight.detach()[:2], w_old)  # old classes' weights restored after the step
    assert not torch.equal(s.model.head.weight.detach()[2:], w_new)  # the new ones train


# -- BiC ---------------------------------------------------------------------------------------------------
def test_bic_bias_layer_changes_only_new_class_logits_and_fits_on_validation():
    from strategies.bic import bias_correct

    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out = bias_correct(z, torch.tensor([2, 3]), 0.5, -1.0)
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 0.5, 1.0]]))
    s = make("bic", n_classes=4, seen=[0, 1, 2, 3], buffer_size=8, bic_epochs=200, bic_lr=0.05)
    # validation logits where the new classes (2, 3) are over-scored by +2: the fit must push them down
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 3] * 8)
    logits = torch.randn(32, 4, generator=g) + 3 * F.one_hot(y, 4)
    logits[:, 2:] += 2.0
    a, b = s.fit_bias(logits, y, torch.tensor([2, 3]))
    before = F.cross_entropy(logits, y)
    after = F.cross_entropy(bias_correct(logits, torch.tensor([2, 3]), a, b), y)
    assert b < 0 and after < before - 0.1


def test_bic_validation_is_held_out_memory_and_new_data():
    s = make("bic", n_in=2, n_classes=4, seen=[0, 1], buffer_size=8, val_every=2, bic_epochs=1)
    x0 = torch.randn(12, 2, generator=torch.Generator().manual_seed(1))
    e0 = exp_of(x0, torch.tensor([0, 1] * 6))
    s.before_experience(e0)
    s.after_experience(e0)  # 8 // 2 = 4 exemplars per class; ranks 1 and 3 are validation
    assert len(s.memory) == 8 and s.val_y is None
    s.model.head.observe(torch.tensor([2, 3]))
    x1 = torch.randn(10, 2, generator=torch.Generator().manual_seed(2)) + 5
    e1 = exp_of(x1, torch.tensor([2, 3] * 5), index=1)
    s.before_experience(e1)
    mem_val = s.memory.x[s.memory.rank % 2 == 1]
    assert sorted(s.val_y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # 2 per old class, as many per new class
    assert torch.equal(s.val_x[:4], mem_val)
    tx, ty = s.train_data(e1)
    assert len(ty) == 10 - 4 + 4
    for v in s.val_x:  # no validation sample is trained on
        assert not (tx == v).all(1).any()
    seen, want_y, want_x = {}, s.val_y.clone(), s.val_x.clone()
    s.fit_bias = lambda z, y, idx: seen.update(z=z, y=y, idx=idx) or (0.5, -1.0)
    s.after_experience(e1)
    assert torch.equal(seen["y"], want_y) and seen["idx"].tolist() == [2, 3]  # stage 2 sees the validation set only
    assert torch.allclose(seen["z"], s.model(want_x))
    z = s.model(x1[:2])
    assert torch.equal(s.predict(x1[:2]), torch.cat([z[:, :2], 0.5 * z[:, 2:] - 1.0], 1))


# -- RWalk -------------------------------------------------------------------------------------------------
def test_rwalk_score_is_per_step_fisher_normalised_path_integral():
    from strategies.rwalk import RWalk, RWalkConfig

    target = {"b": B1}

    class QuadRW(RWalk):
        def task_loss(self, x, y, t=None):
            return 0.5 * (A * (self.model.theta - target["b"]) ** 2).sum()

    lr, lam, al, eps = 0.1, 0.5, 0.9, 0.01
    s = QuadRW(RWalkConfig(lr=lr, rwalk_lambda=lam, fisher_alpha=al, eps=eps), Quad(), RunInfo(1, (1,), torch.device("cpu"), 0))
    s.setup()
    th, Fr, path = torch.tensor([1.0, -2.0]), torch.zeros(2), torch.zeros(2)
    for _ in range(4):
        g = A * (th - B1)
        Fr = al * g ** 2 + (1 - al) * Fr
        d = -lr * g
        path += -g * d / (0.5 * Fr * d ** 2 + eps)
        th = th + d
        s.train_step(None, None)
    assert torch.allclose(s.fisher["theta"], Fr, atol=1e-6)
    assert torch.allclose(s.path["theta"], path, rtol=1e-5)
    s.after_experience(None)
    sc, Fs, anchor = path.clamp_min(0), Fr.clone(), th.clone()
    assert torch.allclose(s.score["theta"], sc, rtol=1e-5) and torch.allclose(s.fisher_star["theta"], Fs)
    target["b"] = B2
    path2 = torch.zeros(2)
    for _ in range(3):  # the score uses the task gradient only; the step follows task + penalty
        g = A * (th - B2)
        g_all = g + 2 * lam * (Fs + sc) * (th - anchor)
        Fr = al * g ** 2 + (1 - al) * Fr
        d = -lr * g_all
        path2 += -g * d / (0.5 * Fr * d ** 2 + eps)
        th = th + d
        s.train_step(None, None)
    assert torch.allclose(s.model.theta.detach(), th, atol=1e-5)
    assert torch.allclose(s.path["theta"], path2, rtol=1e-4)
    s.after_experience(None)
    assert torch.allclose(s.score["theta"], (sc + path2.clamp_min(0)) / 2, rtol=1e-4)
