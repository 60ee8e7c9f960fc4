"""Smoke runs of every Strategies-I strategy through cl.train.engine.Run on a tiny scenario."""
import pytest

from cl.core.config import resolve
from cl.train.engine import Run
from conftest import tiny

CASES = {
    "er-ace": ({}, "mlp"),
    "uer": ({}, "mlp"),
    "uer-cos": ({"name": "uer", "infer": "cosine"}, "mlp"),
    "kalman": ({}, "identity"),
    "kalman-ft": ({"lr": 0.01}, "mlp"),
    "ncm": ({}, "identity"),
    "ncm-cos": ({"name": "ncm", "metric": "cosine", "normalize": False}, "identity"),
    "pec": ({}, "identity"),
    "center-loss": ({}, "mlp"),
    "center-loss-er": ({"name": "center-loss", "buffer_size": 100}, "mlp"),
}


@pytest.mark.parametrize("case,protocol", [(c, "online") for c in CASES]
                         + [(c, "offline") for c in ("kalman", "pec", "center-loss")])
def test_smoke_run(case, protocol, tmp_path, monkeypatch):
    monkeypatch.setenv("CL_FEATURE_CACHE", "0")
    extra, backbone = CASES[case]
    strat = {"name": case, **extra}
    raw = tiny(strat, scenario={"name": "gaussian", "n_tasks": 5, "train_per_class": 30, "test_per_class": 20},
               backbone=backbone, protocol={"name": protocol})
    res = Run(resolve(raw), progress=False, out_dir=tmp_path).execute()
    assert res["status"] == "finished", res.get("traceback") or res.get("error")
    R = res["R"]
    assert len(R) == 5 and all(len(r) == 5 for r in R)
    # better than chance (10 classes) on a well-separated gaussian stream
    assert res["metrics"]["avg_acc"] > 0.15, (case, res["metrics"]["avg_acc"])
    if protocol == "online":
        assert res["metrics"]["online_acc"] > 0.15
    assert (tmp_path / "result.json").exists()
