"""Tests written from the mutation run of cl/train/online.py (issue 19): the online loop driven directly
(no engine, no model) on constructed streams whose numbers are known by hand.

Every sample's input is its id (``x[:, 0]``); the stand-in strategy is right exactly on the odd ids and
records every predict / train call, and the stand-in evaluation is right exactly on the odd test ids, so
online, near-future and anytime accuracies, the schedules (test-then-train order, near-future targets,
anytime evaluation points, host reads, real-time skips) and the per-task counts are exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cl.train.online as O
from cl.core.config import ProtocolConfig
from cl.core.registry import ConfigError
from cl.core.streams import Experience, Scenario
from cl.train.loop import NonFiniteLoss, RunContext
from cl.train.online import OnlineLoop
from cl.train.state import RunState

C = 4  # classes of every constructed stream


def exp(ids, ys, test=(), task=0, train_t=None, train_time=None):
    """An experience: training samples ``ids`` with labels ``ys``; ``test``: (test id, label) pairs."""
    x = torch.tensor(ids, dtype=torch.float32).reshape(-1, 1)
    tx = torch.tensor([i for i, _ in test], dtype=torch.float32).reshape(-1, 1)
    ty = torch.tensor([c for _, c in test], dtype=torch.long)
    return Experience(x, torch.tensor(ys, dtype=torch.long), tx, ty, sorted(set(ys)), task,
                      train_t=None if train_t is None else torch.tensor(train_t),
                      train_time=None if train_time is None else torch.tensor(train_time, dtype=torch.float64))


class Stub:
    """Right on odd ids (predicts the label), wrong on even ones; records calls."""

    def __init__(self, losses=None, keep=None):
        self.model, self.device = torch.nn.Identity(), torch.device("cpu")
        self.calls, self.losses, self.keep = [], losses or {}, keep

    def train_data(self, e):
        if self.keep is None:
            return e.train_x, e.train_y
        if self.keep < 0:  # its own samples added: the experience's plus copies of its first -keep
            return torch.cat([e.train_x, e.train_x[: -self.keep] + 500]), torch.cat([e.train_y, e.train_y[: -self.keep]])
        return e.train_x[: self.keep], e.train_y[: self.keep]

    def predict(self, x, t=None):
        ids = x[:, 0].long()
        self.calls.append(("p", ids.tolist(), t))
        out = torch.zeros(len(x), C + 1)
        y = self.labels[ids]  # wrong: a class above the label for class 0, below it for the others
        out[torch.arange(len(x)), torch.where(ids % 2 == 1, y, torch.where(y > 0, 0, C))] = 1.0
        return out

    def train_step(self, x, y, t=None):
        self.calls.append(("t", x[:, 0].long().tolist(), t))
        return torch.tensor(self.losses.get(sum(c[0] == "t" for c in self.calls) - 1, 0.0))

    def trained(self):
        return [ids for k, ids, _ in self.calls if k == "t"]


class Events:
    def __init__(self):
        self.starts, self.steps, self.logs = [], [], []

    def experience_start(self, i, n, steps):
        self.starts.append((i, n, steps))

    def step(self, n=1, **postfix):
        self.steps.append((n, postfix))

    def log(self, data, step=None):
        self.logs.append((step, dict(data)))


def odd_accuracy(subs):
    """The stand-in evaluation: the fraction of odd test ids (0.0 for no test sample)."""
    EVALS.append([(s.test_x[:, 0].long().tolist(), s.test_y.tolist(), s.task_id) for s in subs])
    return [float((s.test_x[:, 0].long() % 2 == 1).float().mean()) if len(s.test_y) else 0.0 for s in subs]


EVALS: list = []


def loop_of(exps, stub=None, state=None, boundaries="visible", **proto):
    EVALS.clear()
    stub = stub or Stub()
    labels = torch.full((1000,), C, dtype=torch.long)
    for e in exps:
        labels[e.train_x[:, 0].long()] = e.train_y
    stub.labels = labels
    sc = Scenario("t", exps, n_classes=C, input_shape=(1,), class_order=list(range(C)), boundaries=boundaries)
    proto = {"batch_size": 2, "log_every": 0, "shuffle_within_experience": False, **proto}
    ev = Events()
    ctx = RunContext(stub, sc, ProtocolConfig(name="online", **proto), lambda x: x, torch.device("cpu"),
                     odd_accuracy, ev)
    loop = OnlineLoop(ctx, state or RunState())
    return loop, stub, ev


def stream(loop, start=0):
    return [loop.run_experience(i, e) for i, e in enumerate(loop.scenario.experiences) if i >= start]


# -- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,field", [({"realtime_reference": "adam"}, "realtime_reference"),
                                       ({"near_future_shift": -1}, "near_future_shift"),
                                       ({"eval_every": -1}, "eval_every"), ({"log_every": -1}, "log_every")])
def test_bad_protocol_values_are_config_errors(bad, field):
    with pytest.raises(ConfigError, match=field):
        loop_of([exp([1], [0])], **bad)
    loop_of([exp([1], [0])], near_future_shift=0, eval_every=0, log_every=0, realtime_reference="sgd")


def test_fresh_loop_schedules_and_reports_nothing_yet():
    loop, _, _ = loop_of([exp([1], [0])], log_every=3, eval_every=5)
    assert (loop.c.next_log, loop.c.next_eval) == (3, 5)
    assert loop.st.realtime_cost is None and loop.sub == [None]
    assert not loop.seen_cls.any() and loop.hist.n == 0
    assert loop.log_fields() == {"online_acc": 0.0}  # nothing seen: no division by zero
    loop.state.samples = 17
    assert loop.log_step(3) == 17  # the online rows' W&B step is the number of samples seen


# -- test-then-train, near-future, online accuracy -------------------------------------------------

def test_each_batch_is_predicted_before_it_is_learned_and_near_future_batches_ahead():
    """5 samples in batches of 2 (2, 2, 1), shift 1: at step s the model predicts batch s + 1, then batch s,
    then learns batch s.  Right on odd ids: online 3/5, near-future on ids 3, 2, 5: 2/3."""
    loop, stub, ev = loop_of([exp([0, 1, 3, 2, 5], [0, 1, 0, 1, 0], task=3)], near_future_shift=1)
    assert stream(loop) == [5]
    assert stub.calls == [("p", [0, 1], 3), ("p", [3, 2], 3), ("t", [0, 1], 3),
                          ("p", [3, 2], 3), ("p", [5], 3), ("t", [3, 2], 3),
                          ("p", [5], 3), ("t", [5], 3)]
    assert ev.starts == [(0, 1, 3)]
    assert np.array_equal(loop.hist.a[:5], [0, 1, 1, 0, 1]) and loop.hist.n == 5
    out = loop.summary()
    assert out["online_acc"] == 0.6 and out["near_future_acc"] == pytest.approx(2 / 3)
    assert loop.log_fields() == {"online_acc": 0.6}
    assert (loop.c.nf_correct, loop.c.nf_count, loop.c.batches) == (2, 3, 3)
    assert loop.st.near_future_curve == [(5, pytest.approx(2 / 3))]
    assert (loop.st.seen, loop.st.trained_batches, loop.st.skipped_batches) == (5, 3, 0)


@pytest.mark.parametrize("shift,count", [(2, 1), (3, 0)])
def test_near_future_targets_only_inside_the_experience(shift, count):
    """Shift 2: only batch 2 (id 4, wrong) is predicted ahead; shift 3 > the 3 batches: none at all."""
    loop, stub, _ = loop_of([exp([0, 1, 2, 3, 4], [0, 1, 0, 1, 0])], near_future_shift=shift)
    stream(loop)
    assert [ids for k, ids, _ in stub.calls if k == "p"] == ([[0, 1], [4], [2, 3], [4]] if shift == 2
                                                              else [[0, 1], [2, 3], [4]])
    assert (loop.c.nf_correct, loop.c.nf_count) == (0, count)
    assert loop.st.near_future_curve == ([(5, 0.0)] if count else [])
    assert ("near_future_acc" in loop.summary()) == bool(count)


def test_single_sample_experience_shows_its_accuracy():
    loop, _, ev = loop_of([exp([1], [0])])
    stream(loop)
    assert ev.steps == [(0, {"online_acc": "1.000"}), (1, {})]  # progress: the postfix, then one step
    assert loop.log_fields() == {"online_acc": 1.0} and loop.summary()["online_acc"] == 1.0


def test_host_reads_every_sync_interval_and_at_the_end(monkeypatch):
    """SYNC_EVERY = 3 and 7 single-sample batches: correctness is read after steps 3, 6 and 7; each read
    updates the progress postfix with the online accuracy so far (ids 0..6, odd right: 1/3, 3/6, 3/7)."""
    monkeypatch.setattr(O, "SYNC_EVERY", 3)
    loop, _, ev = loop_of([exp(list(range(7)), [0] * 7)], batch_size=1)
    stream(loop)
    step = (1, {})
    assert ev.steps == [step, step, (0, {"online_acc": "0.333"}), step, step, step, (0, {"online_acc": "0.500"}),
                        step, (0, {"online_acc": "0.429"}), step]


@pytest.mark.parametrize("bad_step,seen_at_raise,where", [(1, 3, "by step 2"), (3, 6, "by step 5"),
                                                          (6, 7, "by step 6")])
def test_non_finite_loss_is_found_at_the_next_host_read(monkeypatch, bad_step, seen_at_raise, where):
    monkeypatch.setattr(O, "SYNC_EVERY", 3)
    loop, stub, _ = loop_of([exp(list(range(7)), [0] * 7)], batch_size=1, stub=Stub(losses={bad_step: float("nan")}))
    with pytest.raises(NonFiniteLoss, match=f"experience 0, {where}"):
        stream(loop)
    assert len(stub.trained()) == seen_at_raise


# -- the online curves -------------------------------------------------------------------------------

def test_online_curves_across_experiences_with_stream_times():
    """Two timed experiences (5 and 4 samples, stored out of time order), a point every 3 samples:
    points at 3, 6, 9 with the accuracy so far, the last-2 window and the timestamp of sample m."""
    e0 = exp([0, 1, 2, 3, 4], [0] * 5, train_time=[0.0, 4.0, 2.0, 1.0, 3.0])  # time order: ids 0, 3, 2, 4, 1
    e1 = exp([5, 6, 7, 8], [1] * 4, train_time=[8.0, 7.0, 6.0, 5.0])  # time order: ids 8, 7, 6, 5
    loop, stub, ev = loop_of([e0, e1], log_every=3, window=2)
    stream(loop)
    assert stub.trained() == [[0, 3], [2, 4], [1], [8, 7], [6, 5]]
    # stream correctness: ids 0 3 2 4 1 | 8 7 6 5 -> 0 1 0 0 1 | 0 1 0 1
    assert loop.st.online_acc_curve == [(3, pytest.approx(1 / 3)), (6, pytest.approx(2 / 6)), (9, pytest.approx(4 / 9))]
    assert loop.st.online_acc_window_curve == [(3, 0.5), (6, 0.5), (9, 0.5)]
    assert loop.st.online_acc_time_curve == [(2.0, pytest.approx(1 / 3)), (5.0, pytest.approx(1 / 3)),
                                             (8.0, pytest.approx(4 / 9))]
    assert [(s, d["samples"], d["stream_time"]) for s, d in ev.logs] == [(3, 3, 2.0), (6, 6, 5.0), (9, 9, 8.0)]
    assert loop.c.next_log == 12


# -- anytime evaluation --------------------------------------------------------------------------------

def test_anytime_points_and_their_accuracy_on_the_seen_classes():
    """Every 2 samples; class 0 is seen after batch 0, class 1 after batch 1, class 2 in experience 1.
    Test ids (odd = right): class 0: 101, 103, 100; class 1: 104; class 2: 105, 107; class 3: 109.
    At 2: task 0's class-0 tests, 2/3.  At 4: 4 tests, 2 right.  At 6: 2/4 and 2/2, overall 4/6 (the mean
    of the two accuracies would be 3/4)."""
    e0 = exp([0, 1, 2, 3], [0, 0, 1, 1], test=[(101, 0), (103, 0), (100, 0), (104, 1)])
    e1 = exp([4, 5], [2, 2], test=[(105, 2), (107, 2), (109, 3)], task=1)
    loop, _, ev = loop_of([e0, e1], eval_every=2)
    stream(loop)
    st = loop.st
    assert st.anytime == [(2, pytest.approx(2 / 3)), (4, 0.5), (6, pytest.approx(4 / 6))]
    assert st.anytime_matrix == [[pytest.approx(2 / 3), None], [0.5, None], [0.5, 1.0]]
    assert st.anytime_forgetting_curve == [(2, 0.0), (4, pytest.approx(1 / 6)), (6, pytest.approx(1 / 6))]
    assert EVALS[0] == [([101, 103, 100], [0, 0, 0], 0), ([], [], 1)]
    assert EVALS[2] == [([101, 103, 100, 104], [0, 0, 0, 1], 0), ([105, 107], [2, 2], 1)]
    anytime = [(s, d) for s, d in ev.logs if "anytime/acc" in d]
    assert [(s, sorted(d)) for s, d in anytime] == [
        (2, ["anytime/acc", "anytime/forgetting", "anytime/task_0", "samples"]),
        (4, ["anytime/acc", "anytime/forgetting", "anytime/task_0", "samples"]),
        (6, ["anytime/acc", "anytime/forgetting", "anytime/task_0", "anytime/task_1", "samples"])]
    assert anytime[2][1]["anytime/task_1"] == 1.0 and anytime[2][1]["samples"] == 6
    assert loop.c.next_eval == 8
    out = loop.summary()
    assert out["anytime_acc_last"] == pytest.approx(4 / 6) and out["anytime_forgetting"] == pytest.approx(1 / 6)
    assert out["anytime_auc"] == pytest.approx((2 / 3 + 0.5 + 4 / 6) / 3)


def test_anytime_with_no_test_sample_of_a_seen_class_is_zero():
    loop, _, _ = loop_of([exp([1, 3], [0, 0], test=[(5, 1)])], eval_every=2)
    stream(loop)
    assert loop.st.anytime == [(2, 0.0)] and loop.st.anytime_matrix == [[None]]


@pytest.mark.parametrize("bs,points,next_eval", [(1, [3, 6, 9], 12), (2, [4, 7, 9], 12), (3, [3, 8, 9], 12)])
def test_anytime_schedule_over_batches_and_experiences(bs, points, next_eval):
    """Every 3 samples over experiences of 5 and 4: an evaluation at the first batch end at or past each
    multiple of 3, once per point; the schedule runs across the boundary."""
    e0, e1 = exp([0, 1, 2, 3, 4], [0] * 5), exp([5, 6, 7, 8], [1] * 4)
    loop, _, ev = loop_of([e0, e1], eval_every=3, batch_size=bs)
    stream(loop)
    assert [m for m, _ in loop.st.anytime] == points and loop.c.next_eval == next_eval


def test_anytime_evaluation_reads_the_samples_predicted_so_far_first():
    """An evaluation point flushes the online curve up to it: every logged step is in order, and the
    online point at m is logged before the anytime point at m."""
    loop, _, ev = loop_of([exp(list(range(6)), [0] * 6)], eval_every=2, log_every=2)
    stream(loop)
    assert [(s, "anytime/acc" in d) for s, d in ev.logs] == [(2, False), (2, True), (4, False), (4, True),
                                                             (6, False), (6, True)]


def test_anytime_stream_time_on_timed_streams():
    e0 = exp([0, 1, 2, 3], [0] * 4, train_time=[3.0, 2.0, 1.0, 0.5])
    e1 = exp([4, 5], [1] * 2, train_time=[9.0, 8.0])
    loop, _, _ = loop_of([e0, e1], eval_every=2)
    stream(loop)
    assert [(t, a) for t, a in loop.st.anytime_time] == [(1.0, 0.0), (3.0, 0.0), (9.0, 0.0)]


def test_anytime_subsample_is_fixed_per_experience_and_of_the_given_size():
    """eval_subsample 4: a test set of 6 is subsampled to 4 (the same 4, in order, at every point and
    whatever the global seed); sets of 4 and 3 are used whole."""
    tests = [[(101 + 2 * i, 0) for i in range(6)], [(201 + i, 0) for i in range(4)], [(301 + i, 0) for i in range(3)]]
    exps = [exp([2 * j, 2 * j + 1], [0, 0], test=t, task=j) for j, t in enumerate(tests)]
    torch.manual_seed(0)
    loop, _, _ = loop_of(exps, eval_every=2, eval_subsample=4)
    stream(loop)
    assert len(EVALS) == 3
    first = EVALS[0][0][0]
    assert len(first) == 4 and set(first) < {101 + 2 * i for i in range(6)} and first == sorted(first)
    for ev in EVALS:
        assert [ids for ids, _, _ in ev] == [first, [201, 202, 203, 204], [301, 302, 303]]
    torch.manual_seed(1)
    other, _, _ = loop_of(exps, eval_every=2, eval_subsample=4)
    assert all(torch.equal(a, b) for a, b in zip(loop.sub[:1], other.sub[:1]))


# -- real-time accounting ---------------------------------------------------------------------------

def _realtime(monkeypatch, cost, realtime=True, calibrated=(2.0, 2.2)):
    asked = []
    monkeypatch.setattr(O, "calibrate", lambda s, x, y, t, ref: asked.append((x[:, 0].tolist(), ref)) or calibrated)
    e0, e1 = exp([0, 1, 2], [0] * 3), exp([3, 4, 5], [1] * 3)
    loop, stub, _ = loop_of([e0, e1], batch_size=1, realtime=realtime, realtime_cost=cost, realtime_reference="sgd")
    stream(loop)
    return loop, stub, asked


@pytest.mark.parametrize("cost,trained", [(1.5, [0, 2, 4]), (1, [0, 1, 2, 3, 4, 5]), (3, [0, 3]), (0.5, [0, 1, 2, 3, 4, 5])])
def test_realtime_known_cost_trains_when_free(monkeypatch, cost, trained):
    loop, stub, asked = _realtime(monkeypatch, cost)
    assert [ids[0] for ids in stub.trained()] == trained and asked == []
    assert loop.st.realtime_cost == float(cost) and loop.st.realtime_cost_measured is None
    assert (loop.st.trained_batches, loop.st.skipped_batches) == (len(trained), 6 - len(trained))
    assert loop.c.batches == 6 and (cost < 1 or loop.c.free_at == trained[-1] + cost)  # busy until then
    assert loop.summary()["realtime_k"] == 6 / len(trained)
    assert loop.st.online_acc_curve == [] and loop.hist.n == 6  # every batch still predicted


def test_realtime_cost_measured_once_on_the_first_batch(monkeypatch):
    loop, stub, asked = _realtime(monkeypatch, 0)
    assert asked == [([0.0], "sgd")]
    assert (loop.st.realtime_cost, loop.st.realtime_cost_measured) == (2.0, 2.2)
    assert [ids[0] for ids in stub.trained()] == [0, 2, 4]


def test_no_realtime_trains_every_batch_and_keeps_no_cost(monkeypatch):
    loop, stub, asked = _realtime(monkeypatch, 3, realtime=False)
    assert len(stub.trained()) == 6 and asked == [] and loop.st.realtime_cost is None
    assert "realtime_k" not in loop.summary() and loop.c.free_at == 0.0


# -- per-task online accuracy --------------------------------------------------------------------

def test_online_accuracy_per_sample_task_follows_the_shuffled_order():
    """Per-sample task ids 0, 2, 0, 2, 0, 2 on ids 0..5 (odd right): task 0 is 0/3, task 2 3/3, task 1
    has none; experience 1 adds task 1 (ids 7, 8: 1/2) and task 0 (id 9: right).  Shuffled within each
    experience: the task ids must follow their samples."""
    e0 = exp(list(range(6)), [0] * 6, train_t=[0, 2, 0, 2, 0, 2])
    e1 = exp([7, 8, 9], [1] * 3, train_t=[1, 1, 0])
    torch.manual_seed(0)
    loop, _, _ = loop_of([e0, e1], shuffle_within_experience=True)
    loop.run_experience(0, e0)
    assert loop.st.online_acc_per_task == [0.0, None, 1.0]
    assert (loop.c.task_correct, loop.c.task_count) == ([0, 0, 3], [3, 0, 3])
    loop.run_experience(1, e1)
    assert loop.st.online_acc_per_task == [0.25, 0.5, 1.0]
    assert (loop.c.task_correct, loop.c.task_count) == ([1, 1, 3], [4, 2, 3])


@pytest.mark.parametrize("keep,n", [(3, 3), (-2, 6)])
def test_no_per_task_accuracy_when_the_strategy_trains_on_other_samples_than_the_experiences(keep, n):
    loop, _, _ = loop_of([exp([1, 2, 3, 4], [0] * 4, train_t=[0, 1, 0, 1])], stub=Stub(keep=keep))
    assert stream(loop) == [n]
    assert loop.st.online_acc_per_task is None and loop.c.task_count is None


def test_an_experience_without_training_samples():
    empty = exp([], [], train_t=[])
    empty.train_t = empty.train_t.long()
    loop, stub, ev = loop_of([empty, exp([1], [0], train_t=[0])], near_future_shift=1, eval_every=1)
    assert loop.run_experience(0, empty) == 0
    assert stub.calls == [] and ev.starts == [(0, 2, 0)] and loop.st.correct[0][0] == 0
    assert loop.st.online_acc_per_task == [] and loop.log_fields() == {"online_acc": 0.0}
    assert loop.st.near_future_curve == [] and loop.c.nf_count == 0
    loop.run_experience(1, loop.scenario.experiences[1])
    assert loop.st.online_acc_per_task == [1.0] and loop.summary()["online_acc"] == 1.0


# -- the stream order -------------------------------------------------------------------------------

@pytest.mark.parametrize("boundaries,shuffle,shuffled", [("visible", True, True), ("hidden", True, True),
                                                         ("blurry", True, False), ("gradual", True, False),
                                                         ("visible", False, False)])
def test_only_visible_and_hidden_streams_are_shuffled(boundaries, shuffle, shuffled):
    torch.manual_seed(0)
    loop, stub, _ = loop_of([exp(list(range(8)), [0] * 8)], boundaries=boundaries, shuffle_within_experience=shuffle)
    stream(loop)
    order = [i for ids in stub.trained() for i in ids]
    assert sorted(order) == list(range(8)) and (order != list(range(8))) == shuffled


def test_time_ordered_stream_is_stable_for_equal_times():
    """Samples with equal timestamps keep their storage order (20 of them: torch's default sort is not
    stable at that size)."""
    loop, stub, _ = loop_of([exp(list(range(20)), [0] * 20, train_time=[1.0] * 10 + [0.0] * 10)],
                            shuffle_within_experience=True, batch_size=20)
    stream(loop)
    assert stub.trained() == [list(range(10, 20)) + list(range(10))]
    assert list(loop.times) == [0.0] * 10 + [1.0] * 10


# -- resume -----------------------------------------------------------------------------------------

def test_a_new_loop_on_the_saved_state_continues_where_the_last_stopped():
    """After experience 0, a loop built on its state has the same per-sample history, seen classes and
    schedules, and the rest of the stream gives the numbers of an uninterrupted loop."""
    e0 = exp([0, 1, 2, 3, 4], [0, 0, 1, 1, 0], test=[(101, 0), (102, 1), (105, 3)])
    e1 = exp([5, 6, 7, 8], [2, 2, 2, 2], test=[(107, 2), (108, 2)], task=1)
    full, _, _ = loop_of([e0, e1], log_every=3, eval_every=4, near_future_shift=1)
    stream(full)
    first, _, _ = loop_of([e0, e1], log_every=3, eval_every=4, near_future_shift=1)
    first.run_experience(0, e0)
    state = first.state
    assert np.array_equal(np.unpackbits(np.asarray(state.online.correct[0][1]), count=5), [0, 1, 0, 1, 0])
    assert state.online.cursor.seen_classes == [0, 1]
    assert (state.online.cursor.next_log, state.online.cursor.next_eval) == (6, 8)
    again, _, _ = loop_of([e0, e1], state=state, log_every=3, eval_every=4, near_future_shift=1)
    assert (again.c.next_log, again.c.next_eval) == (6, 8)  # not restarted
    assert again.hist.n == 5 and again.hist.total == 2 and again.seen_cls.tolist() == [True, True, False, False]
    again.run_experience(1, e1)
    assert EVALS[0][0] == ([101, 102], [0, 1], 0)  # the classes seen before the resume are still seen
    for k in ("online_acc_curve", "online_acc_window_curve", "anytime", "anytime_matrix", "near_future_curve"):
        assert getattr(again.st, k) == getattr(full.st, k), k
    assert again.summary() == {**full.summary(), **{k: again.summary()[k] for k in again.summary() if "time" in k
                                                   or k.endswith("_ms") or k == "eval_cost_fraction"}}
    assert np.array_equal(np.unpackbits(np.asarray(state.online.correct[1][1]), count=4), [1, 0, 1, 0])
    assert again.result()["online_acc"] == 4 / 9 and again.result()["cursor"]["batches"] == 5


# -- phase times ----------------------------------------------------------------------------------------

class Clock:
    """Stands in for the ``time`` module of cl.train.online: every read advances the clock by 1 s."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_phase_times_add_up_per_phase(monkeypatch):
    """On a clock that advances 1 s a read, each timed call costs exactly 1 s: 3 predictions, 3 steps,
    2 near-future predictions and 2 anytime evaluations (5 samples, batches of 2, shift 1, every 2)."""
    monkeypatch.setattr(O, "time", Clock())
    loop, _, _ = loop_of([exp([0, 1, 2, 3, 4], [0] * 5)], near_future_shift=1, eval_every=2)
    stream(loop)
    assert loop.st.times == {"predict": 3.0, "near_future": 2.0, "train": 3.0, "anytime": 2.0}
    out = loop.summary()
    assert (out["predict_time_s"], out["train_step_time_s"], out["near_future_time_s"], out["anytime_eval_time_s"]) \
        == (3.0, 3.0, 2.0, 2.0)
    assert out["online_eval_time_s"] == 7.0 and out["eval_cost_fraction"] == 0.7
    assert out["train_step_ms"] == 1000.0 and out["predict_ms"] == 1000.0


def test_per_step_times_are_not_rounded():
    loop, _, _ = loop_of([exp([1], [0])])
    loop.st.times.update(train=1.0, predict=2.0)
    loop.st.trained_batches, loop.c.batches = 3, 3
    out = loop.summary()
    assert out["train_step_ms"] == pytest.approx(1000 / 3) and out["predict_ms"] == pytest.approx(2000 / 3)
    loop.st.times.update(train=0.03, predict=0.01)  # well under a second in all
    assert loop.summary()["eval_cost_fraction"] == pytest.approx(0.25)


def test_realtime_over_an_empty_stream_reports_no_division_by_zero():
    loop, _, _ = loop_of([exp([], [])], realtime=True, realtime_cost=2)
    assert stream(loop) == [0]
    out = loop.summary()
    assert out["realtime_k"] == 0.0 and out["online_acc"] == 0.0 and out["eval_cost_fraction"] == 0.0
    assert out["train_step_time_s"] == out["predict_time_s"] == out["near_future_time_s"] == 0.0  # nothing timed
    assert out["anytime_eval_time_s"] == out["train_step_ms"] == out["predict_ms"] == 0.0


def test_host_history_memory_stays_proportional_to_the_samples():
    """Memory: read after read (one sample at a time here), the host array stays within a few times the
    samples held (or its first size): it grows when it is short, not at every read."""
    from cl.train.online import _History

    h = _History()
    bits = (np.arange(1030) % 2).astype(np.uint8)
    for k in range(12):
        h.extend(bits[k:k + 1])
        assert len(h.a) <= 4 * max(h.n, 1024)
    h.extend(bits[12:1024])
    h.extend(bits[1024:1030])
    assert len(h.a) <= 4 * 1030 and h.n == 1030 and h.total == 515 and np.array_equal(h.a[:1030], bits)


def test_anytime_after_every_sample_has_each_samples_stream_time():
    """Batches of 1, an evaluation every sample: the point after sample k of an experience has its time."""
    e0, e1 = exp([0, 1, 2], [0] * 3, train_time=[5.0, 4.0, 6.0]), exp([3, 4], [1] * 2, train_time=[8.0, 7.0])
    loop, _, _ = loop_of([e0, e1], eval_every=1, batch_size=1)
    stream(loop)
    assert [m for m, _ in loop.st.anytime] == [1, 2, 3, 4, 5]
    assert [t for t, _ in loop.st.anytime_time] == [4.0, 5.0, 6.0, 7.0, 8.0]
