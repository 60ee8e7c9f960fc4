"""Which runs a sweep runs, and what it reports (cl/sweeps/runner.py run_sweep), written from its mutation
run (issue 19): each kind of run folder (finished, partial, interrupted, failed, pending, a damaged
result.json) with and without retrying failed runs, the records an executor hands back (finished, resumed,
failed with a multi-line error, interrupted, busy, finished by another process, an outcome that could not be
saved), the line logged for each, the summary and its counts, on a fake executor and a fake clock."""
import json
import types
from pathlib import Path

import pytest

import cl.sweeps.runner as runner
from cl.sweeps.runner import run_sweep
from cl.sweeps.spec import RunSpec, Sweep

CLOCK = [5.0e3]


class FakeExecutor:
    """Hands back canned records, in order, and spends 2.5 fake seconds."""

    def __init__(self, records: dict):
        self.records, self.got = records, []

    def describe(self):
        return "a fake executor"

    def run(self, specs, on_done):
        self.got.append([s.id for s in specs])
        CLOCK[0] += 2.5
        for s in specs:
            on_done(s, self.records[s.id])


def spec(rid):
    return RunSpec(rid, {"strategy": {"name": "er"}, "scenario": {"name": "gaussian"}, "backbone": {"name": "mlp"},
                         "seed": 0})


def folders(out: Path) -> list[RunSpec]:
    """One run folder of each kind; the ids say what they hold."""
    files = {"fin": {"result.json": {"run_id": "fin", "status": "finished", "R": [[1.0]]}},
             "part": {"checkpoint.pt": {}, "failed.json": {}},  # a resumable checkpoint beats an old failure
             "intr": {"interrupted.json": {}},
             "fail": {"failed.json": {}},
             "pend": {},
             "bad": {"result.json": "{not json"},
             "other": {"result.json": {"run_id": "someone-else", "status": "finished", "R": [[1.0]]}},
             "nosave": {}}
    for rid, names in files.items():
        (out / rid).mkdir(parents=True)
        for n, body in names.items():
            (out / rid / n).write_text(body if isinstance(body, str) else json.dumps(body))
    return [spec(rid) for rid in files]


RECORDS = {
    "part": {"status": "finished", "resumed": True, "metrics": {"avg_acc": 0.25, "wall_time": 1.54}},
    "intr": {"status": "interrupted", "error": "interrupted by the user", "metrics": {"wall_time": 0.5}},
    "fail": {"status": "failed", "error": "RuntimeError: boom\nTraceback line 1\nline 2", "metrics": {"wall_time": 3.0}},
    "pend": {"status": "busy", "error": "being computed by another process (pid 7 on h)"},
    "bad": {"status": "finished", "skipped": True, "metrics": {"avg_acc": 0.9}},
    "other": {"status": "finished", "metrics": {"avg_acc": 1, "wall_time": 0.04}},
    "nosave": {"status": "failed", "error": "cannot write x", "save_error": "cannot write x", "saved": None,
               "metrics": None},
}


def sweep_of(tmp_path, runs):
    out = tmp_path / "results" / "deep" / "sweep"  # its parents do not exist yet in a fresh sweep
    return Sweep(path="s.yaml", name="mut", group="mut", tags=[], out=str(out), runs=runs)


@pytest.fixture
def fake_clock(monkeypatch):
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: CLOCK[0]))


@pytest.mark.parametrize("retry", [True, False])
def test_which_runs_a_sweep_runs_and_the_line_logged_for_each(tmp_path, fake_clock, retry):
    sweep = sweep_of(tmp_path, [])
    out = Path(sweep.out)
    sweep.runs = folders(out)
    ex, lines = FakeExecutor(RECORDS), []
    s = run_sweep(sweep, ex, retry_failed=retry, log=lines.append)
    todo = ["part", "intr"] + (["fail"] if retry else []) + ["pend", "bad", "other", "nosave"]
    assert ex.got == [todo]
    assert not (out / "bad" / "result.json").exists() and list((out / "bad").glob("result.json.bad-*"))
    assert (out / "other" / "result.json").exists()  # another run's valid result is left alone
    assert json.loads((out / "sweep.json").read_text())["runs"][0]["id"] == "fin"
    n = len(todo)
    fail_line = [f"[3/{n}] failed fail: RuntimeError: boom (3.0 s)"] if retry else []
    k = 3 if retry else 2
    # failed runs in the order their status became known: a failed run that is not retried at once
    failed = ["intr", "fail", "nosave"] if retry else ["fail", "intr", "nosave"]
    notes = {"intr": f"  interrupted: intr (see {out / 'intr' / 'interrupted.json'})",
             "fail": f"  failed: fail (see {out / 'fail' / 'failed.json'})",
             "nosave": "  failed: nosave (no failure record could be written)"}
    assert lines == [
        f"sweep 'mut': 8 runs, 1 already finished, {n} to run on a fake executor -> {out}/",
        f"[1/{n}] finished (resumed) part: avg_acc 0.2500 (1.5 s)",
        f"[2/{n}] interrupted intr: interrupted by the user (0.5 s)",
        *fail_line,
        f"[{k + 1}/{n}] busy pend: being computed by another process (pid 7 on h); skipped (rerun to collect it)",
        f"[{k + 2}/{n}] skipped bad: finished by another process",
        f"[{k + 3}/{n}] finished other: avg_acc 1.0000 (0.0 s)",
        f"[{k + 4}/{n}] failed nosave: cannot write x [nothing written: cannot write x] (0.0 s)",
        f"sweep 'mut' done in 2.5 s: 2 finished now, 2 skipped, 3 failed, 1 being computed by another process",
        *[notes[rid] for rid in failed],
    ]
    assert s == {"total": 8, "skipped": 1, "ran": n, "failed": failed, "busy": ["pend"],
                 "statuses": {"fin": "skipped", "part": "finished", "intr": "interrupted", "fail": "failed",
                              "pend": "busy", "bad": "skipped", "other": "finished", "nosave": "failed"},
                 "wall_time": 2.5}


def test_a_sweep_with_nothing_to_run_runs_nothing(tmp_path, fake_clock):
    sweep = sweep_of(tmp_path, [])
    out = Path(sweep.out)
    sweep.runs = [r for r in folders(out) if r.id in ("fin", "fail")]
    ex, lines = FakeExecutor({}), []
    s = run_sweep(sweep, ex, retry_failed=False, log=lines.append)
    assert ex.got == []
    assert s["ran"] == 0 and s["skipped"] == 1 and s["failed"] == ["fail"] and s["busy"] == []
    assert s["wall_time"] == 0.0
    assert lines == [f"sweep 'mut': 2 runs, 1 already finished, 0 to run on a fake executor -> {out}/",
                     "sweep 'mut' done in 0.0 s: 0 finished now, 1 skipped, 1 failed",
                     f"  failed: fail (see {out / 'fail' / 'failed.json'})"]


def test_a_fresh_sweep_creates_its_folder_and_a_rerun_reuses_it(tmp_path, fake_clock):
    sweep = sweep_of(tmp_path, [spec("a"), spec("b")])
    recs = {"a": {"status": "finished", "metrics": {"avg_acc": 0.5, "wall_time": 1.0}},
            "b": {"status": "failed", "error": "ValueError: x", "metrics": {}}}
    for _ in range(2):  # the second time the folder exists; b is retried
        lines = []
        s = run_sweep(sweep, FakeExecutor(recs), log=lines.append)
        assert Path(sweep.out).is_dir() and s["failed"] == ["b"] and s["ran"] == 2
        assert lines[-2:] == ["sweep 'mut' done in 2.5 s: 1 finished now, 0 skipped, 1 failed",
                              "  failed: b (no failure record could be written)"]


def test_a_results_folder_that_cannot_be_made_stops_the_sweep_before_any_run(tmp_path, fake_clock):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder's parent should be")
    sweep = sweep_of(tmp_path, [spec("a")])
    ex = FakeExecutor({"a": {"status": "finished"}})
    with pytest.raises(OSError):
        run_sweep(sweep, ex, log=lambda s: None)
    assert ex.got == []  # no run was started that could not have kept its result
