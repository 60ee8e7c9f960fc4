"""The report on a fabricated results folder: tables, failed and missing runs, plots, CSV."""
import csv
import json
from pathlib import Path

import pytest

from cl.sweeps.report import make_report


def cfg(strategy, scenario, seed, **strat_fields):
    return {"strategy": {"name": strategy, "lr": 0.1, **strat_fields}, "scenario": {"name": scenario, "n_tasks": 2},
            "backbone": {"name": "mlp"}, "protocol": {"name": "offline", "epochs": 1}, "seed": seed,
            "wandb": "off", "group": "g", "tags": []}


def put(root: Path, rid: str, rec: dict, name="result.json"):
    (root / rid).mkdir(parents=True, exist_ok=True)
    (root / rid / name).write_text(json.dumps({"run_id": rid, **rec}))


def finished(root, rid, c, R, online=None):
    T = len(R)
    m = {"avg_acc": sum(R[-1]) / T, "forgetting": max(R[0][0] - R[-1][0], 0.0), "wall_time": 1.0}
    if online is not None:
        m["online_acc"] = online
    put(root, rid, {"status": "finished", "config": c, "R": R, "metrics": m})


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "res"
    finished(root, "er-a-s0", cfg("er", "A", 0), [[0.9, 0.0], [0.7, 0.8]])  # avg 75
    finished(root, "er-a-s1", cfg("er", "A", 1), [[0.9, 0.0], [0.5, 0.8]])  # avg 65
    finished(root, "er-b-s0", cfg("er", "B", 0), [[1.0, 0.0], [0.6, 1.0]], online=0.5)
    finished(root, "ft-a-s0", cfg("finetune", "A", 0), [[0.9, 0.0], [0.0, 0.9]])
    finished(root, "ft-a-s1", cfg("finetune", "A", 1), [[0.9, 0.0], [0.1, 0.9]])
    put(root, "ft-b-s0", {"status": "failed", "config": cfg("finetune", "B", 0), "error": "RuntimeError: boom",
                          "traceback": "Traceback...\nRuntimeError: boom"}, "failed.json")
    (root / "er-b-s1").mkdir()
    (root / "er-b-s1" / "checkpoint.pt").write_bytes(b"x")  # interrupted
    (root / "er-b-s1").joinpath("failed.json")  # nothing else
    ids = ["ft-a-s0", "ft-a-s1", "ft-b-s0", "er-a-s0", "er-a-s1", "er-b-s0", "er-b-s1", "er-c-s0"]
    (root / "sweep.json").write_text(json.dumps({"name": "fab", "runs": [{"id": i} for i in ids]}))
    finished(root, "old-run", cfg("joint", "A", 0), [[1.0]])  # not in the manifest
    return root


def test_report_tables_and_files(folder):
    rep = make_report(folder, wandb=False)
    md = Path(rep["path"]).read_text()
    assert rep["rows"] == ["finetune", "er"] and rep["cols"] == ["A", "B"]  # sweep order
    # er on A: 75 and 65 -> 70.0 ± 7.1 (sample std); er on B: one seed of two
    assert "| er | 70.0 ± 7.1 | 80.0 (n=1) |" in md
    assert "| finetune | 47.5 ± 3.5 | failed |" in md
    assert "Forgetting" in md and "Online accuracy" in md
    assert "ft-b-s0" in md and "RuntimeError: boom" in md
    assert "er-b-s1" in md and "interrupted" in md
    assert "er-c-s0" in rep["missing"] and "Runs not started" in md
    assert "old-run" not in md  # outside the manifest
    out = Path(rep["path"]).parent
    assert (out / "curves_A.png").stat().st_size > 1000 and (out / "heatmap_er__A.png").exists()
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert len(rows) == 7 and {r["status"] for r in rows} == {"finished", "failed", "partial"}
    er0 = next(r for r in rows if r["run_id"] == "er-a-s0")
    assert float(er0["avg_acc"]) == pytest.approx(0.75) and er0["strategy.lr"] == "0.1"


def test_report_row_labels_show_differing_hyperparameters(tmp_path):
    root = tmp_path / "r"
    finished(root, "a", cfg("er", "A", 0, buffer_size=10), [[1.0]])
    finished(root, "b", cfg("er", "A", 0, buffer_size=20), [[0.5]])
    finished(root, "c", cfg("finetune", "A", 0), [[0.2]])
    rep = make_report(root, wandb=False, plots_on=False)
    assert set(rep["rows"]) == {"er (buffer_size=10)", "er (buffer_size=20)", "finetune"}
    assert "| er (buffer_size=20) | 50.0 |" in rep["markdown"]


def test_report_cli_and_empty_folder(tmp_path, capsys):
    from cl.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--no-wandb"]) == 2  # a clear error, not an empty table
    assert "no results in" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_report_tables_logged_to_wandb_offline(folder, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    rep = make_report(folder, wandb=True, plots_on=False)
    assert rep["wandb"] is True
    runs = list((folder / "report" / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
