"""The Run lifecycle phases (cl/train/engine.py), written from its mutation run (issue 19): which rows of R
are evaluated, the logged rows, seeding, the timings and throughput (on a fake clock, so they are exact),
when checkpoints are written and removed, resume, a finished run returned (or recomputed with ``force``),
the thread count, task-free hooks, and how each kind of failure ends a run.

The strategies here have known predictions and costs: ``test-mut-const0`` always answers class 0 (with the
classes in order, 0.5 on task 0 and 0 elsewhere), spends ``step_cost`` fake seconds per training step and
``predict_cost`` per prediction, and can fail on purpose in a chosen experience."""
import random
import time
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import cl.train.engine as engine
from cl.core.config import resolve
from cl.core.streams import HiddenBoundary
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.train import checkpoint
from cl.train.engine import Run, seed_everything
from cl.train.loggers import ResultFile
from conftest import tiny

# 5 tasks of 2 classes in order; 8 training and 4 test samples per task
ORDERED = {"name": "gaussian", "class_order": list(range(10)), "train_per_class": 4, "test_per_class": 2}
CLOCK = [1.0e4]  # the fake perf_counter (seconds); far from 0, so that t - t0 and t + t0 differ a lot
CALLS: list = []  # what the strategies saw: ("setup", threads), ("before", exp), ("predict", n), ...


@dataclass
class ConstConfig(StrategyConfig):
    step_cost: float = 0.0  # fake seconds per train_step
    predict_cost: float = 0.0  # fake seconds per predict call
    fail: str = ""  # runtime | interrupt | nan | predict: fail in experience fail_at
    fail_at: int = -1


@register("test-mut-const0", ConstConfig)
class Const0(Strategy):
    task_free = True  # records the boundary hooks, learns nothing from them

    def setup(self):
        self.exp = None
        CALLS.append(("setup", torch.get_num_threads()))

    def before_experience(self, exp):
        self.exp = exp.index
        CALLS.append(("before", exp))
        if self.cfg.fail == "interrupt" and exp.index == self.cfg.fail_at:
            raise KeyboardInterrupt

    def after_experience(self, exp):
        CALLS.append(("after", exp))

    def train_step(self, x, y, t=None):
        CLOCK[0] += self.cfg.step_cost
        if self.exp == self.cfg.fail_at:
            if self.cfg.fail == "runtime":
                raise RuntimeError("boom on purpose")
            if self.cfg.fail == "nan":
                return torch.full((), float("nan"))
        return torch.zeros(())

    def predict(self, x, t=None):
        CLOCK[0] += self.cfg.predict_cost
        CALLS.append(("predict", len(x)))
        if self.cfg.fail == "predict":
            raise RuntimeError("cannot predict")
        logits = torch.zeros(len(x), self.info.n_classes)
        logits[:, 0] = 1.0
        return logits


def raw(strategy=None, protocol=None, **kw):
    return tiny({"name": "test-mut-const0", **(strategy or {})}, scenario=kw.pop("scenario", ORDERED),
                backbone="identity", protocol=protocol or {"name": "offline"}, **kw)


def execute(cfg, path, **kw):
    CALLS.clear()
    return Run(resolve(cfg), progress=False, out_dir=path, **kw).execute()


def lower(i, n=5):
    """Row i of R for Const0 without future evaluation: 0.5 on task 0, 0 on tasks 1..i, None after."""
    return [0.5] + [0.0] * i + [None] * (n - 1 - i)


# -- seeding ----------------------------------------------------------------------------------------

def test_seed_everything_seeds_python_numpy_and_torch():
    seed = 2**32 + 2**31 + 5  # numpy takes seeds below 2**32: it gets seed mod 2**32 = 2**31 + 5
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        seed_everything(seed)
        got = random.random(), np.random.rand(), torch.rand(3)
        assert got[0] == random.Random(seed).random()
        assert got[1] == np.random.RandomState(2**31 + 5).rand()
        assert torch.equal(got[2], torch.rand(3, generator=torch.Generator().manual_seed(seed)))
        seed_everything(7)
        assert np.random.rand() == np.random.RandomState(7).rand()
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])


# -- rows of R, the per-experience records and the logged rows -----------------------------------------

class Recording(ResultFile):
    rows: list = []

    def log(self, data, step=None):
        Recording.rows.append(dict(data))


@pytest.mark.parametrize("protocol", ["offline", "online"])
def test_rows_of_R_are_the_experiences_trained_so_far_and_none_after(tmp_path, monkeypatch, protocol):
    monkeypatch.setattr(engine, "ResultFile", Recording)
    Recording.rows = []
    res = execute(raw(protocol={"name": protocol}), tmp_path)
    assert res["status"] == "finished"
    assert res["R"] == [lower(i) for i in range(5)]
    assert res["random_init"] is None  # no FWT reference asked for
    assert res["test_sizes"] == [4] * 5
    per = res["per_experience"]
    assert [p["experience"] for p in per] == list(range(5))
    assert [p["avg_acc"] for p in per] == pytest.approx([0.5 / (i + 1) for i in range(5)])
    assert [p["forgetting"] for p in per][1:] == [0.0] * 4  # task 0 stays at 0.5
    rows = [r for r in Recording.rows if "avg_acc" in r]  # the experience rows (online also logs curve points)
    assert len(rows) == 5
    for i, r in enumerate(rows):
        assert {k: v for k, v in r.items() if k.startswith("acc/")} == {f"acc/task_{j}": lower(i)[j] for j in range(i + 1)}
        assert r["avg_acc"] == pytest.approx(0.5 / (i + 1))
        assert r["avg_inc_acc"] == pytest.approx(np.mean([0.5 / (k + 1) for k in range(i + 1)]))


@pytest.mark.parametrize("flag", ["eval_future", "fwt"])
def test_eval_future_or_fwt_evaluates_every_experience_in_every_row(tmp_path, flag):
    res = execute(raw(protocol={"name": "offline", flag: True}), tmp_path)
    assert res["status"] == "finished"
    assert res["R"] == [[0.5, 0.0, 0.0, 0.0, 0.0]] * 5
    # the FWT reference is the untrained model's accuracy, computed once before training
    assert res["random_init"] == ([0.5, 0.0, 0.0, 0.0, 0.0] if flag == "fwt" else None)


# -- timings and throughput, on a fake clock ------------------------------------------------------------

@pytest.mark.parametrize("step_cost", [0.375, 0.0])  # 80 samples / 7.5 s is not a whole number
def test_phase_times_and_throughput_are_exact_on_a_fake_clock(tmp_path, monkeypatch, step_cost):
    """Time passes only in the strategy: step_cost per training step, 0.125 per prediction.  Offline,
    2 epochs of batches of 4 over 8 samples: 4 steps per experience; evaluation: one prediction per
    evaluated experience (1 + 2 + ... + 5 = 15)."""
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: CLOCK[0], strftime=time.strftime,
                                                              gmtime=time.gmtime))
    cfg = resolve(raw({"step_cost": step_cost, "predict_cost": 0.125},
                      protocol={"name": "offline", "epochs": 2, "batch_size": 4}))
    CALLS.clear()
    run = Run(cfg, progress=False, out_dir=tmp_path)
    res = run.execute()
    assert res["status"] == "finished"
    assert sum(1 for c in CALLS if c[0] == "predict") == 15
    m = res["metrics"]
    train, ev = 20 * step_cost, 15 * 0.125
    assert m["train_time"] == train and m["eval_time"] == ev
    assert m["setup_time"] == 0.0 and m["run_time"] == train + ev and m["wall_time"] == train + ev
    assert [p["train_time"] for p in res["per_experience"]] == [4 * step_cost * (i + 1) for i in range(5)]
    assert run.state.samples == 5 * 8 * 2  # samples processed, epochs included
    assert m["train_samples_per_s"] == (80 / train if step_cost else 0.0)


def test_online_phase_times_are_exact_on_a_fake_clock(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: CLOCK[0], strftime=time.strftime,
                                                              gmtime=time.gmtime))
    cfg = resolve(raw({"step_cost": 0.75}, protocol={"name": "online", "batch_size": 4}))
    CALLS.clear()
    run = Run(cfg, progress=False, out_dir=tmp_path)
    res = run.execute()
    m = res["metrics"]
    assert m["train_time"] == 5 * 2 * 0.75 and m["eval_time"] == 0.0  # 2 steps per experience; predictions are free
    assert run.state.samples == 40 and m["train_samples_per_s"] == 40 / 7.5
    assert m["online_acc"] == pytest.approx(0.1)  # class 0 is half of task 0's stream: 4 of 40
    online = res["online"]
    assert online["trained_batches"] == 10 and online["cursor"]
    for k, v in online.items():  # the online scalars are metrics too; the curves and counters stay in "online"
        assert (k not in m) if isinstance(v, (list, dict)) else (m[k] == v), k


# -- checkpoints: when they are written, read and removed -------------------------------------------------

@pytest.mark.parametrize("enabled", [True, False])
def test_a_checkpoint_at_every_boundary_but_the_last_and_none_left_at_the_end(tmp_path, monkeypatch, enabled):
    saved = []
    orig = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, rid, cfg, strategy, state:
                        (saved.append(state["next_exp"]), orig(path, rid, cfg, strategy, state)))
    res = execute(raw(protocol={"name": "offline", "checkpoint": enabled}), tmp_path)
    assert res["status"] == "finished" and not res["resumed"]
    assert saved == ([1, 2, 3, 4] if enabled else [])  # the next experience to train, after 0..3
    assert not (tmp_path / "checkpoint.pt").exists()  # the result file replaces it


@pytest.mark.parametrize("cut", [1, 4])
def test_a_run_cut_at_a_boundary_resumes_from_the_next_experience(tmp_path, cut):
    cfg = raw({"fail": "interrupt", "fail_at": cut})
    part = execute(cfg, tmp_path)
    assert part["status"] == "interrupted" and part["error"] == "interrupted by the user"
    assert "traceback" not in part and part["R"] == [lower(i) for i in range(cut)]
    assert (tmp_path / "interrupted.json").exists() and (tmp_path / "checkpoint.pt").exists()
    # the same run again: cut at the same place, resumed, and it trains nothing before `cut`
    again = execute(cfg, tmp_path)
    assert again["resumed"] and again["status"] == "interrupted" and again["R"] == part["R"]
    assert [c[1].index for c in CALLS if c[0] == "before"] == [cut]


def test_a_forced_rerun_that_does_not_finish_keeps_its_checkpoint(tmp_path):
    """The finished run's result.json is still there while a forced recomputation is cut or fails: the
    checkpoint of that recomputation is kept, and the next forced run resumes from it."""
    for fail, status in (("interrupt", "interrupted"), ("runtime", "failed")):
        d = tmp_path / fail
        cfg = raw({"fail": fail, "fail_at": 2})
        execute(raw(), d / "warm")  # a finished run (of another config)
        first = execute(cfg, d)
        assert first["status"] == status and (d / "checkpoint.pt").exists()
        (d / "result.json").write_text((d / "warm" / "result.json").read_text())  # a finished result in the folder
        res = execute(cfg, d, force=True)
        assert res["status"] == status and res["resumed"]
        assert (d / "checkpoint.pt").exists()


# -- a finished run is returned, force recomputes it -----------------------------------------------------

def test_a_finished_run_is_returned_not_redone_and_force_recomputes_it(tmp_path):
    first = execute(raw(), tmp_path)
    assert first["status"] == "finished" and "skipped" not in first
    again = execute(raw(), tmp_path)
    assert again["skipped"] is True and again["R"] == first["R"] and again["run_id"] == first["run_id"]
    assert not CALLS  # no strategy was built
    forced = execute(raw(), tmp_path, force=True)
    assert "skipped" not in forced and forced["R"] == first["R"] and CALLS[0][0] == "setup"


# -- threads ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [2, 1])
def test_the_run_uses_its_thread_count_and_restores_the_callers(tmp_path, threads):
    torch.set_num_threads(3)
    res = execute(raw(threads=threads), tmp_path)
    assert CALLS[0] == ("setup", threads) and res["threads"] == threads
    assert torch.get_num_threads() == 3
    assert res["device"] == "cpu"


# -- task-free streams ---------------------------------------------------------------------------------

def _gaussian_with_boundaries() -> str:
    """The gaussian scenario with a ``boundaries`` option (visible or hidden)."""
    import dataclasses

    from cl.core.registry import scenarios
    from cl.data import task_free

    name = "test-mut-gaussian-boundaries"
    if name not in scenarios.names():
        entry = scenarios.get("gaussian")
        Cfg = dataclasses.make_dataclass("BoundariesGaussianConfig", [("boundaries", str, "visible")],
                                         bases=(entry.config,))

        def build(cfg, seed):
            fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(entry.config)}
            sc = entry.obj(entry.config(**fields), seed)
            return sc if cfg.boundaries == "visible" else task_free.hide_boundaries(sc)

        scenarios.register(name, Cfg)(build)
    return name


@pytest.mark.parametrize("boundaries", ["visible", "hidden"])
def test_boundary_hooks_see_the_experience_only_when_boundaries_are_visible(tmp_path, boundaries):
    scen = {**ORDERED, "name": _gaussian_with_boundaries(), "boundaries": boundaries}
    res = execute(raw(protocol={"name": "online"}, scenario=scen), tmp_path)
    assert res["status"] == "finished"
    seen = [c[1] for c in CALLS if c[0] in ("before", "after")]
    assert [e.index for e in seen] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    if boundaries == "visible":
        assert all(len(e.train_y) == 8 for e in seen)
    else:
        assert all(isinstance(e, HiddenBoundary) and e.boundaries == "hidden" for e in seen)


def test_a_cpu_run_does_not_enter_cuda_autocast(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = execute(raw(protocol={"name": "offline", "amp": True}), tmp_path)
    assert res["status"] == "finished"
    assert not [x for x in w if "CUDA" in str(x.message) or "autocast" in str(x.message)]


# -- failures -------------------------------------------------------------------------------------------

def test_an_exception_fails_the_run_with_its_type_message_and_traceback(tmp_path):
    res = execute(raw({"fail": "runtime", "fail_at": 1}), tmp_path)
    assert res["status"] == "failed" and res["error"] == "RuntimeError: boom on purpose"
    assert "boom on purpose" in res["traceback"] and "train_step" in res["traceback"]
    assert res["R"] == [lower(0)] and res["metrics"]["avg_acc"] == 0.5
    assert (tmp_path / "failed.json").exists() and not (tmp_path / "result.json").exists()


def test_a_non_finite_loss_fails_the_run_with_its_message_and_no_traceback(tmp_path):
    res = execute(raw({"fail": "nan", "fail_at": 0}), tmp_path)
    assert res["status"] == "failed" and res["error"].startswith("non-finite loss in experience 0")
    assert "traceback" not in res
    assert res["R"] == [] and "avg_acc" not in res["metrics"]  # nothing evaluated: no accuracy metrics
    assert res["metrics"]["run_time"] >= 0 and "wall_time" in res["metrics"]


@pytest.mark.parametrize("protocol", ["offline", "online"])
def test_a_failure_before_the_loop_exists_still_writes_the_failure(tmp_path, protocol):
    # with fwt the untrained model is evaluated before the protocol's loop is built
    res = execute(raw({"fail": "predict"}, protocol={"name": protocol, "fwt": True}), tmp_path)
    assert res["status"] == "failed" and res["error"] == "RuntimeError: cannot predict"
    assert res["R"] == [] and res["online"] is None and res["random_init"] is None
    assert (tmp_path / "failed.json").exists()


@pytest.mark.parametrize("kind", ["cuda", "mps", "cpu"])
def test_the_training_clock_waits_for_queued_cuda_work_on_cuda_only(tmp_path, monkeypatch, kind):
    """The phases on a CPU run, with the run's device replaced by one of another type after setup: only a
    CUDA device is synchronised (1 fake second of queued work) before the training time is read."""
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: CLOCK[0]))
    calls = []

    def synchronize(device=None):
        calls.append(device)
        CLOCK[0] += 1.0

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    run = Run(resolve(raw({"step_cost": 0.25})), progress=False, out_dir=tmp_path)
    run.setup()
    run.open_loggers()
    try:
        run.loop = engine.LOOPS["offline"](run.ctx, run.state)
        fake = types.SimpleNamespace(type=kind)
        run.device = fake
        run.train_experience(0)
    finally:
        run.events.close()
    assert calls == ([fake] if kind == "cuda" else [])
    assert run.state.train_time == 0.25 + (1.0 if kind == "cuda" else 0.0) and run.state.samples == 8


class OnDevice(Run):
    """A CPU run whose device is replaced after setup and the loggers (the loop keeps the CPU): what the
    engine itself does with a CUDA or MPS device (the result header, bf16 autocast) can be checked on a CPU."""

    device_after_setup = None

    def open_loggers(self):
        events = super().open_loggers()
        self.device = torch.device(self.device_after_setup)
        return events


@pytest.mark.parametrize("kind,amp", [("cuda", True), ("cuda", False), ("mps", True)])
def test_bf16_autocast_and_the_gpu_name_on_cuda_only(tmp_path, monkeypatch, kind, amp):
    entered = []

    class Autocast:  # records the autocast the run enters, and stops the run there
        def __init__(self, device_type, dtype=None, **kw):
            self.args = (device_type, dtype)

        def __enter__(self):
            entered.append(self.args)
            raise RuntimeError("stopped at autocast")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch, "autocast", Autocast)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 0)
    cfg = resolve(raw({"fail": "interrupt", "fail_at": 0}, protocol={"name": "offline", "amp": amp}))
    monkeypatch.setattr(OnDevice, "device_after_setup", kind)
    res = OnDevice(cfg, progress=False, out_dir=tmp_path).execute()
    assert res["device"] == ("cuda (Fake GPU)" if kind == "cuda" else kind)
    if kind == "cuda" and amp:
        assert entered == [("cuda", torch.bfloat16)] and res["error"] == "RuntimeError: stopped at autocast"
    else:  # no autocast: the run goes on to experience 0, where the strategy interrupts it
        assert entered == [] and res["status"] == "interrupted"


def test_make_optimizer_takes_param_groups_and_drops_frozen_parameters():
    from types import SimpleNamespace

    from cl.core.strategy import make_optimizer

    a, b, frozen = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    frozen.requires_grad_(False)
    cfg = SimpleNamespace(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    opt = make_optimizer([{"params": [a, frozen], "lr": 0.5, "tag": "x"}, {"params": [frozen]}, {"params": [b]}], cfg)
    g = opt.param_groups
    assert len(g) == 2 and g[0]["params"] == [a] and g[0]["lr"] == 0.5 and g[0]["tag"] == "x"
    assert g[1]["params"] == [b] and g[1]["lr"] == 0.1 and g[1]["momentum"] == 0.9 and g[1]["weight_decay"] == 0.01
    assert make_optimizer([a, frozen, b], cfg).param_groups[0]["params"] == [a, b]
