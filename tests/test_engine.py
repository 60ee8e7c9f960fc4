import json
from dataclasses import dataclass

import pytest
import torch

from cl.core.config import resolve
from cl.train.engine import Run
from cl.core.registry import strategies
from cl.core.strategy import Strategy, StrategyConfig, register
from conftest import tiny


def run(raw, tmp_path, name="r"):
    return Run(resolve(raw), progress=False, out_dir=tmp_path / name).execute()


@register("test-memoriser", StrategyConfig)
class Memoriser(Strategy):
    """Predicts the stored label of inputs it has trained on, and an impossible class otherwise."""

    def setup(self):
        self.keys, self.labels = [], []

    def train_step(self, x, y, t=None):
        self.keys.append(x.clone())
        self.labels.append(y.clone())
        return torch.zeros(())

    def predict(self, x, t=None):
        logits = torch.zeros(len(x), self.info.n_classes + 1)
        logits[:, -1] = 1.0  # "unknown": never a real label
        if self.keys:
            keys, labels = torch.cat(self.keys), torch.cat(self.labels)
            match = (x[:, None, :] == keys[None]).all(-1)
            hit = match.any(1)
            logits[hit, labels[match.float().argmax(1)][hit]] = 2.0
        return logits


def test_online_predicts_each_batch_before_learning_it(tmp_path):
    res = run(tiny("test-memoriser", protocol={"name": "online", "batch_size": 10}, backbone="identity"), tmp_path)
    assert res["status"] == "finished"
    assert res["metrics"]["online_acc"] == 0.0  # a memoriser scores 0 if it never saw the batch first
    # ...but it has memorised every training sample, so accuracy on training data after learning is 1
    assert res["R"][0][0] == 0.0  # test data are new samples


def test_same_seed_same_R_other_seed_differs(tmp_path):
    raw = tiny("er", protocol={"name": "online"})
    a, b = run(raw, tmp_path, "a"), run(raw, tmp_path, "b")
    assert a["R"] == b["R"]
    c = run({**raw, "seed": 1}, tmp_path, "c")
    assert c["R"] != a["R"]


def test_result_file_contents(tmp_path):
    res = run(tiny("er", protocol={"name": "offline", "epochs": 2}), tmp_path)
    data = json.loads((tmp_path / "r" / "result.json").read_text())
    assert data["status"] == "finished" and data["run_id"] == res["run_id"]
    assert len(data["R"]) == 5 and all(len(r) == 5 for r in data["R"])
    for key in ("avg_acc", "avg_inc_acc", "forgetting", "bwt", "wall_time", "train_samples_per_s",
                "peak_memory_mb", "trainable_params"):
        assert key in data["metrics"], key
    assert data["config"]["strategy"]["buffer_size"] == 500
    assert data["versions"]["torch"] == torch.__version__
    import re
    import subprocess
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["date"])
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:  # a git checkout: the result names the commit of the code that ran
        assert data["commit"].split("+")[0] == head
    assert data["host"] and data["cpu"]
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_er_beats_finetune_and_joint_beats_both(tmp_path):
    proto = {"name": "offline", "epochs": 3}
    ft = run(tiny("finetune", protocol=proto), tmp_path, "ft")["metrics"]
    er = run(tiny("er", protocol=proto), tmp_path, "er")["metrics"]
    jt = run(tiny("joint", protocol=proto), tmp_path, "jt")["metrics"]
    assert ft["forgetting"] > 0.5  # catastrophic forgetting on class-incremental Gaussians
    assert er["avg_acc"] > ft["avg_acc"] + 0.2
    assert jt["avg_acc"] >= er["avg_acc"] - 0.02


def test_er_replays_only_after_the_first_step():
    from strategies.er import ER

    seen = []
    orig = ER.loss

    class Spy(ER):
        def loss(self, x, y, t=None):
            seen.append(len(self.buffer))
            return orig(self, x, y, t)

    cfg = resolve(tiny("er"))
    from cl.train.engine import build_model
    from cl.core.registry import scenarios
    from cl.core.config import section_config
    from cl.core.strategy import RunInfo

    sc = scenarios.get("gaussian").obj(section_config(cfg, "scenario"), 0)
    info = RunInfo(n_classes=10, input_shape=sc.input_shape, device=torch.device("cpu"), seed=0)
    s = Spy(section_config(cfg, "strategy"), build_model(Spy, section_config(cfg, "strategy"), cfg, sc, "cpu"), info)
    s.setup()
    x, y = sc[0].train_x[:10], sc[0].train_y[:10]
    s.train_step(x, y)
    s.train_step(x, y)
    assert seen == [0, 10]  # the buffer was empty during the first step: updated after it


def test_task_incremental_masks_to_the_task(tmp_path):
    ci = run(tiny("finetune"), tmp_path, "ci")["metrics"]["avg_acc"]
    ti = run(tiny("finetune", scenario={"name": "gaussian", "task_labels": True}), tmp_path, "ti")["metrics"]["avg_acc"]
    assert ti > ci + 0.3


@dataclass
class NanConfig(StrategyConfig):
    nan_from: int = 2


@register("test-nan", NanConfig)
class NanAfter(Strategy):
    def before_experience(self, exp):
        self.exp = exp.index

    def loss(self, x, y, t=None):
        loss = super().loss(x, y, t)
        return loss * float("nan") if self.exp >= self.cfg.nan_from else loss


def test_non_finite_loss_stops_and_keeps_what_was_computed(tmp_path):
    res = run(tiny("test-nan"), tmp_path)
    assert res["status"] == "failed" and "non-finite loss in experience 2" in res["error"]
    assert len(res["R"]) == 2  # experiences 0 and 1 were evaluated and are kept
    failed = json.loads((tmp_path / "r" / "failed.json").read_text())
    assert len(failed["R"]) == 2
    assert not (tmp_path / "r" / "result.json").exists()


def test_failing_run_never_overwrites_a_finished_result(tmp_path):
    ok = run(tiny("finetune"), tmp_path)
    before = (tmp_path / "r" / "result.json").read_text()
    bad = run(tiny({"name": "test-nan", "nan_from": 0}), tmp_path)
    assert bad["status"] == "failed" and ok["status"] == "finished"
    assert (tmp_path / "r" / "result.json").read_text() == before


def test_registry_holds_the_builtins():
    assert {"finetune", "joint", "er"} <= set(strategies.names())


def test_any_strategy_can_train_on_frozen_backbone_features(tmp_path, monkeypatch):
    """strategy.frozen_backbone=true: the engine hands cached features of the frozen backbone to ER,
    whose own model is then the head on an identity backbone."""
    import strategies.er as er_mod

    monkeypatch.setenv("CL_CACHE", str(tmp_path / "cache"))
    built = []
    orig = er_mod.ER.setup

    def spy(self):
        built.append((type(self.model.backbone).__name__, self.info.input_shape))
        orig(self)

    monkeypatch.setattr(er_mod.ER, "setup", spy)
    res = run(tiny({"name": "er", "frozen_backbone": True}, backbone={"name": "mlp", "hidden": 24}), tmp_path)
    assert res["status"] == "finished"
    assert built == [("Identity", (24,))]  # features of the 24-unit frozen MLP, not the 16-d inputs
    assert list((tmp_path / "cache").rglob("*.npy"))  # computed once and stored in the feature cache


def test_er_single_forward_equals_two_passes_without_batchnorm():
    """With no BatchNorm, one forward over [incoming; replay] gives the same loss and gradients as two."""
    from cl.core.config import section_config
    from cl.train.engine import build_model
    from cl.core.registry import scenarios
    from cl.core.strategy import RunInfo
    from strategies.er import ER

    grads = []
    for single in (True, False):
        torch.manual_seed(0)
        cfg = resolve(tiny({"name": "er", "single_forward": single}))
        scfg = section_config(cfg, "strategy")
        sc = scenarios.get("gaussian").obj(section_config(cfg, "scenario"), 0)
        info = RunInfo(n_classes=10, input_shape=sc.input_shape, device=torch.device("cpu"), seed=0)
        s = ER(scfg, build_model(ER, scfg, cfg, sc, "cpu"), info)
        s.setup()
        s.buffer.add(x=sc[0].train_x[:20], y=sc[0].train_y[:20])
        s.model.observe(sc[0].train_y)
        torch.manual_seed(1)  # the same replay draw in both modes
        loss = s.loss(sc[0].train_x[20:30], sc[0].train_y[20:30])
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in s.model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-6)


def test_an_experience_with_no_training_data_is_not_a_non_finite_loss(tmp_path):
    from cl.core.strategy import Strategy, StrategyConfig, register

    @register("test-empty-train-data", StrategyConfig, override=True)
    class EmptyAfterFirst(Strategy):
        """Trains on the first experience only (as first-session methods do)."""

        def train_data(self, exp):
            x, y = exp.train_x, exp.train_y
            return (x, y) if exp.task_id == 0 else (x[:0], y[:0])

    res = run(tiny("test-empty-train-data", protocol={"name": "offline", "epochs": 2}), tmp_path)
    assert res["status"] == "finished"
    assert len(res["R"]) == 5 and res["R"][4][0] is not None
