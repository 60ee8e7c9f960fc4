"""PEC (strategies/pec.py, methods.md section 9) on constructed cases, written from its mutation run (issue 19):
the paper's architectures and defaults, every student and the teacher against a per-network forward written out
here, the score (minus the mean squared prediction error), the per-class Adam / SGD against the update rules written
out on one class's student, the linear lr decay over each class's counted samples, and the state round trip."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import strategies.pec as pec_mod
from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from strategies.pec import PEC, PECConfig, PECModel, ParallelNets, PerClassOptimizer

CPU = torch.device("cpu")


def _pec(n_classes=3, shape=(5,), boundaries="visible", **kw):
    kw.setdefault("lr_decay", False)
    cfg = PECConfig(**kw)
    model = PEC.build_model(cfg, None, SimpleNamespace(n_classes=n_classes, input_shape=shape))
    s = PEC(cfg, model, RunInfo(n_classes=n_classes, input_shape=shape, device=CPU, seed=0, boundaries=boundaries))
    s.setup()
    return s


def _perturb(nets, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in nets.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)  # every network (and the norm affine) differs


def _one(nets, k, x):
    """Network k of ``nets`` on x, layer by layer (the paper's one-hidden-layer student / teacher)."""
    w1, b1, nw, nb, w2, b2 = (p[k] for p in (nets.w1, nets.b1, nets.nw, nets.nb, nets.w2, nets.b2))
    if nets.arch == "mlp":
        h = F.gelu(F.layer_norm(x.flatten(1) @ w1.t() + b1, (nets.width,), nw, nb, eps=1e-5))
    else:
        h = F.conv2d(x, w1, b1, stride=1, padding=1)  # 3x3, stride 1, padding 1
        mu, var = h.mean((2, 3), keepdim=True), h.var((2, 3), unbiased=False, keepdim=True)
        h = (h - mu) / (var + 1e-5).sqrt() * nw[:, None, None] + nb[:, None, None]  # InstanceNorm2d(affine)
        h = F.adaptive_avg_pool2d(F.relu(h), nets.pool).flatten(1)
    return h @ w2.t() + b2


def test_pec_defaults_are_the_papers():
    c = PECConfig()
    assert (c.lr, c.optimizer, c.arch, c.width, c.d_out, c.teacher_mult, c.pool) == (0.0, "adam", "auto", 0, 0, 0, 0)
    assert (c.lr_decay, c.score_all) == (True, False)
    s = _pec(lr_decay=True)  # MNIST-like vectors: the MLP, width 10, d_out 99, teacher x500, lr 0.01
    st, te = s.model.students, s.model.teacher
    assert (st.arch, st.n, st.width, st.d_out, te.n, te.width, te.d_out) == ("mlp", 3, 10, 99, 1, 5000, 99)
    assert st.w1.shape == (3, 10, 5) and st.w2.shape == (3, 99, 10) and te.w1.shape == (1, 5000, 5)
    assert s.lr == 0.01 and s.optimizer.lr == 0.01 and s.optimizer.kind == "adam"
    assert s.optimizer.betas == (0.9, 0.999) and s.optimizer.eps == 1e-8
    assert not s.model.score_all and PECModel(2, "mlp", (3,), 2, 3, 2, 0).score_all is False
    # CIFAR-10: the CNN, 60 channels, pool 5, d_out 743, lr 3e-4 (teacher x100 checked below without building it)
    c = _pec(n_classes=2, shape=(3, 6, 6), teacher_mult=1)
    st = c.model.students
    assert (st.arch, st.width, st.d_out, st.pool) == ("cnn", 60, 743, 5)
    assert st.w1.shape == (2, 60, 3, 3, 3) and st.w2.shape == (2, 743, 60 * 25)
    assert c.lr == 3e-4 and c.optimizer.lr == 3e-4
    assert ParallelNets(1, "cnn", (3, 6, 6), 2, 3).pool == 5  # the CNN's own default pool
    assert _pec(lr=0.05, optimizer="sgd").optimizer.lr == 0.05 and _pec(optimizer="sgd").optimizer.kind == "sgd"


def test_pec_teacher_is_the_student_widened_by_the_multiplier(monkeypatch):
    built = []

    def record(n, arch, shape, width, d_out, pool=5):
        built.append((n, arch, tuple(shape), width, d_out, pool))
        return ParallelNets(n, arch, shape, 2, 3, pool)  # tiny stand-in (the real teacher has 6000 channels)

    monkeypatch.setattr(pec_mod, "ParallelNets", record)
    _pec(n_classes=2, shape=(3, 6, 6))
    assert built == [(2, "cnn", (3, 6, 6), 60, 743, 5), (1, "cnn", (3, 6, 6), 6000, 743, 5)]
    built.clear()
    _pec(n_classes=2, shape=(3, 6, 6), width=4, d_out=7, teacher_mult=3, pool=2, arch="mlp")
    assert built == [(2, "mlp", (3, 6, 6), 4, 7, 2), (1, "mlp", (3, 6, 6), 12, 7, 2)]


def test_pec_auto_arch_is_the_cnn_for_multi_channel_images_only():
    def arch(shape):
        return pec_mod._arch(PECConfig(), shape)

    assert [arch(s) for s in [(3, 8, 8), (2, 8, 8), (1, 28, 28), (16,), (4, 5), (2, 3, 4, 4)]] == \
        ["cnn", "cnn", "mlp", "mlp", "mlp", "mlp"]
    assert pec_mod._arch(PECConfig(arch="mlp"), (3, 8, 8)) == "mlp"
    assert pec_mod._arch(PECConfig(arch="cnn"), (1, 8, 8)) == "cnn"


def test_pec_bad_options_name_the_field_and_the_choices():
    with pytest.raises(ConfigError) as e:
        _pec(arch="resnet")
    assert str(e.value) == "unknown pec arch 'resnet'. Valid choices: auto, cnn, mlp"
    with pytest.raises(ConfigError) as e:
        _pec(optimizer="adamw")
    assert str(e.value) == "unknown pec optimizer 'adamw'. Did you mean 'adam'? Valid choices: adam, sgd"
    with pytest.raises(ConfigError) as e:
        _pec(lr_decay=True, boundaries="hidden")
    assert str(e.value) == ("strategy 'pec' needs experience boundaries (lr_decay spreads each class's learning rate "
                            "over the class's samples in the coming experience), got scenario.boundaries='hidden'; "
                            "valid choice: scenario.boundaries=visible; or strategy.lr_decay=false")
    _pec(lr_decay=False, boundaries="hidden")  # without the decay it needs no boundary
    assert PEC.runs_task_free()


@pytest.mark.parametrize("arch,shape", [("mlp", (2, 3)), ("cnn", (2, 7, 6))])
def test_parallel_nets_are_independent_one_hidden_layer_networks(arch, shape):
    torch.manual_seed(0)
    nets = ParallelNets(3, arch, shape, 4, 5, pool=2)
    for p in nets.parameters():  # one shared initialisation
        assert all(torch.equal(p[0], p[i]) for i in range(3))
    assert nets.nw.eq(1).all() and nets.nb.eq(0).all()  # the norm's affine starts as the identity
    if arch == "cnn":
        assert nets.w1.shape == (3, 4, 2, 3, 3) and nets.w2.shape == (3, 5, 4 * 2 * 2)
    _perturb(nets)
    x = torch.randn(4, *shape)
    out = nets(x)
    assert out.shape == (3, 4, 5)
    for k in range(3):
        assert torch.allclose(out[k], _one(nets, k, x), atol=1e-5), k
    idx = torch.tensor([2, 0, 1, 2])
    sel = nets.forward_selected(x, idx)
    assert torch.allclose(sel, torch.stack([_one(nets, int(k), x[i:i + 1])[0] for i, k in enumerate(idx)]), atol=1e-5)


def test_pec_scores_are_minus_the_mean_squared_error_to_the_teacher():
    torch.manual_seed(0)
    s = _pec(n_classes=3, width=3, d_out=4, teacher_mult=2)
    m = s.model
    _perturb(m.students)
    x = torch.randn(5, 5)
    want = torch.stack([((_one(m.students, c, x) - _one(m.teacher, 0, x)) ** 2).mean(1) for c in range(3)], 1)
    assert torch.allclose(m.errors(x), want, atol=1e-5)
    m.observe(torch.tensor([0, 2]))
    out = m(x)
    assert torch.allclose(out[:, [0, 2]], -want[:, [0, 2]], atol=1e-5) and torch.isinf(out[:, 1]).all()
    everything = _pec(n_classes=3, width=3, d_out=4, teacher_mult=2, score_all=True)
    everything.model.load_state_dict(m.state_dict())
    assert torch.allclose(everything.model(x), -want, atol=1e-5)  # score_all: untrained classes are scored too


def test_pec_teacher_runs_once_per_batch_and_not_for_another():
    torch.manual_seed(0)
    m = _pec(width=2, d_out=3, teacher_mult=2).model
    calls = []
    m.teacher.register_forward_hook(lambda *a: calls.append(1))
    x1, x2 = torch.randn(2, 5), torch.randn(2, 5)
    t1 = m.target(x1)
    assert m.target(x1) is t1 and len(calls) == 1  # test-then-train: the same batch reuses the teacher's output
    t2 = m.target(x2)
    assert len(calls) == 2 and torch.allclose(t2, _one(m.teacher, 0, x2), atol=1e-5)
    assert not torch.allclose(t1, t2)


def _reference_student(s, c):
    """Student c of a PEC strategy as separate leaf tensors (for torch's own optimisers)."""
    return [p.detach()[c].clone().requires_grad_(True) for p in s.model.students.parameters()]


def _ref_loss(s, params, x):
    fake = SimpleNamespace(arch=s.model.students.arch, width=s.model.students.width, pool=s.model.students.pool,
                           **{n: p[None] for n, p in zip(("w1", "b1", "nw", "nb", "w2", "b2"), params)})
    with torch.no_grad():
        target = _one(s.model.teacher, 0, x)
    return ((_one(fake, 0, x) - target) ** 2).mean()


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_pec_per_class_optimizer_is_adam_or_sgd_on_one_class(kind):
    torch.manual_seed(0)
    s = _pec(optimizer=kind, lr=0.02, width=3, d_out=4, teacher_mult=2)
    ref = _reference_student(s, 1)
    m, v = [torch.zeros_like(r) for r in ref], [torch.zeros_like(r) for r in ref]
    untouched = [p.detach()[[0, 2]].clone() for p in s.model.students.parameters()]
    for step in range(3):
        x = torch.randn(2, 5) * (step + 1)
        x[:, 0] *= 1e-7  # gradients of about 1e-8 on w1[:, :, 0]: Adam's eps (added to sqrt(v)) matters there
        s.train_step(x, torch.tensor([1, 1]))
        for r in ref:
            r.grad = None
        _ref_loss(s, ref, x).backward()
        with torch.no_grad():  # Adam (Kingma & Ba; torch's defaults betas (0.9, 0.999), eps 1e-8) or plain SGD
            for r, mi, vi in zip(ref, m, v):
                if kind == "sgd":
                    r.sub_(0.02 * r.grad)
                    continue
                mi.mul_(0.9).add_(0.1 * r.grad)
                vi.mul_(0.999).add_(0.001 * r.grad ** 2)
                t = step + 1
                r.sub_(0.02 * (mi / (1 - 0.9 ** t)) / ((vi / (1 - 0.999 ** t)).sqrt() + 1e-8))
        for p, r in zip(s.model.students.parameters(), ref):
            assert torch.allclose(p[1], r, atol=1e-6, rtol=1e-5), step
    assert all(torch.equal(p.detach()[[0, 2]], u) for p, u in zip(s.model.students.parameters(), untouched))
    assert s.optimizer.state["step"].tolist() == [0.0, 3.0, 0.0]


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_pec_indexed_and_masked_optimizer_steps_are_bitwise_equal(kind):
    """The CPU path (only the updated classes' rows) and the CUDA-graph path (torch.where over every row) give
    the same parameters and Adam state, with per-class learning rates and a class that is not updated."""
    torch.manual_seed(0)
    params = [torch.randn(4, 3, 2), torch.randn(4, 5)]
    opts, copies = [], []
    for _ in range(2):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        copies.append(ps)
        opts.append(PerClassOptimizer(ps, 4, 0.01, kind))
    scale = torch.tensor([1.0, 0.5, 0.25, 0.0])
    for upd in ([True, False, True, False], [False, False, True, True], [True, True, True, True]):
        grads = [torch.randn_like(p) for p in params]
        for ps, opt, indexed in zip(copies, opts, (True, False)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step(torch.tensor(upd), scale, indexed=indexed)
        for a, b in zip(*copies):
            assert torch.equal(a, b)
        assert torch.equal(opts[0].state["step"], opts[1].state["step"])
        for key in ("m", "v"):
            assert all(torch.equal(a, b) for a, b in zip(opts[0].state[key], opts[1].state[key]))
    assert not torch.equal(copies[0][0][1], params[0][1])  # class 1 moved at the last step
    none = PerClassOptimizer([torch.nn.Parameter(torch.ones(2, 2))], 2, 0.1, kind)
    none.params[0].grad = torch.ones(2, 2)
    none.step(torch.tensor([False, False]), torch.ones(2), indexed=True)  # no class to update: nothing moves
    assert torch.equal(none.params[0], torch.ones(2, 2))


def test_pec_adam_state_round_trip_continues_the_same_steps():
    torch.manual_seed(0)
    a = _pec(lr=0.02, width=3, d_out=4, teacher_mult=2, lr_decay=True)
    a.before_experience(SimpleNamespace(train_y=torch.tensor([0, 0, 0, 0, 1, 1])))
    x = torch.randn(2, 5)
    a.train_step(x, torch.tensor([0, 1]))
    b = _pec(lr=0.02, width=3, d_out=4, teacher_mult=2, lr_decay=True)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.total.tolist() == [4.0, 2.0, 0.0] and b.consumed.tolist() == [1.0, 1.0, 0.0]
    assert torch.equal(b.optimizer.state["step"], a.optimizer.state["step"])
    for s in (a, b):
        s.train_step(x, torch.tensor([0, 0]))
    for p, q in zip(a.model.students.parameters(), b.model.students.parameters()):
        assert torch.equal(p, q)
    st = a.optimizer.state_dict()
    assert set(st) == {"step", "m", "v"} and len(st["m"]) == len(st["v"]) == 6


def _sgd_moves(s, c, xs):
    """The size of each SGD step on class c's student (w2), relative to lr * gradient (1.0 = full lr)."""
    out = []
    for x in xs:
        s.model.zero_grad()
        before = s.model.students.w2.detach()[c].clone()
        ref = _reference_student(s, c)
        _ref_loss(s, ref, x).backward()
        s.train_step(x, torch.full((len(x),), c))
        step = before - s.model.students.w2.detach()[c]
        out.append(round(float((step * ref[4].grad).sum() / (s.lr * ref[4].grad.pow(2).sum())), 4))
    return out


def test_pec_lr_decays_linearly_to_zero_over_each_classes_counted_samples():
    torch.manual_seed(0)
    s = _pec(optimizer="sgd", lr=0.05, width=3, d_out=4, teacher_mult=2, lr_decay=True)
    s.before_experience(SimpleNamespace(train_y=torch.tensor([0, 0, 0, 0, 1])))
    s.before_experience(SimpleNamespace(train_y=torch.tensor([1])))  # counts add up over experiences
    assert s.total.tolist() == [4.0, 2.0, 0.0]
    xs = [torch.randn(1, 5) for _ in range(4)]
    assert _sgd_moves(s, 0, xs) == [1.0, 0.75, 0.5, 0.25]
    assert _sgd_moves(s, 1, xs[:1] * 1 + [torch.randn(2, 5)]) == [1.0, 0.5]  # one sample, then two in one batch
    assert _sgd_moves(s, 1, xs[:2]) == [0.0, 0.0]  # past its horizon: never negative
    assert _sgd_moves(s, 2, xs[:3]) == [1.0, 1.0, 1.0]  # never counted: constant lr
    assert s.consumed.tolist() == [4.0, 5.0, 3.0]
    one = _pec(optimizer="sgd", lr=0.05, width=3, d_out=4, teacher_mult=2, lr_decay=True)
    one.before_experience(SimpleNamespace(train_y=torch.tensor([0])))
    assert _sgd_moves(one, 0, xs[:3]) == [1.0, 0.0, 0.0]
    flat = _pec(optimizer="sgd", lr=0.05, width=3, d_out=4, teacher_mult=2, lr_decay=False)
    flat.before_experience(SimpleNamespace(train_y=torch.tensor([0, 0])))
    assert flat.total.tolist() == [0.0, 0.0, 0.0] and _sgd_moves(flat, 0, xs[:3]) == [1.0, 1.0, 1.0]


def test_pec_lr_decay_spans_every_offline_epoch():
    """Offline with ``protocol.epochs`` = E each sample is seen E times: the decay reaches 0 after the last pass,
    not after the first (which would leave epochs 2..E without a single step)."""
    torch.manual_seed(0)
    cfg = PECConfig(optimizer="sgd", lr=0.05, width=3, d_out=4, teacher_mult=2, lr_decay=True)
    model = PEC.build_model(cfg, None, SimpleNamespace(n_classes=3, input_shape=(5,)))
    s = PEC(cfg, model, RunInfo(n_classes=3, input_shape=(5,), device=CPU, seed=0, epochs=2))
    s.setup()
    s.before_experience(SimpleNamespace(train_y=torch.tensor([0, 0])))
    assert s.total.tolist() == [4.0, 0.0, 0.0]
    xs = [torch.randn(1, 5) for _ in range(2)]
    assert _sgd_moves(s, 0, xs + xs) == [1.0, 0.75, 0.5, 0.25]  # two passes over the two samples


def test_engine_tells_the_strategy_the_offline_epochs_and_one_pass_online(tmp_path):
    from cl.core.config import resolve
    from cl.train.engine import Run

    def info(protocol):
        cfg = resolve({"strategy": {"name": "finetune"}, "backbone": {"name": "mlp"},
                       "scenario": {"name": "gaussian", "n_tasks": 2, "train_per_class": 4, "test_per_class": 2},
                       "protocol": protocol, "seed": 0})
        run = Run(cfg, progress=False, out_dir=tmp_path / protocol["name"])
        run.setup()
        return run.strategy.info

    assert info({"name": "offline", "epochs": 3}).epochs == 3
    assert info({"name": "online", "epochs": 3}).epochs == 1
