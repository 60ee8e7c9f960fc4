"""The online protocol (cl/online.py), its metrics (cl/metrics.py, section 11b) and graph capture (cl/graphs.py)."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import cl.core.metrics as M
from cl.core.config import resolve
from cl.train.engine import Run
from cl.core.registry import scenarios
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.core.streams import Experience, Scenario
from conftest import tiny

BS = 10


def run(raw, tmp_path, name="r"):
    return Run(resolve(raw), progress=False, out_dir=tmp_path / name).execute()


# -- a small fabricated stream: 2 classes per task, x[:, 0] holds the sample's timestamp --------------
@dataclass
class FabConfig:
    n_tasks: int = 3
    per_class: int = 20
    test_per_class: int = 10
    boundaries: str = "visible"
    timed: bool = False  # per-sample timestamps given in shuffled storage order


@scenarios.register("test-online-fab", FabConfig)
def fab(cfg, seed):
    g = torch.Generator().manual_seed(0)
    C, dim = 2 * cfg.n_tasks, 8
    means = torch.randn(C, dim, generator=g) * 4
    exps, clock = [], 0
    for t in range(cfg.n_tasks):
        ytr = torch.tensor([2 * t, 2 * t + 1]).repeat_interleave(cfg.per_class)
        yte = torch.tensor([2 * t, 2 * t + 1]).repeat_interleave(cfg.test_per_class)
        xtr = means[ytr] + torch.randn(len(ytr), dim, generator=g)
        xte = means[yte] + torch.randn(len(yte), dim, generator=g)
        times = torch.arange(clock, clock + len(ytr), dtype=torch.float64)
        clock += len(ytr)
        xtr[:, 0] = times.float()
        if cfg.timed:  # storage order differs from time order: the loop must sort by time
            perm = torch.randperm(len(ytr), generator=g)
            xtr, ytr, times = xtr[perm], ytr[perm], times[perm]
        exps.append(Experience(xtr, ytr, xte, yte, [2 * t, 2 * t + 1],
                               None if cfg.boundaries != "visible" else t, index=t,
                               train_t=torch.full((len(ytr),), t), train_time=times if cfg.timed else None))
    return Scenario("test-online-fab", exps, n_classes=C, input_shape=(dim,), class_order=list(range(C)),
                    boundaries=cfg.boundaries, modality="vector")


LOG: dict = {}


@register("test-online-memo", StrategyConfig)
class Memo(Strategy):
    """Memorises trained inputs; predicts their label, or an impossible class for anything new.
    Flags any prediction of an input it has already trained on."""

    def setup(self):
        self.mem, self.violations, self.n_predicted = {}, 0, 0
        LOG["memo"] = self

    def train_step(self, x, y, t=None):
        for row, lab in zip(x, y):
            self.mem[row.numpy().tobytes()] = int(lab)
        return torch.zeros(())

    def predict(self, x, t=None):
        out = torch.zeros(len(x), self.info.n_classes + 1)
        for i, row in enumerate(x):
            lab = self.mem.get(row.numpy().tobytes())
            if lab is not None:
                self.violations += 1
            out[i, self.info.n_classes if lab is None else lab] = 1
        self.n_predicted += len(x)
        return out


@register("test-online-const", StrategyConfig)
class Const(Strategy):
    """Never learns; always predicts class 0."""

    def train_step(self, x, y, t=None):
        return torch.zeros(())

    def predict(self, x, t=None):
        out = torch.zeros(len(x), self.info.n_classes)
        out[:, 0] = 1
        return out


@register("test-online-spy", StrategyConfig)
class Spy(Strategy):
    """Records the timestamps (x[:, 0]) of the batches it trains on."""

    def setup(self):
        self.trained = []
        LOG["spy"] = self

    def train_step(self, x, y, t=None):
        self.trained.append(x[:, 0].tolist())
        return torch.zeros(())


class FakeClock:
    """Stands in for the ``time`` module of cl.train.realtime: every read advances 1 ms; a slow step adds 1 s."""

    now = 0.0

    @classmethod
    def perf_counter(cls):
        cls.now += 0.001
        return cls.now


@register("test-online-slow", StrategyConfig)
class Slow(Strategy):
    """A step that costs 1 s on the fake clock, against a reference step that costs 1 ms."""

    def train_step(self, x, y, t=None):
        FakeClock.now += 1.0
        return super().train_step(x, y, t)


def fab_cfg(strategy, protocol=None, **scen):
    return tiny(strategy, scenario={"name": "test-online-fab", **scen}, backbone="identity",
                protocol={"name": "online", "batch_size": BS, **(protocol or {})})


# -- metrics against hand-worked examples ------------------------------------------------------------
def test_online_accuracy_curves_hand_worked():
    c = [1, 0, 1, 1, 0, 0]
    assert M.online_accuracy_curve(c, 2) == [(2, 0.5), (4, 0.75), (6, 0.5)]
    assert M.online_accuracy_curve(c, 2, window=2) == [(2, 0.5), (4, 1.0), (6, 0.0)]
    assert M.online_accuracy_curve(c, 4, window=3) == [(4, pytest.approx(2 / 3))]
    assert M.online_accuracy_curve([], 2) == []


def test_anytime_auc_of_known_curves():
    # evenly spaced points: the area over the length is the mean
    assert M.anytime_auc_samples([100, 200, 300, 400], [0.2, 0.4, 0.6, 0.8]) == pytest.approx(0.5)
    assert M.anytime_auc([0.2, 0.4, 0.6, 0.8]) == pytest.approx(0.5)
    # uneven points: each accuracy holds since the previous point: (0.5*100 + 1.0*200) / 300
    assert M.anytime_auc_samples([100, 300], [0.5, 1.0]) == pytest.approx(250 / 300)
    # acc(s) = s / 1000 sampled at every sample: right Riemann sum of a line, (1001 / 2) / 1000
    s = np.arange(1, 1001)
    assert M.anytime_auc_samples(s, s / 1000) == pytest.approx(0.5005)
    assert M.anytime_auc_samples([], []) == 0.0
    with pytest.raises(ValueError):
        M.anytime_auc_samples([200, 100], [0.1, 0.2])


def test_anytime_matrix_forgetting_hand_worked():
    A = [[0.9, None], [0.6, 0.8], [0.5, 0.9]]
    assert M.anytime_forgetting_per_task(A) == [pytest.approx(0.4), pytest.approx(-0.1)]
    assert M.anytime_forgetting(A) == pytest.approx(0.15)
    assert M.anytime_forgetting_per_task(A, k=1) == [pytest.approx(0.3), None]
    assert M.anytime_forgetting_curve(A) == [0.0, pytest.approx(0.3), pytest.approx(0.15)]


def test_near_future_pairs_and_realtime_schedule():
    assert M.near_future_pairs(5, 2) == [(0, 2), (1, 3), (2, 4)]
    assert all(target > s for s, target in M.near_future_pairs(50, 1))
    assert M.near_future_pairs(5, 0) == [(s, s) for s in range(5)]
    assert M.realtime_schedule(7, 3) == [True, False, False, True, False, False, True]
    assert M.realtime_schedule(4, 1) == [True] * 4 and M.realtime_schedule(4, 0.3) == [True] * 4
    assert M.realtime_schedule(6, 1.5) == [True, False, True, False, True, False]  # waits for the next batch


# -- the loop ------------------------------------------------------------------------------------------
def test_test_then_train_and_near_future_never_predict_learned_batches(tmp_path):
    res = run(fab_cfg("test-online-memo", {"near_future_shift": 2}), tmp_path)
    assert res["status"] == "finished"
    m, memo = res["metrics"], LOG["memo"]
    assert m["online_acc"] == 0.0 and m["near_future_acc"] == 0.0  # a memoriser scores 0 on unseen batches
    assert memo.violations == 0  # no prediction was ever made on a batch it had learned
    # near-future targets: every batch but the first 2 of each experience (3 tasks x 4 batches)
    assert res["online"]["cursor"]["nf_count"] == 3 * (40 - 2 * BS)
    # the check is not vacuous: it has memorised every training sample
    sc = fab(FabConfig(), 0)
    x = torch.cat([e.train_x for e in sc.experiences])
    assert (memo.predict(x).argmax(1) == torch.cat([e.train_y for e in sc.experiences])).all()


def test_anytime_evaluation_on_seen_classes_hand_worked(tmp_path):
    """Always predicting class 0 on 3 tasks x 2 classes (40 train / 20 test samples a task):
    anytime accuracy is 1/2 while only task 0 is seen, then 1/4 and 1/6 at the later task ends."""
    res = run(fab_cfg("test-online-const", {"eval_every": 40, "log_every": 20, "window": 40},
                      ), tmp_path)
    on, m = res["online"], res["metrics"]
    assert [s for s, _ in on["anytime"]] == [40, 80, 120]
    assert [a for _, a in on["anytime"]] == pytest.approx([1 / 2, 1 / 4, 1 / 6])
    assert on["anytime_matrix"][0] == [0.5, None, None]
    assert on["anytime_matrix"][2] == [0.5, 0.0, 0.0]
    assert m["anytime_auc"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 6) / 3)
    assert m["anytime_acc_last"] == pytest.approx(1 / 6)
    # prequential: only the 20 samples of class 0 are right, all in task 0
    assert m["online_acc"] == pytest.approx(20 / 120)
    assert m["online_acc_window"] == 0.0  # the last 40 samples are task 2
    assert [s for s, _ in on["online_acc_curve"]] == [20, 40, 60, 80, 100, 120]
    assert on["online_acc_curve"][-1][1] == pytest.approx(20 / 120)
    assert on["online_acc_window_curve"][1][1] == 0.5  # samples 0..40: task 0, half of it class 0
    assert on["online_acc_window_curve"][3][1] == 0.0  # samples 40..80: task 1
    assert m["anytime_forgetting"] == 0.0
    assert on["online_acc_per_task"] == [0.5, 0.0, 0.0]  # by each sample's train_t
    for k in ("predict_time_s", "train_step_time_s", "anytime_eval_time_s", "eval_cost_fraction"):
        assert k in m
    assert "correct" not in on


def test_realtime_known_cost_skips_the_right_batches(tmp_path):
    res = run(fab_cfg("test-online-spy", {"realtime": True, "realtime_cost": 3, "log_every": 40}, timed=True), tmp_path)
    trained = [int(b[0]) // BS for b in LOG["spy"].trained]
    assert trained == [0, 3, 6, 9]  # 12 batches over 3 experiences; the schedule runs across boundaries
    m = res["metrics"]
    assert m["trained_batches"] == 4 and m["skipped_batches"] == 8 and m["realtime_cost"] == 3
    assert m["seen"] == 120 and "correct" not in res["online"]
    assert res["online"]["online_acc_curve"][-1][0] == 120  # every batch was still predicted


def test_realtime_measured_cost(tmp_path, monkeypatch):
    """C is measured as the strategy's step time over the reference step's (on a fake clock here,
    so the schedule is exact): (1 s + 1 ms) / 1 ms = 1001 stream intervals, so one batch of 12 is learned."""
    import cl.train.realtime

    monkeypatch.setattr(cl.train.realtime, "time", FakeClock)
    res = run(fab_cfg("test-online-slow", {"realtime": True, "realtime_reference": "sgd"}), tmp_path)
    m = res["metrics"]
    assert m["realtime_cost"] == 1001 and m["realtime_cost_measured"] == pytest.approx(1001, rel=1e-6)
    assert m["trained_batches"] == 1 and m["skipped_batches"] == 11
    assert m["realtime_k"] == 12


def test_time_ordered_stream_is_consumed_by_timestamp(tmp_path):
    res = run(fab_cfg("test-online-spy", {"log_every": 30}, timed=True, boundaries="hidden"), tmp_path)
    stamps = [s for b in LOG["spy"].trained for s in b]
    assert stamps == sorted(stamps) and len(stamps) == 120
    assert [t for t, _ in res["online"]["online_acc_time_curve"]] == [29.0, 59.0, 89.0, 119.0]


def test_anytime_evaluation_at_an_experiences_last_sample_has_its_stream_time(tmp_path):
    # 40 samples an experience, an anytime evaluation every 40: each falls on an experience's last sample,
    # whose timestamp is 39, 79, 119 (found by mutation testing: an index one past it dropped those points)
    res = run(fab_cfg("test-online-spy", {"eval_every": 40, "log_every": 0}, timed=True), tmp_path)
    assert [m for m, _ in res["online"]["anytime"]] == [40, 80, 120]
    assert [t for t, _ in res["online"]["anytime_time"]] == [39.0, 79.0, 119.0]
    m = res["metrics"]
    for k in ("anytime_eval_time_s", "predict_time_s", "train_step_time_s"):  # measured phase times
        assert 0 < m[k] < m["wall_time"], k


@pytest.mark.parametrize("boundaries", ["hidden", "blurry", "gradual"])
def test_task_free_streams_run(tmp_path, boundaries):
    res = run(fab_cfg("er", {"eval_every": 50, "near_future_shift": 1}, boundaries=boundaries), tmp_path)
    assert res["status"] == "finished" and len(res["online"]["anytime"]) == 2


def test_graph_option_is_the_eager_path_on_cpu(tmp_path):
    from cl.train import graphs
    from strategies.er import ER

    raw = tiny("er", protocol={"name": "online", "eval_every": 100, "log_every": 50})
    a = run(raw, tmp_path, "a")
    b = run({**raw, "protocol": {**raw["protocol"], "graphs": True}}, tmp_path, "b")
    assert a["run_id"] != b["run_id"]
    for k in ("online_acc_curve", "anytime", "anytime_matrix"):
        assert a["online"][k] == b["online"][k]
    assert a["metrics"]["online_acc"] == b["metrics"]["online_acc"] and a["R"] == b["R"]
    assert graphs.is_graph_safe(ER.__new__(ER))


def test_graph_helpers_fall_back_on_cpu():
    from cl.train import graphs
    from cl.models.model import Model
    from cl.models.heads import IncrementalLinear
    from cl.core.strategy import RunInfo

    model = Model(torch.nn.Flatten(), IncrementalLinear(4, 3))
    s = Strategy(StrategyConfig(), model, RunInfo(n_classes=3, input_shape=(4,), device=torch.device("cpu"), seed=0))
    assert graphs.train_step_fn(s, True) == s.train_step
    x = torch.randn(5, 4)
    model.observe(torch.arange(3))
    assert torch.equal(graphs.predict_fn(s, True)(x), model(x).argmax(1))
    assert graphs.is_graph_safe(s) and not graphs.is_graph_safe(Memo.__new__(Memo))


def test_online_metrics_logged_with_samples_as_step(tmp_path, monkeypatch):
    import cl.train.engine as E

    logged = []

    class FakeLogger:
        def __init__(self, *a, **k):
            self.run = object()

        def log(self, data, step=None):
            logged.append((step, dict(data)))

        def finish(self, result):
            pass

    monkeypatch.setattr(E, "WandbLogger", FakeLogger)
    run(fab_cfg("er", {"eval_every": 60, "log_every": 40}), tmp_path)
    steps = [s for s, _ in logged]
    assert steps == sorted(steps)  # W&B needs a non-decreasing step
    online = [(s, d) for s, d in logged if "online/acc" in d]
    assert [s for s, _ in online] == [40, 80, 120]
    assert [s for s, d in logged if "anytime/acc" in d] == [60, 120]
    assert any("avg_acc" in d and s == 120 for s, d in logged)  # the engine's last boundary row


def test_er_buffer_step_has_no_host_branch_on_size():
    """The reservoir draws against a device-side counter: sampling a growing buffer stays uniform."""
    from cl.models.buffers import ReservoirBuffer

    torch.manual_seed(0)
    buf = ReservoirBuffer(50)
    buf.add(y=torch.arange(10))
    assert int(buf.count) == 10 and len(buf) == 10
    counts = torch.bincount(torch.cat([buf.sample(10)["y"] for _ in range(2000)]), minlength=10)
    assert counts.min() > 1600 and counts.max() < 2400
    buf.advance_host(0)
    state = buf.state_dict()
    other = ReservoirBuffer(1)
    other.load_state_dict(state)
    assert int(other.count) == 10


CRASH = {"at": None}


@register("test-online-crash", StrategyConfig)
class Crash(Strategy):
    """Plain fine-tuning that is interrupted at the start of experience CRASH["at"]."""

    def before_experience(self, exp):
        if exp.index == CRASH["at"]:
            raise KeyboardInterrupt


def test_resumed_run_continues_the_online_curves(tmp_path):
    raw = fab_cfg("test-online-crash", {"eval_every": 30, "log_every": 20, "near_future_shift": 1})
    full = run(raw, tmp_path, "full")
    CRASH["at"] = 2
    try:
        cut = run(raw, tmp_path, "cut")
    finally:
        CRASH["at"] = None
    assert cut["status"] == "interrupted" and (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = run(raw, tmp_path, "cut")
    assert resumed["resumed"] and resumed["status"] == "finished"
    for k in ("online_acc_curve", "anytime", "anytime_matrix", "near_future_curve"):
        assert resumed["online"][k] == full["online"][k], k
    assert resumed["metrics"]["online_acc"] == full["metrics"]["online_acc"]


def test_realtime_er_against_the_er_reference_costs_one(tmp_path, monkeypatch):
    """With the default reference (the ER step itself) ER's measured cost rounds to 1: it sees every batch."""
    import cl.train.realtime

    monkeypatch.setattr(cl.train.realtime, "time", FakeClock)  # every timed step reads the clock twice: equal times
    res = run(fab_cfg("er", {"realtime": True}), tmp_path)
    m = res["metrics"]
    assert m["realtime_cost"] == 1 and m["trained_batches"] == 12 and m["skipped_batches"] == 0


# -- the CUDA-graph bookkeeping, emulated on CPU ------------------------------------------------------
class EmulatedGraph:
    """Stands in for torch.cuda.CUDAGraph: replay re-runs the recorded step's kernels into the static
    output; like a real replay it leaves Python-side state (the buffers' host counters) alone."""

    def replay(self):
        hosts = [b.n_seen for b in self.buffers]
        self.out.copy_(self.fn())
        for b, h in zip(self.buffers, hosts):
            b.n_seen = h


class Emulation:
    """Replaces the CUDA calls of cl.graphs: 'capture' runs the step's Python once and then undoes every
    tensor effect (model, optimiser and buffer tensors, RNG), as a real capture runs no kernels."""

    def _device_ok(self, x):
        return True

    def _new_graph(self):
        return EmulatedGraph()

    def _eager_side(self, x, y, t):
        return self.s.train_step(x, y, t)

    def _sync(self):
        pass

    def _record(self, graph, fn):
        from cl.models.buffers import ReservoirBuffer

        s = self.s
        tensors = list(s.model.state_dict(keep_vars=True).values())
        tensors += [v for st in s.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        for b in vars(s).values():
            if isinstance(b, ReservoirBuffer):
                tensors += list(b.data.values()) + [b.count]
        saved = [v.detach().clone() for v in tensors]
        rng = torch.get_rng_state()
        out = fn()
        with torch.no_grad():
            for v, old in zip(tensors, saved):
                v.copy_(old)
        torch.set_rng_state(rng)
        graph.fn, graph.out, graph.buffers = fn, out, getattr(self, "buffers", [])
        return out


def test_graph_capture_bookkeeping_matches_eager(tmp_path, monkeypatch):
    """With capture emulated, the graphed online run (warm-up, capture per batch shape, replays, host
    counters of the buffer) gives exactly the eager run's online accuracy, curves and R."""
    from cl.train import graphs

    class Step(Emulation, graphs.GraphedTrainStep):
        pass

    class Pred(Emulation, graphs.GraphedPredict):
        pass

    made = {}
    eager_predict = graphs.predict_fn
    monkeypatch.setattr(graphs, "train_step_fn",
                        lambda s, on: made.setdefault("step", Step(s)) if on else s.train_step)
    monkeypatch.setattr(graphs, "predict_fn",
                        lambda s, on: made.setdefault("pred", Pred(s)) if on else eager_predict(s, False))
    raw = tiny("er", protocol={"name": "online", "batch_size": 16, "eval_every": 100, "log_every": 50})
    a = run(raw, tmp_path, "a")
    assert not made
    b = run({**raw, "protocol": {**raw["protocol"], "graphs": True}}, tmp_path, "b")
    step, pred = made["step"], made["pred"]
    assert sorted(k[0][0] for k in step.graphs) == [8, 16]  # 200 samples an experience: 12 x 16 + one 8
    assert step.replays == 1000 // 16 + 5 - 3 - 1 - 1  # all steps but 3 warm-ups and one capture per shape
    assert step.s.buffer.n_seen == 1000 and int(step.s.buffer.count) == 1000
    assert len(pred.graphs) == 2
    for k in ("online_acc_curve", "online_acc_window_curve", "anytime", "anytime_matrix"):
        assert a["online"][k] == b["online"][k], k
    assert a["metrics"]["online_acc"] == b["metrics"]["online_acc"] and a["R"] == b["R"]


@pytest.mark.parametrize("strategy", ["er-ace", "scr"])
def test_anytime_evaluation_leaves_the_training_trajectory_unchanged(tmp_path, strategy):
    """Anytime evaluation is evaluation only: with a BatchNorm backbone and a strategy that draws from the
    global RNG (replay draws; SCR's views and NCM), evaluating every 30 samples gives bit-identical final
    accuracies and online predictions to not evaluating at all, so runs that differ in ``eval_every`` alone
    (an entry's sweep and the common sweep) are comparable."""
    def once(every, name):
        raw = tiny({"name": strategy, "buffer_size": 40}, scenario={"name": "split-digits"},
                   backbone={"name": "resnet18r", "nf": 4},
                   protocol={"name": "online", "batch_size": BS, "eval_every": every})
        return run(raw, tmp_path, name)

    a, b = once(0, "plain"), once(30, "anytime")
    assert b["online"]["anytime"] and not a["online"]["anytime"]
    assert a["R"] == b["R"]
    assert a["metrics"]["online_acc"] == b["metrics"]["online_acc"]
    assert a["online"]["online_acc_curve"] == b["online"]["online_acc_curve"]
