"""Mechanism tests for the parameter-isolation, hypernetwork and compatible-representation baselines
(PNN, PackNet, HAT, RMN, HNET, HNET-RNN, CL2R) and the compatibility metrics (cl/core/compatibility.py).
Each test fails if the step that defines the method breaks."""
import copy

import pytest
import torch
from conftest import tiny

from cl.core.config import resolve
from cl.core.registry import ConfigError, strategies
from cl.core.strategy import RunInfo
from cl.train.engine import Run

TASK_SCEN = {"name": "gaussian", "train_per_class": 20, "test_per_class": 10, "task_labels": True}
DIGITS_TASK = {"name": "split-digits", "task_labels": True}

pytestmark = pytest.mark.usefixtures("restore_registry")


def make(name, scenario=TASK_SCEN, backbone="mlp", **strategy_kw):
    """A strategy built the way the engine builds it, with its scenario (no training yet)."""
    from cl.core.config import section_config
    from cl.core.registry import scenarios
    from cl.train.engine import build_model, seed_everything

    cfg = resolve(tiny({"name": name, **strategy_kw}, scenario=scenario, backbone=backbone))
    seed_everything(cfg["seed"])
    scfg = section_config(cfg, "strategy")
    sc = scenarios.get(cfg["scenario"]["name"]).obj(section_config(cfg, "scenario"), cfg["seed"])
    cls = strategies.get(name).obj
    info = RunInfo(n_classes=sc.n_classes, input_shape=sc.input_shape, device=torch.device("cpu"), seed=0,
                   setting=sc.setting, n_experiences=len(sc))
    model = build_model(cls, scfg, cfg, sc, torch.device("cpu"))
    s = cls(scfg, model, info)
    s.setup()
    return s, sc


def prep(sc, x):
    return sc.preprocess_fn(torch.device("cpu"))(x)


def train_on(s, sc, i, steps=15, bs=16):
    exp = sc[i]
    s.before_experience(exp)
    s.model.train()
    g = torch.Generator().manual_seed(i)
    for _ in range(steps):
        idx = torch.randint(len(exp.train_y), (bs,), generator=g)
        s.train_step(prep(sc, exp.train_x[idx]), exp.train_y[idx], exp.task_id)
    s.after_experience(exp)


@torch.no_grad()
def outputs(s, sc, i):
    s.model.eval()
    exp = sc[i]
    out = s.predict(prep(sc, exp.test_x), exp.task_id)
    s.model.train()
    return out[:, exp.classes].clone()  # what the engine evaluates in setting=task: the task's classes


def assert_earlier_tasks_unchanged(name, backbone="mlp", scenario=TASK_SCEN, **kw):
    s, sc = make(name, scenario=scenario, backbone=backbone, **kw)
    train_on(s, sc, 0)
    before0 = outputs(s, sc, 0)
    train_on(s, sc, 1)
    before1 = outputs(s, sc, 1)
    assert torch.equal(outputs(s, sc, 0), before0)  # bitwise
    train_on(s, sc, 2)
    assert torch.equal(outputs(s, sc, 0), before0)
    assert torch.equal(outputs(s, sc, 1), before1)
    return s, sc


def test_task_id_strategies_refuse_class_incremental_runs():
    for name in ("pnn", "packnet", "hat", "rmn", "hnet", "hnet-rnn"):
        with pytest.raises(ConfigError, match="scenario.setting=task"):
            make(name, scenario={"name": "gaussian", "train_per_class": 20, "test_per_class": 10})


# -- PNN ---------------------------------------------------------------------------------------------
def test_pnn_freezes_earlier_columns_and_outputs():
    s, sc = assert_earlier_tasks_unchanged("pnn")
    assert len(s.model.columns) == len(sc)


def test_pnn_earlier_columns_get_no_gradient_and_laterals_feed_the_new_column():
    s, sc = make("pnn", backbone="cnn", scenario=DIGITS_TASK)
    train_on(s, sc, 0, steps=3)
    col0 = copy.deepcopy(s.model.columns[0].state_dict())
    train_on(s, sc, 1, steps=3)
    for k, v in s.model.columns[0].state_dict().items():  # parameters and BatchNorm statistics
        assert torch.equal(v, col0[k]), k
    exp = sc[1]
    x = prep(sc, exp.test_x[:8])
    s.model.eval()
    out = s.model(x, 1)
    # the laterals from column 0 into column 1 carry signal: zeroing them changes task 1's output
    lat = s.model.laterals[1]
    saved = [copy.deepcopy(m.state_dict()) for m in lat]
    for m in lat:
        for p in m.parameters():
            p.data.zero_()
    assert not torch.allclose(s.model(x, 1), out)
    for m, st in zip(lat, saved):
        m.load_state_dict(st)
    # ... and they receive gradient while column 0 does not
    s.model.train()
    s.optimizer.zero_grad(set_to_none=True)
    s.loss(x, exp.test_y[:8], 1).backward()
    assert all(p.grad is None for p in s.model.columns[0].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lat.parameters())
    assert all(p.grad is not None for p in s.model.columns[1].parameters())


# -- PackNet -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["packnet", "hat", "rmn"])
def test_isolation_leaves_earlier_tasks_bitwise_unchanged_mlp_and_cnn(name):
    assert_earlier_tasks_unchanged(name)
    assert_earlier_tasks_unchanged(name, backbone="cnn", scenario=DIGITS_TASK)


def test_packnet_prunes_by_magnitude_and_assigns_owners():
    s, sc = make("packnet", prune_ratio=0.5, retrain_epochs=0)
    train_on(s, sc, 0)
    params = dict(s.model.named_parameters())
    for n in s.layers:
        o, w = s.owner[n], params[n]
        assert (o == 1).sum() == w.numel() - round(0.5 * w.numel())  # half of task 0's weights kept
        assert torch.all(w[o == 0] == 0)  # released weights are zero
        assert w[o == 1].abs().min() >= w[o == 0].abs().max()  # the largest magnitudes are kept
    train_on(s, sc, 1)
    for n in s.layers:  # task 1 received half of the free weights; task 0's weights stay task 0's
        o = s.owner[n]
        assert (o == 2).sum() == (o.numel() - round(0.5 * o.numel())) - round(0.5 * (round(0.5 * o.numel())))
    # task 0's prediction uses only task 0's weights: changing a task-1 weight does not change it
    before, before1 = outputs(s, sc, 0), outputs(s, sc, 1)
    n = s.layers[0]
    with torch.no_grad():
        params[n][s.owner[n] == 2] += 1.0
    assert torch.equal(outputs(s, sc, 0), before)
    assert not torch.equal(outputs(s, sc, 1), before1)  # ... while task 1 uses it


# -- exact resume from a boundary, every strategy ------------------------------------------------------
RESUME = {
    "pnn": {},
    "packnet": {},
    "hat": {},
    "rmn": {},
    "hnet": {"chunk_size": 500},
    "hnet-rnn": {"chunk_size": 500},
    "cl2r": {"scenario": {"name": "gaussian", "train_per_class": 20, "test_per_class": 10}},
}


@pytest.mark.parametrize("name", sorted(RESUME))
def test_resume_from_a_boundary_is_exact(tmp_path, name):
    from test_resume import _interrupt_at

    scen = RESUME[name].get("scenario", TASK_SCEN)
    kw = {k: v for k, v in RESUME[name].items() if k != "scenario"}
    cfg = resolve(tiny({"name": name, **kw}, scenario=scen, protocol={"name": "offline", "epochs": 2}))
    full = Run(cfg, progress=False, out_dir=tmp_path / "full").execute()
    assert full["status"] == "finished", full.get("error")
    undo = _interrupt_at(name, 2)
    try:
        part = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    finally:
        undo()
    assert part["status"] == "interrupted" and len(part["R"]) == 2
    res = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    assert res["status"] == "finished" and res["resumed"]
    assert res["R"] == full["R"]
    if name == "cl2r":
        C = full["metrics"]["compatibility"]
        assert len(C) == len(full["R"]) and all(v is not None for v in C[-1])
    for k, v in full["metrics"].items():
        if not any(w in k for w in ("time", "per_s", "memory")):
            assert res["metrics"].get(k) == v, k


# -- HAT ---------------------------------------------------------------------------------------------
def test_hat_gradient_compensation_and_regulariser_hand_computed():
    s, sc = make("hat")
    train_on(s, sc, 0)
    cum = [c.clone() for c in s.cum]
    assert all(((c == 0) | (c == 1)).all() for c in cum) and all(c.sum() > 0 for c in cum)
    # regulariser: sum a_t (1 - a^{<t}) / sum (1 - a^{<t}), computed by hand for constant gates 0.5
    gates = [torch.full_like(c, 0.5) for c in cum]
    free = sum((1 - c).sum() for c in cum)
    assert torch.isclose(s.regulariser(gates), 0.5 * free / free)
    # one step of task 1: a weight between two units of task 0 gets zero gradient, a weight into a free
    # unit keeps its gradient
    exp = sc[1]
    s.before_experience(exp)
    w1 = s.model.mains[1].weight
    before = w1.detach().clone()
    idx = torch.randperm(len(exp.train_y), generator=torch.Generator().manual_seed(0))[:16]
    s.train_step(prep(sc, exp.train_x[idx]), exp.train_y[idx], exp.task_id)
    both = (cum[1].view(-1, 1) * cum[0].view(1, -1)).bool()
    assert torch.equal(w1[both], before[both])
    assert not torch.equal(w1[~both], before[~both])
    # the s annealing: first batch of an epoch at 1/smax
    assert s.step_in_epoch == 1


# -- compatibility metrics and CL2R ---------------------------------------------------------------------
def _angles(deg):
    r = torch.tensor(deg, dtype=torch.float64) * torch.pi / 180
    return torch.stack([r.cos(), r.sin()], 1)


def test_retrieval_and_compatibility_matrix_hand_computed():
    from cl.core import compatibility as K

    y = torch.tensor([0, 0, 1, 1])
    f0, f1 = _angles([5, 60, 95, 20]), _angles([0, 10, 90, 100])
    # query model 1 vs gallery model 0, own entry left out: nearest angles 20(1), 5(0), 60(0), 95(1)
    assert K.retrieval_accuracy(f1, f0, y) == 0.5
    assert K.retrieval_accuracy(f1, f1, y) == 1.0
    assert K.retrieval_accuracy(f0, f0, y) == 0.0  # 20(1), 95(1), 60(0), 5(0): every neighbour wrong
    C = K.compatibility_matrix([f0, f1], y)
    assert C == [[0.0, None], [0.5, 1.0]]
    assert K.empirical_compatibility(C) == [[None, None], [True, None]]
    assert K.average_compatibility(C) == 1.0 and K.average_multimodel_accuracy(C) == 0.5


def test_ac_am_bc_fc_hand_computed():
    from cl.core import compatibility as K

    C = [[0.8, None, None], [0.7, 0.9, None], [0.85, 0.95, 0.6]]
    assert K.empirical_compatibility(C) == [[None] * 3, [False, None, None], [True, True, None]]
    assert K.average_compatibility(C) == pytest.approx(2 / 3)  # C[1][0] < C[0][0] fails
    assert K.average_multimodel_accuracy(C) == pytest.approx(4.8 / 6)
    assert K.backward_compatibility(C) == pytest.approx(((0.85 - 0.8) + (0.95 - 0.9)) / 2)
    assert K.forward_compatibility(C) == pytest.approx(((0.7 - 0.9) + (0.95 - 0.6)) / 2)
    assert K.average_compatibility([[0.3]]) == 1.0
    m = K.compatibility_metrics([[0.8], [0.7, 0.9], [0.85, 0.95, 0.6]])
    assert m["compatibility"] == C and m["ac"] == pytest.approx(2 / 3)


def test_compatibility_heatmap_is_drawn(tmp_path):
    from cl.sweeps.compat_plot import mean_matrix, plot_compatibility

    C = [[0.8, None], [0.7, 0.9]]
    plot_compatibility(C, tmp_path / "c.png", title="t")
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert mean_matrix([C, [[0.6, None], [0.5, 0.7]]]) == [[pytest.approx(0.7), None], [pytest.approx(0.6), pytest.approx(0.8)]]


def test_dsimplex_classifier_is_fixed_and_equiangular():
    from strategies.cl2r import dsimplex

    W = dsimplex(10)
    assert W.shape == (10, 9)
    cos = W @ W.t()
    assert torch.allclose(cos.diagonal(), torch.ones(10), atol=1e-6)
    off = cos[~torch.eye(10, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 9), atol=1e-6)  # -1/d, d = K - 1
    s, sc = make("cl2r", scenario={"name": "gaussian", "train_per_class": 20, "test_per_class": 10})
    assert "simplex" not in dict(s.model.named_parameters()) and not s.model.simplex.requires_grad
    before = s.model.simplex.clone()
    train_on(s, sc, 0)
    train_on(s, sc, 1)
    assert torch.equal(s.model.simplex, before)


def test_cl2r_feature_distillation_on_memory_only_and_compatibility_logged():
    s, sc = make("cl2r", scenario={"name": "gaussian", "train_per_class": 20, "test_per_class": 10})
    train_on(s, sc, 0)
    assert len(s.mem_y) == 2 * 20 and len(s.C) == 1 and len(s.C[0]) == 1
    exp = sc[1]
    s.before_experience(exp)
    x, y = exp.train_x[:8], exp.train_y[:8]
    # right after the boundary the model equals the frozen copy: the distillation term is zero, so the
    # loss is the cross-entropy of [memory; new]
    torch.manual_seed(0)
    loss = s.loss(x, y)
    torch.manual_seed(0)
    idx = torch.randperm(len(s.mem_y))[:8]
    ce = torch.nn.functional.cross_entropy(s.model(torch.cat([s.mem_x[idx], x])), torch.cat([s.mem_y[idx], y]))
    assert torch.isclose(loss, ce, atol=1e-6)
    # after a change of the model the distillation on memory samples is positive
    with torch.no_grad():
        s.model.fc1.weight.add_(0.3 * torch.randn_like(s.model.fc1.weight))
    torch.manual_seed(0)
    loss2 = s.loss(x, y)
    torch.manual_seed(0)
    idx = torch.randperm(len(s.mem_y))[:8]
    ce2 = torch.nn.functional.cross_entropy(s.model(torch.cat([s.mem_x[idx], x])), torch.cat([s.mem_y[idx], y]))
    lam = 5.0 * (2 / 2) ** 0.5
    new = torch.nn.functional.normalize(s.model.features(s.mem_x[idx]), dim=1)
    old = torch.nn.functional.normalize(s._old_features(s.mem_x[idx]), dim=1)
    assert torch.isclose(loss2, ce2 + lam * (1 - (new * old).sum(1)).mean(), atol=1e-5)
    train_on(s, sc, 1)
    m = s.extra_metrics()
    assert len(m["compatibility"]) == 2 and m["compatibility"][0][1] is None
    assert m["compatibility"][1][0] == pytest.approx(
        __import__("cl.core.compatibility", fromlist=["x"]).retrieval_accuracy(s.gallery[1], s.gallery[0], s.eval_y))



# -- HNET and HNET-RNN ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hnet", "hnet-rnn"])
def test_hnet_output_regulariser_zero_unchanged_positive_after_change(name):
    s, sc = make(name, chunk_size=500)
    train_on(s, sc, 0, steps=5)
    s.before_experience(sc[1])
    assert len(s.targets) == 1
    assert s.regulariser().item() == 0.0  # the hypernetwork has not changed since the boundary
    # by hand: one changed hypernetwork parameter -> sum of squared output differences
    p = next(q for n, q in s.model.hnet.named_parameters() if not n.startswith("task_emb"))
    with torch.no_grad():
        p.add_(0.01)
        expected = ((s.model.generate(0) - s.targets[0]) ** 2).sum()
    assert s.regulariser().item() > 0 and torch.isclose(s.regulariser(), expected)
    # the earlier embedding is not in the optimiser; the current one and Theta are
    opt = {id(q) for g in s.optimizer.param_groups for q in g["params"]}
    assert id(s.model.hnet.task_emb[0]) not in opt and id(s.model.hnet.task_emb[1]) in opt and id(p) in opt
    # the target's own parameters are never trained
    assert not any(q.requires_grad for q in s.model.target.parameters())


def test_hnet_rnn_generates_layer_by_layer_and_chunked_hnet_does_not_depend_across_chunks():
    s, _ = make("hnet-rnn", chunk_size=300)
    h = s.model.hnet
    sizes = [q.numel() for q in s.model.target.parameters()]
    e = h.task_emb[0].detach()
    with torch.no_grad():
        layers = h.layers(e)
        assert [len(w) for w in layers] == sizes
        assert torch.equal(torch.cat(layers), h(e))
        # perturbing the input of the first step (first layer's first chunk) changes every later layer:
        # the state carries from layer to layer
        c = h.chunk_emb.clone()
        c[0] += 1.0
        changed = h.layers(e, c)
        assert all(not torch.allclose(a, b) for a, b in zip(changed[1:], layers[1:]))
        # while the chunks of the plain chunked hypernetwork are independent
    s2, _ = make("hnet", chunk_size=300)
    h2 = s2.model.hnet
    with torch.no_grad():
        out = h2(h2.task_emb[0])
        h2.chunk_emb[0] += 1.0
        out2 = h2(h2.task_emb[0])
    assert not torch.equal(out[:300], out2[:300]) and torch.equal(out[300:], out2[300:])


@pytest.mark.parametrize("name", ["hnet", "hnet-rnn"])
def test_hnet_remembers_earlier_tasks_better_than_without_regulariser(name):
    def forgetting(beta):
        s, sc = make(name, chunk_size=500, beta=beta, lr=0.01)
        train_on(s, sc, 0, steps=40)
        a = outputs(s, sc, 0)
        train_on(s, sc, 1, steps=40)
        return (outputs(s, sc, 0) - a).abs().mean().item()
    assert forgetting(1.0) < 0.5 * forgetting(0.0)


# -- RMN ---------------------------------------------------------------------------------------------
def test_rmn_binary_maps_straight_through_and_frozen_relevant_weights():
    s, sc = make("rmn")
    train_on(s, sc, 0)
    m0 = s.model.maps(0, s.cfg.threshold, ste=False)
    assert all(((m == 0) | (m == 1)).all() for m in m0)
    # the maps were trained (straight-through gradient reached the scores) and sparsified somewhere
    assert any(not torch.all(sc_ == s.cfg.map_init) for sc_ in s.model.scores[0])
    assert all(torch.equal(u, m.bool()) for u, m in zip(s.used.values(), m0))
    params = dict(s.model.net.named_parameters())
    before = {n: params[n].detach().clone() for n in s.model.layers}
    s0 = [p.detach().clone() for p in s.model.scores[0]]
    train_on(s, sc, 1)
    for (n, b), m in zip(before.items(), m0):
        assert torch.equal(params[n][m.bool()], b[m.bool()])  # relevant to task 0: frozen
    assert any(not torch.equal(params[n][~m.bool()], b[~m.bool()]) for (n, b), m in zip(before.items(), m0))
    assert all(torch.equal(a, b) for a, b in zip(s.model.scores[0], s0))  # task 0's map is fixed


def test_hnet_keeps_batchnorm_statistics_per_task():
    s, sc = make("hnet", scenario=DIGITS_TASK, backbone="cnn", chunk_size=2000)
    key = lambda t: s.model._bn_key(t, s.model.bn_names[0])
    b0, b1 = getattr(s.model, key(0)).clone(), getattr(s.model, key(1)).clone()
    train_on(s, sc, 0, steps=2)
    assert not torch.equal(getattr(s.model, key(0)), b0)  # task 0's statistics moved
    assert torch.equal(getattr(s.model, key(1)), b1)  # task 1's did not
