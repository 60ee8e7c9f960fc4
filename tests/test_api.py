"""The Python API (cl/api.py): cl.fit returns a typed result; the CLI and the executors go through cl.api.run."""
import json

import pytest

import cl
from cl.core.registry import ConfigError


def test_fit_returns_typed_result_and_applies_overrides(tmp_path):
    res = cl.fit(strategy="er", scenario="gaussian", backbone={"name": "mlp", "hidden": 32}, seed=1,
                 out=str(tmp_path), buffer_size=20, lr=0.05, epochs=2)
    assert res.finished and not res.skipped and res.config["strategy"]["buffer_size"] == 20
    assert res.config["strategy"]["lr"] == 0.05 and res.config["protocol"]["epochs"] == 2
    assert res.config["seed"] == 1 and res.config["wandb"] == "off"
    T = len(res.R)
    assert T > 1 and all(len(r) == T for r in res.R)
    # the typed metrics are the result file's numbers
    on_disk = json.loads(res.paths.result.read_text())
    assert res.metrics.avg_acc == on_disk["metrics"]["avg_acc"] == pytest.approx(sum(res.R[-1]) / T)
    assert res.timings.wall_time == on_disk["metrics"]["wall_time"] > 0
    assert "trainable_params" in res.metrics.extra and res.paths.run_dir.name == res.run_id
    again = cl.fit(strategy="er", scenario="gaussian", backbone={"name": "mlp", "hidden": 32}, seed=1,
                   out=str(tmp_path), buffer_size=20, lr=0.05, epochs=2)
    assert again.skipped and again.R == res.R


def test_fit_rejects_unknown_and_ambiguous_fields(tmp_path):
    with pytest.raises(ConfigError, match="buffer_sise"):
        cl.fit(strategy="er", scenario="gaussian", out=str(tmp_path), buffer_sise=20)
    with pytest.raises(ConfigError, match="unknown strategy|strategy"):
        cl.fit(strategy="no-such-thing", scenario="gaussian", out=str(tmp_path))


def test_cli_and_executor_call_the_api(tmp_path, monkeypatch):
    import cl.api
    from cl.cli import main
    from cl.core.config import resolve
    from cl.sweeps.executors import execute_run
    from conftest import tiny

    calls = []
    real = cl.api.run
    monkeypatch.setattr(cl.api, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["run", "-s", "finetune", "-d", "gaussian", "-o", str(tmp_path), "-q", "--no-wandb",
                 "--set", "backbone.hidden=16"]) == 0
    rec = execute_run(resolve({**tiny("finetune"), "out": str(tmp_path / "x")}))
    assert rec["status"] == "finished" and len(calls) == 2
