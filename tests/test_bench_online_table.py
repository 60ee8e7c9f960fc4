"""benchmarks/online_table.py: the issue-15 table's numbers from constructed result files (mean, sample sd,
the cost ratio against ER at the same memory), unfinished runs left out, and a missing folder refused."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import online_table  # noqa: E402


def _run(root: Path, name, m, seed, acc, sps, status="finished"):
    d = root / f"{name}-{m}-s{seed}"
    d.mkdir(parents=True)
    rec = {"run_id": d.name, "status": status, "config": {"strategy": {"name": name, "buffer_size": m}, "seed": seed},
           "R": [[acc]],
           "metrics": {"avg_acc": acc, "forgetting": 0.1, "online_acc": 0.5, "anytime_auc": 0.4,
                       "anytime_forgetting": 0.2, "train_samples_per_s": sps}}
    (d / ("result.json" if status == "finished" else "failed.json")).write_text(json.dumps(rec))


def test_rows_mean_sd_and_cost_ratio(tmp_path, capsys):
    _run(tmp_path, "er", 500, 0, 0.20, 60.0)
    _run(tmp_path, "er", 500, 1, 0.30, 40.0)
    _run(tmp_path, "mir", 500, 0, 0.40, 10.0)
    _run(tmp_path, "mir", 500, 1, 0.90, 99.0, status="failed")  # not counted
    _run(tmp_path, "mir", 200, 0, 0.35, 25.0)  # no ER at 200: no ratio
    _run(tmp_path, "lwf", None, 0, 0.15, 100.0)  # no memory: against ER at its best-seeded memory (500)
    assert online_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    er = next(x for x in out if x.startswith("| er | 500 |"))
    assert "| 0,1 | 25.0 ± 7.1 | 10.0 ± 0.0 |" in er and er.endswith("| 50 ± 14 | 1.00 |"), er
    mir = next(x for x in out if x.startswith("| mir | 500 |"))
    assert "| 0 | 40.0 |" in mir and mir.endswith("| 10 | 5.00 |"), mir  # ER's mean 50 samples/s over 10
    assert next(x for x in out if x.startswith("| mir | 200 |")).endswith("| 25 | – |")
    assert next(x for x in out if x.startswith("| lwf | – |")).endswith("| 100 | 0.50 |")
    assert online_table.main([str(tmp_path / "nope")]) == 2
    assert "no results folder" in capsys.readouterr().err
