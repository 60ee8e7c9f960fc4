"""Run-level behaviour whose bugs change numbers without an error (issue 19): R's upper triangle and FWT,
online accuracy with an unequal last batch, the near-future schedule, non-finite losses under both
protocols, evaluation in eval mode (BatchNorm + dropout), and resume with stateful optimisers.

Each test uses a small strategy defined here whose predictions are known in advance, so the expected
numbers are exact.  Entry points: ``resolve`` + ``Run(...).execute()`` and the strategy protocol."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from cl.core.config import resolve, section_config
from cl.core.registry import scenarios
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
from cl.train.engine import Run
from strategies.er import ER, ERConfig
from conftest import tiny

ORDERED = {"name": "gaussian", "class_order": list(range(10)), "train_per_class": 20, "test_per_class": 10}
INSTANCES: list = []  # the strategy objects of the runs, to look at their final state


def execute(raw, path):
    return Run(resolve(raw), progress=False, out_dir=path).execute()


def scenario_of(raw):
    cfg = resolve(raw)
    return scenarios.get(cfg["scenario"]["name"]).obj(section_config(cfg, "scenario"), cfg["seed"])


# -- R's upper triangle and FWT ------------------------------------------------------------------

@dataclass
class LaterClassConfig(StrategyConfig):
    cls: int = 9


@register("test-mut-later-class", LaterClassConfig)
class LaterClass(Strategy):
    """Predicts no real class before its first step, then always class ``cls`` (a class of the last task)."""

    def setup(self):
        self.trained = False

    def train_step(self, x, y, t=None):
        self.trained = True
        return torch.zeros(())

    def predict(self, x, t=None):
        logits = torch.zeros(len(x), self.info.n_classes + 1)
        logits[:, self.cfg.cls if self.trained else self.info.n_classes] = 1.0
        return logits


@pytest.mark.parametrize("protocol", ["offline", "online"])
def test_upper_triangle_of_R_and_fwt_have_known_values(tmp_path, protocol):
    # classes in order: task 4 = {8, 9}; predicting 9 scores 0.5 on task 4 (10 of its 20 test samples)
    # from the first step on, i.e. in every row, also above the diagonal; the random-init model scores 0
    res = execute(tiny("test-mut-later-class", scenario=ORDERED, protocol={"name": protocol, "fwt": True},
                       backbone="identity"), tmp_path)
    assert res["status"] == "finished"
    assert res["R"] == [[0.0, 0.0, 0.0, 0.0, 0.5]] * 5
    assert res["random_init"] == [0.0] * 5
    m = res["metrics"]
    assert m["fwt"] == pytest.approx(0.5 / 4)  # only R[3,4] - b_4 is non-zero
    assert m["avg_acc"] == pytest.approx(0.1) and m["bwt"] == 0.0 and m["forgetting"] == 0.0
    assert m["avg_inc_acc"] == pytest.approx(0.1 / 5)  # only the last row sees task 4


@pytest.mark.parametrize("protocol", ["offline", "online"])
def test_every_strategy_reports_prediction_collapse_of_the_final_evaluation(tmp_path, protocol):
    # the engine counts the final evaluation's predictions for any strategy (issue 13, item 4): this one
    # answers class 9 for all 100 test samples of the 5 seen tasks
    with pytest.warns(RuntimeWarning, match="collapsed"):
        res = execute(tiny("test-mut-later-class", scenario=ORDERED, protocol={"name": protocol, "fwt": True},
                           backbone="identity"), tmp_path)
    m = res["metrics"]
    assert m["pred_top_class_share"] == 1.0 and m["pred_classes_used"] == 1 and m["prediction_collapsed"] is True
    # a model that spreads its answers is not collapsed; the counts cover the seen experiences only
    res = execute(tiny("finetune", scenario=ORDERED, protocol={"name": protocol}), tmp_path / "ft")
    m = res["metrics"]
    assert m["prediction_collapsed"] is False and 2 <= m["pred_classes_used"] <= 10
    assert m["pred_top_class_share"] < 0.8


# -- online accuracy and the near-future schedule -------------------------------------------------

@register("test-mut-first-look", StrategyConfig)
class FirstLook(Strategy):
    """Knows the label of every training sample, but is right only the first time it is asked about one.
    Records every predict and train call of the stream (evaluations between experiences are left out)."""

    def setup(self):
        self.labels, self.asked, self.log, self.in_stream = {}, set(), [], False
        INSTANCES.append(self)

    @staticmethod
    def key(row):
        return tuple(row.tolist())

    def before_experience(self, exp):
        self.labels.update({self.key(r): int(c) for r, c in zip(exp.train_x, exp.train_y)})
        self.in_stream = True

    def after_experience(self, exp):
        self.in_stream = False

    def train_step(self, x, y, t=None):
        self.log.append(("train", [self.key(r) for r in x]))
        return torch.zeros(())

    def predict(self, x, t=None):
        keys = [self.key(r) for r in x]
        if self.in_stream:
            self.log.append(("predict", keys))
        logits = torch.zeros(len(x), self.info.n_classes + 1)
        for i, k in enumerate(keys):
            logits[i, self.labels[k] if self.right(k) else self.info.n_classes] = 1.0
            self.asked.add(k)
        return logits

    def right(self, k) -> bool:
        return k in self.labels and k not in self.asked


@register("test-mut-odd", StrategyConfig)
class OddOnly(FirstLook):
    """Right on the training samples of odd classes (every time), wrong on everything else."""

    def right(self, k) -> bool:
        return k in self.labels and self.labels[k] % 2 == 1


ONLINE_SCEN = {"name": "gaussian", "train_per_class": 21, "test_per_class": 5}  # 42 samples a task: 10,10,10,10,2


def test_online_accuracy_is_correct_over_total_with_an_unequal_last_batch(tmp_path):
    """Half the stream (the odd classes) is predicted right, so online accuracy is exactly 0.5 whatever the
    order; in the builder's order (no shuffling) the per-batch accuracies have a mean far from 0.5."""
    INSTANCES.clear()
    res = execute(tiny("test-mut-odd", scenario={**ONLINE_SCEN, "class_order": list(range(10))},
                       protocol={"name": "online", "batch_size": 10, "shuffle_within_experience": False},
                       backbone="identity"), tmp_path)
    assert res["status"] == "finished"
    assert res["metrics"]["online_acc"] == 0.5
    s = INSTANCES[-1]
    batches = [keys for kind, keys in s.log if kind == "predict"]
    assert sorted({len(b) for b in batches}) == [2, 10]
    per_batch = [sum(s.labels[k] % 2 for k in b) / len(b) for b in batches]
    assert abs(sum(per_batch) / len(per_batch) - 0.5) > 0.01  # the wrong formula would give another number


def test_near_future_batch_is_the_one_learned_shift_steps_later(tmp_path):
    """Shift 2, batches of 10 over 42 samples (last batch 2): at step s the model predicts batch s, then
    batch s + 2 (while s + 2 < 5), then learns batch s.  FirstLook is right on a sample only the first time,
    so the online predictions of batches 0-1 are right (20 of 42 samples per task), those of batches 2-4 are
    wrong (already asked as near-future targets), and every near-future prediction is right."""
    INSTANCES.clear()
    res = execute(tiny("test-mut-first-look", scenario=ONLINE_SCEN,
                       protocol={"name": "online", "batch_size": 10, "near_future_shift": 2}, backbone="identity"),
                  tmp_path)
    assert res["status"] == "finished"
    m = res["metrics"]
    assert m["online_acc"] == pytest.approx(20 / 42)  # per batch: 1, 1, 0, 0, 0 -> not their mean 0.4
    assert m["near_future_acc"] == 1.0
    assert res["online"]["near_future_curve"][0] == (42, 1.0)
    log = INSTANCES[-1].log
    # the calls of the first experience: predict, near-future predict, train, per step
    first = log[:13]
    trains = [keys for kind, keys in first if kind == "train"]
    assert [len(b) for b in trains] == [10, 10, 10, 10, 2]
    expected = []
    for s in range(5):
        expected.append(("predict", trains[s]))
        if s + 2 < 5:
            expected.append(("predict", trains[s + 2]))
        expected.append(("train", trains[s]))
    assert first == expected


# -- non-finite losses -------------------------------------------------------------------------------

@dataclass
class NonFiniteConfig(StrategyConfig):
    value: str = "nan"  # the loss returned from experience ``start`` on: nan | inf | -inf
    start: int = 1


@register("test-mut-non-finite", NonFiniteConfig)
class NonFinite(Strategy):
    def before_experience(self, exp):
        self.exp = exp.index

    def train_step(self, x, y, t=None):
        loss = super().train_step(x, y, t)
        return torch.full((), float(self.cfg.value)) if self.exp >= self.cfg.start else loss


@pytest.mark.parametrize("protocol", ["offline", "online"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_loss_fails_the_run_under_both_protocols(tmp_path, protocol, value):
    res = execute(tiny({"name": "test-mut-non-finite", "value": value}, protocol=protocol,
                       scenario={"name": "gaussian", "train_per_class": 20, "test_per_class": 5}), tmp_path)
    assert res["status"] == "failed"
    assert "non-finite loss in experience 1" in res["error"]
    assert len(res["R"]) == 1  # experience 0 was evaluated and is kept
    assert (tmp_path / "failed.json").exists() and not (tmp_path / "result.json").exists()


# -- evaluation in eval mode -------------------------------------------------------------------------

@register("test-mut-bn-dropout", StrategyConfig)
class BNDropout(Strategy):
    """A model with BatchNorm and heavy dropout: its predictions depend on the mode it runs in."""

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        d = scenario.input_shape[0]
        body = nn.Sequential(nn.Linear(d, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5))
        body.out_dim = 32
        return Model(body, IncrementalLinear(32, scenario.n_classes))

    def setup(self):
        self.modes = []
        INSTANCES.append(self)

    def predict(self, x, t=None):
        self.modes.append(self.model.training)
        return self.model(x)


@pytest.mark.parametrize("protocol", ["offline", "online"])
def test_evaluation_runs_the_model_in_eval_mode(tmp_path, protocol):
    INSTANCES.clear()
    raw = tiny("test-mut-bn-dropout", protocol=protocol, scenario={"name": "gaussian", "train_per_class": 30})
    res = execute(raw, tmp_path)
    assert res["status"] == "finished"
    s = INSTANCES[-1]
    assert s.modes and not any(s.modes)  # every prediction ran in eval mode
    assert s.model.training  # ...and training mode is back afterwards
    # the last row of R is the eval-mode accuracy of the final model (running BN statistics, no dropout)
    sc = scenario_of(raw)
    s.model.eval()
    with torch.no_grad():
        acc = [int((s.model(e.test_x).argmax(1) == e.test_y).sum()) / len(e.test_y) for e in sc.experiences]
    assert res["R"][-1] == acc
    assert res["R"][-1][-1] > 0.5  # a trained model, not chance: the comparison means something


# -- resume with stateful optimisers -----------------------------------------------------------------

@register("test-mut-er-cut", ERConfig)
class ERCut(ER):
    """ER that is interrupted (KeyboardInterrupt) when experience ``cut_at`` starts, after the checkpoint."""

    cut_at = None

    def setup(self):
        super().setup()
        INSTANCES.append(self)

    def before_experience(self, exp):
        if type(self).cut_at == exp.index:
            raise KeyboardInterrupt
        super().before_experience(exp)


def _tensors(obj, prefix=""):
    """Flatten nested dicts / lists of a state dict into {path: tensor-or-value}."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def assert_same_state(a: dict, b: dict):
    fa, fb = _tensors(a), _tensors(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


@pytest.mark.parametrize("opt", [{"optimizer": "adam", "lr": 0.01}, {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}],
                         ids=["adam", "sgd-momentum"])
@pytest.mark.parametrize("protocol", [{"name": "offline", "epochs": 2}, {"name": "online"}], ids=["offline", "online"])
def test_resume_with_a_stateful_optimiser_equals_the_uninterrupted_run(tmp_path, opt, protocol):
    raw = tiny({"name": "test-mut-er-cut", "buffer_size": 50, **opt}, protocol=protocol,
               scenario={"name": "gaussian", "train_per_class": 30, "test_per_class": 10})
    INSTANCES.clear()
    full = execute(raw, tmp_path / "full")
    ref = INSTANCES[-1]
    ERCut.cut_at = 3
    try:
        part = execute(raw, tmp_path / "cut")
    finally:
        ERCut.cut_at = None
    assert part["status"] == "interrupted" and len(part["R"]) == 3
    res = execute(raw, tmp_path / "cut")
    assert res["status"] == "finished" and res["resumed"]
    assert res["R"] == full["R"]
    got = INSTANCES[-1]
    assert_same_state(got.model.state_dict(), ref.model.state_dict())
    assert ref.optimizer.state_dict()["state"]  # the optimiser has state to lose
    assert_same_state(got.optimizer.state_dict(), ref.optimizer.state_dict())
    assert_same_state(got.buffer.state_dict(), ref.buffer.state_dict())
