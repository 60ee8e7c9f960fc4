"""The run lifecycle (cl/train): the declared strategy contract, typed run state, guarded loggers, the
real-time reference step built from core pieces, and the layering of cl/ (no import of strategies/)."""
import io
import re
from pathlib import Path

import pytest
import torch

from cl.core.config import resolve
from cl.core.strategy import Strategy
from cl.train.engine import Run
from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]


def test_graph_safe_is_not_inherited_by_a_subclass_that_changes_the_step():
    from strategies.er import ER
    from strategies.er_ace import ERACE
    from strategies.finetune import Finetune

    class Declared(ER):
        graph_safe = True

        def loss(self, x, y, t=None):
            return super().loss(x, y, t)

    class Changed(ER):
        def after_step(self, x, y, t=None):
            pass

    class Untouched(ER):
        def setup(self):
            super().setup()

    assert Strategy.graph_safe and Finetune.graph_safe and ER.graph_safe
    assert not ERACE.graph_safe and not Changed.graph_safe  # they change ER's step without saying so
    assert Declared.graph_safe and Untouched.graph_safe


def test_declared_hooks_have_defaults(tmp_path):
    from cl.models.backbones import build_backbone
    from cl.models.model import Model

    res = Run(resolve(tiny("finetune")), progress=False, out_dir=tmp_path).execute()
    assert res["status"] == "finished"
    sc = type("S", (), {"n_classes": 4})()
    m = Strategy.build_model(Strategy.Config(), build_backbone("identity", None, (3,)), sc)
    assert isinstance(m, Model)
    s = Strategy.__new__(Strategy)
    s.augment = None
    x = torch.ones(2, 3)
    assert s.augmented(x) is x and s.extra_metrics() == {}
    s.augment = lambda v: v * 2
    assert torch.equal(s.augmented(x), 2 * x)


def test_cl_never_imports_strategies_and_engine_and_loops_do_not_cycle():
    pat = re.compile(r"^\s*(from strategies[. ]|import strategies)", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "cl").rglob("*.py") if pat.search(p.read_text())]
    assert offenders == []
    for mod in ("online", "offline", "loop", "state", "realtime"):
        src = (ROOT / "cl" / "train" / f"{mod}.py").read_text()
        assert not re.search(r"^\s*(from cl\.train\.engine|import cl\.train\.engine|from cl\.train import engine)",
                             src, re.M), mod


def test_er_reference_step_does_the_work_of_an_er_step():
    """The reference forward sees the batch alone while the buffer is empty, then [batch; equal replay];
    its learning rate is 0, so the timed model never changes."""
    from cl.models.model import Model
    from cl.models.heads import IncrementalLinear
    from cl.train.realtime import reference_step

    sizes = []
    model = Model(torch.nn.Linear(4, 4), IncrementalLinear(4, 3))
    model.backbone.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    step = reference_step("er", model, x, y, torch.device("cpu"))
    for _ in range(3):
        step()
    assert sizes == [5, 10, 10]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    sizes.clear()
    sgd = reference_step("sgd", model, x, y, torch.device("cpu"))
    sgd(), sgd()
    assert sizes == [5, 5]


def test_realtime_with_the_er_reference_runs(tmp_path):
    raw = tiny("er", protocol={"name": "online", "realtime": True})
    res = Run(resolve(raw), progress=False, out_dir=tmp_path).execute()
    m = res["metrics"]
    assert res["status"] == "finished" and m["realtime_cost"] >= 1 and m["realtime_cost_measured"] > 0


def test_a_failing_logger_never_fails_the_run(tmp_path, monkeypatch):
    import cl.train.engine as E

    class Broken:
        def __init__(self, *a, **k):
            pass

        def log(self, data, step=None):
            raise RuntimeError("logger down")

        def finish(self, result):
            raise RuntimeError("logger down")

    monkeypatch.setattr(E, "WandbLogger", Broken)
    with pytest.warns(UserWarning, match="logger Broken disabled"):
        res = Run(resolve(tiny("er")), progress=False, out_dir=tmp_path).execute()
    assert res["status"] == "finished" and (tmp_path / "result.json").exists()


def test_run_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    from cl.train.state import RunState

    raw = tiny("er", protocol={"name": "online", "eval_every": 100})
    run = Run(resolve(raw), progress=False, out_dir=tmp_path)
    res = run.execute()
    d = run.state.to_dict()
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    back = RunState.from_dict(torch.load(buf, weights_only=True))
    assert back.R == run.state.R and back.online.cursor == run.state.online.cursor
    assert [n for n, _ in back.online.correct] == [n for n, _ in run.state.online.correct]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(back.online.correct, run.state.online.correct))
    assert res["online"]["cursor"]["batches"] == back.online.cursor.batches


def test_future_experiences_are_evaluated_only_when_asked(tmp_path, monkeypatch):
    """By default row i of R evaluates experiences 0..i (None above the diagonal); eval_future or fwt
    evaluate every experience, and the evaluated entries are the same numbers either way."""
    import cl.train.engine as E

    seen = []
    real = E.evaluate
    monkeypatch.setattr(E, "evaluate", lambda s, exps, *a, **kw: seen.append(len(exps)) or real(s, exps, *a, **kw))
    base = tiny("er", protocol={"name": "offline"})
    a = Run(resolve(base), progress=False, out_dir=tmp_path / "a").execute()
    T = len(a["R"])
    assert seen == list(range(1, T + 1))
    assert all(a["R"][i][j] is None for i in range(T) for j in range(i + 1, T))
    assert all(a["R"][i][j] is not None for i in range(T) for j in range(i + 1))
    seen.clear()
    b = Run(resolve({**base, "protocol": {"name": "offline", "eval_future": True}}), progress=False,
            out_dir=tmp_path / "b").execute()
    assert seen == [T] * T and all(v is not None for r in b["R"] for v in r)
    assert [[v for v in r if v is not None] for r in a["R"]] == [r[: i + 1] for i, r in enumerate(b["R"])]
    for k in ("avg_acc", "avg_inc_acc", "forgetting", "bwt"):
        assert a["metrics"][k] == b["metrics"][k], k
    c = Run(resolve({**base, "protocol": {"name": "offline", "fwt": True}}), progress=False,
            out_dir=tmp_path / "c").execute()
    assert all(v is not None for r in c["R"] for v in r) and "fwt" in c["metrics"]


def test_encoding_time_and_cache_hit_are_reported_and_in_wall_time(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_CACHE", str(tmp_path / "cache"))
    raw = tiny({"name": "er", "frozen_backbone": True}, backbone={"name": "mlp", "hidden": 24})
    first = Run(resolve(raw), progress=False, out_dir=tmp_path / "a").execute()["metrics"]
    again = Run(resolve(raw), progress=False, out_dir=tmp_path / "b").execute()["metrics"]
    assert first["feature_cache"] == "miss" and first["features_computed"] > 0 and first["encode_time"] > 0
    assert again["feature_cache"] == "hit" and again["features_computed"] == 0
    for m in (first, again):
        assert m["setup_time"] >= m["encode_time"]
        assert m["wall_time"] >= m["setup_time"] + m["run_time"] - 1e-6
        assert m["run_time"] >= m["train_time"] + m["eval_time"] - 1e-6
    plain = Run(resolve(tiny("er")), progress=False, out_dir=tmp_path / "c").execute()["metrics"]
    assert plain["encode_time"] == 0.0 and "feature_cache" not in plain
