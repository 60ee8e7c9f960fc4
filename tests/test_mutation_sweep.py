"""A failed run is not a finished one (issue 19): a rerun of the sweep retries it, ``--skip-failed`` leaves it."""
import json
import textwrap

import pytest

from cl.cli import main
from cl.sweeps.runner import run_sweep
from cl.sweeps.spec import load_sweep
from cl.sweeps.status import run_status

pytestmark = pytest.mark.usefixtures("restore_registry")

PLUGIN = '''
import os
from pathlib import Path
from cl.core.strategy import Strategy, StrategyConfig, register

@register("test-mut-fail-first", StrategyConfig)
class FailFirst(Strategy):
    """Fails its first step as long as the marker file does not exist; counts its attempts in the marker's sibling."""
    def train_step(self, x, y, t=None):
        marker = Path(os.environ["CL_TEST_FAIL_MARKER"])
        if not marker.exists():
            tries = marker.with_suffix(".tries")
            tries.write_text(str(int(tries.read_text() if tries.exists() else 0) + 1))
            raise RuntimeError("failing on purpose")
        return super().train_step(x, y, t)
'''


def files(tmp_path):
    out = tmp_path / "out"
    f = tmp_path / "sweep.yaml"
    f.write_text(textwrap.dedent(f"""
    name: retrytest
    out: {out}
    report: false
    base:
      backbone: {{name: mlp, hidden: 8}}
      scenario: {{name: gaussian, train_per_class: 10, test_per_class: 5, n_tasks: 2, n_classes: 4}}
      wandb: off
    grid:
      strategy: [finetune, test-mut-fail-first]
    """))
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    return str(f), str(plugin), out


def test_failed_run_is_retried_by_a_rerun_and_left_alone_with_skip_failed(tmp_path, monkeypatch, capsys):
    f, plugin, out = files(tmp_path)
    marker = tmp_path / "marker"
    monkeypatch.setenv("CL_TEST_FAIL_MARKER", str(marker))
    tries = marker.with_suffix(".tries")
    args = ["sweep", f, "--workers", "0", "--plugin", plugin, "--no-report"]

    assert main(args) == 1  # first pass: the failing run fails
    sweep = load_sweep(f, plugins=[plugin])
    ids = {r.config["strategy"]["name"]: r.id for r in sweep.runs}
    bad, good = ids["test-mut-fail-first"], ids["finetune"]
    assert run_status(out, bad) == "failed" and run_status(out, good) == "finished"
    assert tries.read_text() == "1"

    assert main(args + ["--skip-failed"]) == 1  # not retried: still failed, no new attempt
    assert tries.read_text() == "1"
    assert run_status(out, bad) == "failed"
    capsys.readouterr()

    marker.write_text("ok")  # the cause is fixed
    assert main(args + ["--skip-failed"]) == 1  # --skip-failed still does not retry it
    assert run_status(out, bad) == "failed"

    assert main(args) == 0  # a plain rerun retries the failed run (and only it) and it finishes
    text = capsys.readouterr().out
    assert run_status(out, bad) == "finished"
    assert json.loads((out / bad / "result.json").read_text())["status"] == "finished"
    assert "1 already finished, 1 to run" in text


def test_run_sweep_statuses_of_a_failed_run(tmp_path, monkeypatch):
    f, plugin, out = files(tmp_path)
    monkeypatch.setenv("CL_TEST_FAIL_MARKER", str(tmp_path / "marker"))
    from cl.sweeps.executors import LocalExecutor

    sweep = load_sweep(f, plugins=[plugin])
    ids = {r.config["strategy"]["name"]: r.id for r in sweep.runs}
    first = run_sweep(sweep, LocalExecutor(workers=0), log=lambda s: None)
    assert first["failed"] == [ids["test-mut-fail-first"]] and first["ran"] == 2
    assert first["statuses"][ids["finetune"]] == "finished"
    again = run_sweep(sweep, LocalExecutor(workers=0), retry_failed=False, log=lambda s: None)
    assert again["ran"] == 0 and again["skipped"] == 1 and again["failed"] == [ids["test-mut-fail-first"]]
    retry = run_sweep(sweep, LocalExecutor(workers=0), log=lambda s: None)
    assert retry["ran"] == 1 and retry["skipped"] == 1 and retry["failed"] == [ids["test-mut-fail-first"]]


def test_run_status_of_each_kind_of_run_folder(tmp_path):
    for rid, names in {"a": ["result.json", "failed.json", "checkpoint.pt"], "b": ["checkpoint.pt", "failed.json"],
                       "c": ["failed.json"], "d": []}.items():
        (tmp_path / rid).mkdir()
        for n in names:
            body = {"run_id": rid, "status": "finished", "R": [[1.0]]} if n == "result.json" else {}
            (tmp_path / rid / n).write_text(json.dumps(body))
    assert [run_status(tmp_path, r) for r in "abcde"] == ["finished", "partial", "failed", "pending", "pending"]


def test_closing_report_is_of_this_sweep_when_another_sweep_shares_the_folder(tmp_path, monkeypatch, capsys):
    """Two sweeps writing to one results folder: the second one's manifest replaces the first's while both run;
    the first sweep's closing report must still be about its own runs, not the other's."""
    import cl.sweeps.cli as cli_mod
    from cl.sweeps.status import write_manifest

    out = tmp_path / "shared-out"

    def sweep_file(name, strategy):
        f = tmp_path / f"{name}.yaml"
        f.write_text(textwrap.dedent(f"""
        name: {name}
        out: {out}
        base:
          backbone: {{name: mlp, hidden: 8}}
          scenario: {{name: gaussian, train_per_class: 10, test_per_class: 5, n_tasks: 2, n_classes: 4}}
          wandb: off
        grid:
          strategy: [{strategy}]
        """))
        return str(f)

    mine, other = sweep_file("mine", "finetune"), sweep_file("other", "joint")
    real = cli_mod.run_sweep

    def run_then_the_other_sweep_starts(sweep, *a, **k):
        res = real(sweep, *a, **k)
        write_manifest(load_sweep(other))  # the other sweep's manifest lands in the shared folder meanwhile
        return res

    monkeypatch.setattr(cli_mod, "run_sweep", run_then_the_other_sweep_starts)
    assert main(["sweep", mine, "--workers", "0"]) == 0
    report = capsys.readouterr().out.split("# Report")[-1]
    assert report.lstrip().startswith(": mine") and "1 finished, 0 failed, 0 interrupted, 0 not run" in report
    assert "finetune" in report and "joint" not in report
