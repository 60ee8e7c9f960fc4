"""Mechanism tests for the parameter-isolation, hypernetwork and compatible-representation baselines
(PNN, PackNet, HAT, RMN, HNET, HNET-RNN, CL2R) and the compatibility metrics (cl/core/compatibility.py).
Each test fails if the step that defines the method breaks."""
import copy

import pytest
import torch

from cl.core.config import resolve
from cl.core.registry import ConfigError, strategies
from cl.core.strategy import RunInfo
from cl.train.engine import Run
from conftest import tiny

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
    for name in ("pnn", "packnet", "hat"):
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
def test_packnet_leaves_earlier_tasks_bitwise_unchanged_mlp_and_cnn():
    s, _ = assert_earlier_tasks_unchanged("packnet", retrain_epochs=1)
    assert_earlier_tasks_unchanged("packnet", backbone="cnn", scenario=DIGITS_TASK)


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
    for k, v in full["metrics"].items():
        if not any(w in k for w in ("time", "per_s", "memory")):
            assert res["metrics"].get(k) == v, k


# -- HAT ---------------------------------------------------------------------------------------------
def test_hat_leaves_earlier_tasks_bitwise_unchanged_mlp_and_cnn():
    s, _ = assert_earlier_tasks_unchanged("hat")
    assert_earlier_tasks_unchanged("hat", backbone="cnn", scenario=DIGITS_TASK)


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
