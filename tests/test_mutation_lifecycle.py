"""Pieces of the run lifecycle whose bugs change numbers silently, on constructed cases (issue 19, found by
mutation testing): evaluation (``cl.train.evaluate``), ...

The strategies here are stand-ins whose predictions are fixed in advance, so every expected value is exact."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from cl.train.evaluate import class_masks, evaluate


# -- evaluate ------------------------------------------------------------------------------------

class Fixed:
    """Predicts the class stored in column 0 of each input (logits: one-hot, plus ``bias`` on class 0).
    Records, per predict call, the batch size, whether autograd was on and whether the model was training."""

    def __init__(self, n_classes=4, bias=0.0):
        self.model = nn.Linear(1, 1)
        self.n, self.bias, self.calls = n_classes, bias, []

    def predict(self, x, t=None):
        self.calls.append((len(x), torch.is_grad_enabled(), self.model.training))
        logits = torch.nn.functional.one_hot(x[:, 0].long(), self.n).float()
        logits[:, 0] += self.bias
        return logits


def exp(pred, y, task_id=0):
    return SimpleNamespace(test_x=torch.tensor(pred, dtype=torch.float32).reshape(-1, 1),
                           test_y=torch.tensor(y, dtype=torch.long), task_id=task_id)


def run_eval(s, exps, bs=3, task_aware=False, masks=None):
    return evaluate(s, exps, lambda x: x, bs, task_aware, torch.device("cpu"), masks)


def test_evaluate_is_correct_over_each_experiences_own_size():
    # 7 samples in batches of 3 (3, 3, 1): 5 right; a one-sample experience right (1.0, not 1/2);
    # an experience without test data gives 0.0 (no division by zero)
    s = Fixed()
    a = exp([1, 1, 2, 3, 0, 0, 1], [1, 1, 2, 0, 0, 2, 1])
    b = exp([3], [3])
    c = exp([], [])
    assert run_eval(s, [a, b, c]) == [pytest.approx(5 / 7), 1.0, 0.0]
    assert [n for n, _, _ in s.calls] == [3, 3, 1, 1]  # every test sample predicted once, in eval batches
    assert run_eval(s, []) == []


def test_evaluate_masks_the_other_tasks_classes_only_when_task_aware():
    # a bias makes class 0 (task 0) win everywhere; task 1 = classes {2, 3}
    s = Fixed(bias=5.0)
    scen = SimpleNamespace(n_classes=4, experiences=[SimpleNamespace(classes=[0, 1]), SimpleNamespace(classes=[2, 3])])
    masks = class_masks(scen, torch.device("cpu"))
    assert [m.tolist() for m in masks] == [[True, True, False, False], [False, False, True, True]]
    e0, e1 = exp([0, 1], [0, 1]), exp([2, 3, 3], [2, 3, 2])
    assert run_eval(s, [e0, e1]) == [0.5, 0.0]  # class-IL: class 0 always
    assert run_eval(s, [e0, e1], task_aware=False, masks=masks) == [0.5, 0.0]  # not task-aware: no mask
    assert run_eval(s, [e0, e1], task_aware=True, masks=masks) == [0.5, pytest.approx(2 / 3)]


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_predicts_in_eval_mode_without_autograd_and_restores_the_mode(training):
    s = Fixed()
    s.model.train(training)
    run_eval(s, [exp([1, 2], [1, 2])])
    assert s.calls == [(2, False, False)]
    assert s.model.training is training


# -- checkpoint: encoding, RNG states, save / load -------------------------------------------------

def test_encode_decode_round_trip_keeps_types_dtypes_and_values():
    from cl.train.checkpoint import decode, encode

    w = torch.ones(2, requires_grad=True) * 3  # has a graph: stored detached
    arr = np.arange(6, dtype=np.uint16).reshape(2, 3).T  # non-contiguous
    obj = {"w": w, "a": arr, "f16": np.array([0.5, 1.5], dtype=np.float16), "s": np.float32(1.25),
           "i": np.int64(7), "plain": [1, 2.5, "x", True, None, b"b"], "t": (1, (2, 3)), "set": {4},
           "nested": {"k": [np.int8(-3)]}}
    enc = encode(obj)
    assert not enc["w"].requires_grad and enc["w"].tolist() == [3.0, 3.0]
    dec = decode(enc)
    assert isinstance(dec["a"], np.ndarray) and dec["a"].dtype == np.uint16 and dec["a"].tolist() == arr.tolist()
    assert dec["f16"].dtype == np.float16 and dec["f16"].tolist() == [0.5, 1.5]
    assert type(dec["s"]) is np.float32 and dec["s"] == np.float32(1.25)
    assert type(dec["i"]) is np.int64 and dec["i"] == 7
    assert type(dec["nested"]["k"][0]) is np.int8 and dec["nested"]["k"][0] == -3
    assert dec["plain"] == [1, 2.5, "x", True, None, b"b"] and type(dec["plain"]) is list
    assert dec["t"] == (1, (2, 3)) and type(dec["t"]) is tuple and type(dec["t"][1]) is tuple
    assert dec["set"] == {4} and type(dec["set"]) is set
    # a stored copy: changing the array afterwards does not change what was encoded
    arr[0, 0] = 99
    assert decode(enc)["a"][0, 0] == 0
    # a user's dict that only looks like a tag (more keys) is left a dict
    look = {"__ndarray__": "x", "dtype": "y", "z": 1}
    assert decode(encode(look)) == look
    look2 = {"__npscalar__": "x", "value": 1, "z": 2}
    assert decode(encode(look2)) == look2


def test_encode_refuses_objects_and_names_where_they_are():
    from cl.train.checkpoint import NotPlainState, encode

    with pytest.raises(NotPlainState, match=r"state\.a\[1\]: .*Linear is not a tensor"):
        encode({"a": [1, nn.Linear(1, 1)]}, "state")
    with pytest.raises(NotPlainState, match=r"state\.g: torch\._C\.Generator|state\.g: torch\.Generator"):
        encode({"g": torch.Generator()}, "state")
    with pytest.raises(NotPlainState, match="numpy array of Python objects"):
        encode({"o": np.array([object()], dtype=object)}, "state")


def _draws():
    import random

    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


class Holder:
    """A strategy stand-in: its state_dict is a model's and one extra value."""

    def __init__(self, seed):
        torch.manual_seed(seed)
        self.model = nn.Linear(2, 2)
        self.extra = seed

    def state_dict(self):
        return {"model": self.model.state_dict(), "extra": self.extra, "arr": np.array([self.extra], dtype=np.int32)}

    def load_state_dict(self, sd):
        self.model.load_state_dict(sd["model"])
        self.extra = sd["extra"]
        self.arr = sd["arr"]


def test_checkpoint_restores_strategy_rngs_and_state_of_the_same_run_only(tmp_path):
    import random

    from cl.train import checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    a = Holder(5)
    state = {"R": [[0.5, None]], "next_exp": 1, "bits": np.array([1, 0, 1], dtype=np.uint8)}
    checkpoint.save(path, "run-a", {"seed": 0}, a, state)
    expected = _draws()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left
    assert path.stat().st_mode & 0o077 == 0  # private: a checkpoint holds the whole config and model

    b = Holder(6)
    w_b = b.model.weight.clone()
    for other in ("run-b", "run-0", "run-"):  # another run's checkpoint (ids sorting after and before this one)
        assert checkpoint.load(path, other, b, torch.device("cpu")) is None
    assert torch.equal(b.model.weight, w_b) and b.extra == 6

    torch.manual_seed(10), np.random.seed(11), random.seed(12)
    got = checkpoint.load(path, "run-a", b, torch.device("cpu"))
    assert got["R"] == [[0.5, None]] and got["next_exp"] == 1
    assert got["bits"].dtype == np.uint8 and got["bits"].tolist() == [1, 0, 1]
    assert torch.equal(b.model.weight, a.model.weight) and torch.equal(b.model.bias, a.model.bias)
    assert b.extra == 5 and b.arr.dtype == np.int32 and b.arr.tolist() == [5]
    assert _draws() == expected  # every RNG continues where it was saved


def test_checkpoint_without_run_id_is_matched_by_its_config(tmp_path):
    from cl.core.config import run_id
    from cl.train import checkpoint

    cfg = {"strategy": {"name": "s"}, "scenario": {"name": "c"}, "seed": 3}
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, "", cfg, Holder(1), {"x": 1})  # an older checkpoint: no run id stored
    assert checkpoint.load(path, run_id(cfg), Holder(2), torch.device("cpu")) == {"x": 1}
    assert checkpoint.load(path, run_id({**cfg, "seed": 4}), Holder(2), torch.device("cpu")) is None


def test_unreadable_checkpoint_is_moved_aside_and_ignored(tmp_path, capsys):
    from cl.train import checkpoint

    for i, body in enumerate([b"not a checkpoint", None]):
        d = tmp_path / str(i)
        d.mkdir()
        path = d / "checkpoint.pt"
        if body is None:
            torch.save([1, 2], path)  # readable, but not a checkpoint (a list)
        else:
            path.write_bytes(body)
        h = Holder(3)
        assert checkpoint.load(path, "r", h, torch.device("cpu")) is None
        assert not path.exists() and len(list(d.glob("checkpoint.pt.bad-*"))) == 1
        assert h.extra == 3
    assert "ignoring checkpoint" in capsys.readouterr().err


# -- the offline loop ----------------------------------------------------------------------------

class Recorder:
    """A strategy stand-in for the loops: records every train_step batch (inputs, labels, task id)."""

    def __init__(self, loss=0.0, bad_at=None):
        self.batches, self.loss, self.bad_at = [], loss, bad_at

    def train_data(self, exp):
        return exp.train_x, exp.train_y

    def train_step(self, x, y, t=None):
        self.batches.append((x.clone(), y.clone(), t))
        bad = self.bad_at is not None and len(self.batches) - 1 == self.bad_at
        return torch.tensor(float("inf") if bad else self.loss)


class Events:
    def __init__(self):
        self.starts, self.steps = [], 0

    def experience_start(self, i, n, steps):
        self.starts.append((i, n, steps))

    def step(self, *a, **k):
        self.steps += 1


def offline_ctx(strategy, bs, epochs, n_exps=3):
    from cl.core.config import ProtocolConfig
    from cl.train.loop import RunContext

    return RunContext(strategy, [None] * n_exps, ProtocolConfig(name="offline", batch_size=bs, epochs=epochs),
                      lambda x: x * 10, torch.device("cpu"), None, Events())


@pytest.mark.parametrize("n", [7, 6, 1])
def test_offline_loop_passes_each_epoch_over_every_sample_once_in_batches(n):
    from cl.train.offline import OfflineLoop
    from cl.train.state import RunState

    s = Recorder()
    ctx = offline_ctx(s, bs=3, epochs=2)
    e = SimpleNamespace(train_x=torch.arange(float(n)).reshape(n, 1), train_y=torch.arange(n) + 100, task_id=2)
    torch.manual_seed(0)
    assert OfflineLoop(ctx, RunState()).run_experience(1, e) == 2 * n  # samples processed: n x 2 epochs
    sizes = {7: [3, 3, 1], 6: [3, 3], 1: [1]}[n]  # no empty last batch
    assert ctx.events.starts == [(1, 3, 2 * len(sizes))] and ctx.events.steps == 2 * len(sizes)
    assert [len(y) for _, y, _ in s.batches] == sizes * 2
    assert all(t == 2 for _, _, t in s.batches)
    k = len(sizes)
    for ep in (s.batches[:k], s.batches[k:]):
        xs = torch.cat([x for x, _, _ in ep]).flatten()
        ys = torch.cat([y for _, y, _ in ep])
        assert sorted(xs.tolist()) == [10.0 * i for i in range(n)]  # preprocessed, each sample once
        assert torch.equal(ys, (xs / 10).long() + 100)  # labels stay with their inputs
    if n == 7:
        order = lambda ep: torch.cat([y for _, y, _ in ep]).tolist()  # noqa: E731
        assert order(s.batches[:k]) != order(s.batches[k:])  # each epoch reshuffled (seed 0)


@pytest.mark.parametrize("step", [0, 4])
def test_offline_loop_stops_on_a_non_finite_loss_in_any_step_of_an_epoch(step):
    from cl.train.loop import NonFiniteLoss
    from cl.train.offline import OfflineLoop
    from cl.train.state import RunState

    s = Recorder(bad_at=step)  # step 4 = the second step of epoch 1 (3 steps an epoch)
    e = SimpleNamespace(train_x=torch.zeros(7, 1), train_y=torch.zeros(7, dtype=torch.long), task_id=0)
    with pytest.raises(NonFiniteLoss, match=f"experience 1, epoch {step // 3}"):
        OfflineLoop(offline_ctx(s, 3, 3), RunState()).run_experience(1, e)
    assert len(s.batches) == 3 * (step // 3 + 1)  # the epoch is finished, the next one not started


# -- the online loop's host record of per-sample correctness -----------------------------------------

def test_online_history_grows_past_its_first_size_and_counts_exactly():
    from cl.train.online import _History

    h = _History()
    bits = (np.arange(3000) % 3 == 1).astype(np.uint8)  # right on samples 1, 4, 7, ...: 1000 of 3000
    h.extend(bits[:1000])
    h.extend(bits[1000:1024])  # exactly fills the first 1024 slots
    h.extend(bits[1024:1025])  # one more: grows
    h.extend(bits[1025:])  # more than doubling is needed
    assert h.n == 3000 and h.total == 1000
    assert np.array_equal(h.a[:3000], bits)
    assert h.count_upto(3) == 1 and h.count_upto(3) == 1 and h.count_upto(10) == 3  # samples 1, 4, 7
    assert h.count_upto(3000) == 1000
    assert h.count_upto(4) == 1  # a smaller m than the last one starts over from sample 0 (only 1 is right)
    h.extend(np.array([], dtype=np.uint8))
    assert h.n == 3000 and h.total == 1000


def test_online_history_window_is_the_mean_of_the_last_w_samples_up_to_m():
    from cl.train.online import _History

    h = _History()
    h.extend(np.array([1, 1, 0, 0, 1, 0], dtype=np.uint8))
    assert h.window(6, 4) == 0.25  # samples 2..5: 0, 0, 1, 0
    assert h.window(4, 2) == 0.0 and h.window(2, 2) == 1.0 and h.window(3, 2) == 0.5
    assert h.window(3, 10) == pytest.approx(2 / 3)  # fewer than w samples so far: all of them
    assert h.window(6, 1) == 0.0 and h.window(5, 1) == 1.0
    assert h.window(0, 5) == 0.0  # nothing seen yet


def test_online_summary_from_known_counts_and_phase_times():
    from cl.core.config import ProtocolConfig
    from cl.train.online import OnlineLoop, _History
    from cl.train.state import OnlineState

    loop = object.__new__(OnlineLoop)  # only what summary() reads
    loop.st = st = OnlineState()
    loop.c = c = st.cursor
    loop.p = ProtocolConfig(name="online", window=2, realtime=True)
    loop.hist = h = _History()
    h.extend(np.array([1, 0, 1, 1], dtype=np.uint8))
    st.times.update(predict=1.0, train=2.0, near_future=0.5, anytime=0.5)
    st.trained_batches, c.batches = 4, 9
    c.nf_correct, c.nf_count = 3, 4
    st.anytime = [(10, 0.5), (30, 0.25)]
    st.anytime_forgetting_curve = [(10, 0.0), (30, 0.125)]
    out = loop.summary()
    assert out["online_acc"] == 0.75 and out["online_acc_window"] == 1.0
    assert out["near_future_acc"] == 0.75
    assert out["anytime_acc_last"] == 0.25 and out["anytime_forgetting"] == 0.125
    assert out["anytime_auc"] == pytest.approx((0.5 * 10 + 0.25 * 20) / 30)
    assert (out["predict_time_s"], out["train_step_time_s"], out["near_future_time_s"], out["anytime_eval_time_s"]) \
        == (1.0, 2.0, 0.5, 0.5)
    assert out["train_step_ms"] == 500.0 and out["predict_ms"] == pytest.approx(1000 / 9)
    assert out["online_eval_time_s"] == 2.0 and out["eval_cost_fraction"] == 0.5
    assert out["realtime_k"] == 2.25  # 9 stream batches, 4 trained
    loop.p = ProtocolConfig(name="online", window=2)
    st.anytime, c.nf_count, st.trained_batches, c.batches = [], 0, 0, 0
    out = loop.summary()
    assert "realtime_k" not in out and "near_future_acc" not in out and "anytime_auc" not in out
    assert out["train_step_ms"] == 2000.0 and out["predict_ms"] == 1000.0  # no division by zero
    loop.hist = h = _History()
    h.extend(np.array([1], dtype=np.uint8))
    st.times.clear()
    out = loop.summary()
    assert out["online_acc"] == 1.0  # one sample, right
    assert out["anytime_eval_time_s"] == out["predict_time_s"] == out["eval_cost_fraction"] == 0.0  # nothing timed
