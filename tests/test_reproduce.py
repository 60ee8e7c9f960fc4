"""The reproduction board: entry validation, listing, the board's numbers on constructed result files, the PNG,
and the CI entry end to end through `cl reproduce run` and `cl reproduce report`."""
import json
import re
import textwrap
from pathlib import Path

import pytest

from cl.cli import main
from cl.core.registry import ConfigError
from cl.sweeps.reproduce import load_entries, load_entry
from cl.sweeps.reproduce_board import board_rows, write_board

ROOT = Path(__file__).resolve().parents[1]

SWEEP = """\
name: tiny-sweep
base:
  scenario: {name: gaussian, n_tasks: 2, train_per_class: 5, test_per_class: 5}
  backbone: {name: mlp, hidden: 8}
  protocol: {name: online, batch_size: 10}
  wandb: off
grid:
  strategy: [er, finetune]
  strategy.buffer_size: [20, 40]
  seed: [0, 1, 2]
"""

ENTRY = """\
name: tiny
method: ER
strategies: [er, finetune]
benchmark: gaussian, 2 tasks
sweep: sweeps/sweep.yaml
hardware: cpu
cost_hours: 1.5
metric: {name: final_avg_acc, setting: class-il}
tolerance: {points: 2.0, reason: two points}
results:
  - id: er20
    select: {strategy: er, strategy.buffer_size: 20}
    metric: {memory: {total: 20}}
    published: {value: 50.0, sd: 1.0, n: 10}
    source: {ref: "Paper Tab. 1", provenance: SEC-R}
  - id: er40
    select: {strategy: er, strategy.buffer_size: 40}
    metric: {memory: {per_class: 10}}
    published: {value: 60.0, sd: null, n: null}
    source: {ref: "Paper Tab. 1", provenance: CODE}
  - id: ft
    select: {strategy: finetune}
    metric: {memory: none}
    published: not-verified
    source: {ref: "Paper Tab. 1, not retrieved", provenance: NONE}
"""


def make(tmp_path, entry=ENTRY, sweep=SWEEP, name="tiny.yaml"):
    d = tmp_path / "entries"
    (d / "sweeps").mkdir(parents=True, exist_ok=True)
    (d / "sweeps" / "sweep.yaml").write_text(textwrap.dedent(sweep))
    (d / name).write_text(textwrap.dedent(entry))
    return d


def err_of(tmp_path, entry, sweep=SWEEP) -> str:
    d = make(tmp_path, entry, sweep)
    with pytest.raises(ConfigError) as ei:
        load_entry(d / "tiny.yaml")
    return str(ei.value)


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


@pytest.mark.parametrize("old,new,needle,expect", [
    ("cost_hours: 1.5", "cost_hours: 1.5\ncolour: red", "colour: red", ["unknown entry key 'colour'", "hardware"]),
    ("hardware: cpu", "hardware: tpu", "hardware: tpu", ["unknown hardware class 'tpu'", "cpu", "gpu", "gpu+weights"]),
    ("{name: final_avg_acc, setting", "{name: final_acc, setting", "metric: {name: final_acc",
     ["unknown metric 'final_acc'", "final_avg_acc", "avg_inc_acc"]),
    ("setting: class-il}", "setting: class}", "setting: class}", ["unknown setting 'class'", "class-il", "task-il"]),
    ("provenance: SEC-R}", "provenance: SEC}", "provenance: SEC}", ["unknown provenance 'SEC'", "SEC-R", "SEC-D"]),
    ("metric: {memory: {total: 20}}", "metric: {memory: {slots: 20}}", "slots: 20",
     ["unknown memory key 'slots'", "per_class", "total"]),
    ("published: {value: 50.0, sd: 1.0, n: 10}", "published: {value: 50.0, deviation: 1.0}", "deviation: 1.0",
     ["unknown published key 'deviation'", "value", "sd", "spread"]),
    ("published: {value: 50.0, sd: 1.0, n: 10}", "published: {value: 50.0, sd: 1.0, n: 10, spread: sem}", "spread: sem",
     ["unknown spread 'sem'", "sd", "se", "2se", "unknown"]),
    ("select: {strategy: er, strategy.buffer_size: 20}", "select: {strategy: er, strategy.buffer_size: 30}",
     "buffer_size: 30", ["matches no run"]),
    ("select: {strategy: er, strategy.buffer_size: 20}", "select: {strategy: er}", "select: {strategy: er}\n",
     ["matches 6 runs but only 3 seeds", "strategy.buffer_size"]),
])
def test_entry_errors_name_file_line_and_choices(tmp_path, old, new, needle, expect):
    text = ENTRY.replace(old, new, 1)
    assert text != ENTRY
    msg = err_of(tmp_path, text)
    want = line_of(text, needle.rstrip("\n")) if needle != "select: {strategy: er}\n" else \
        line_of(text, "- id: er20")
    if "matches" in expect[0]:  # select problems name the result's line
        want = line_of(text, "- id: er20")
    assert f"tiny.yaml:{want}:" in msg, msg
    for e in expect:
        assert e in msg, msg


def test_entry_errors_missing_pieces(tmp_path):
    assert "needs a tolerance" in err_of(tmp_path, ENTRY.replace("tolerance: {points: 2.0, reason: two points}\n", ""))
    msg = err_of(tmp_path, ENTRY.replace("{points: 2.0, reason: two points}", "{points: 2.0}"))
    assert "`reason` is required" in msg and f"tiny.yaml:{line_of(ENTRY, 'tolerance:')}:" in msg
    assert "provenance NONE goes with" in err_of(tmp_path, ENTRY.replace("provenance: CODE}", "provenance: NONE}"))
    assert "does not exist" in err_of(tmp_path, ENTRY.replace("sweep: sweeps/sweep.yaml", "sweep: nope.yaml"))
    msg = err_of(tmp_path, ENTRY.replace("strategies: [er, finetune]", "strategies: [er]"))
    assert "runs strategy 'finetune', not in the entry's `strategies`" in msg
    # the metric's setting is checked against the runs' scenario setting
    msg = err_of(tmp_path, ENTRY.replace("setting: class-il}", "setting: task-il}"))
    assert "the metric says task-il but run" in msg and "setting=class" in msg
    # an error in the sweep file itself keeps the sweep loader's FILE:LINE
    msg = err_of(tmp_path, ENTRY, SWEEP.replace("hidden: 8", "hiden: 8"))
    assert re.search(r"sweep.yaml:4: unknown backbone 'mlp' field 'hiden'", msg), msg
    # YAML tags that would build objects are refused (safe loader)
    msg = err_of(tmp_path, ENTRY.replace("method: ER", "method: !!python/name:os.system"))
    assert "invalid YAML" in msg and "python/name:os.system" in msg


def test_reduced_entry_compares_only_with_our_full_size_number(tmp_path):
    red = ENTRY.replace("name: tiny", "name: tiny-reduced\nreduced_of: tiny")
    msg = err_of(tmp_path, red)
    assert "compared only with our own full-size number" in msg
    d = make(tmp_path)
    (d / "red.yaml").write_text(textwrap.dedent(f"""\
        name: tiny-reduced
        reduced_of: tiny
        method: ER
        strategies: [er, finetune]
        benchmark: REDUCED
        sweep: sweeps/sweep.yaml
        hardware: cpu
        cost_hours: 0.1
        metric: {{name: final_avg_acc, setting: class-il, memory: {{total: 20}}}}
        tolerance: {{points: 1.0, reason: r}}
        results:
          - id: r
            select: {{strategy: er, strategy.buffer_size: 20}}
            compare_with: er99
        """))
    with pytest.raises(ConfigError, match=r"red.yaml:\d+: compare_with: unknown result of tiny 'er99'.*er20, er40, ft"):
        load_entries(d)


def _write_results(out: Path, entry, values: dict):
    """Result files by hand: {row id: [avg_acc per seed]} for the row's runs in seed order."""
    specs = {s.id: s for s in entry.sweep.runs}
    for row in entry.rows:
        for rid, v in zip(sorted(row.run_ids, key=lambda i: specs[i].config["seed"]), values.get(row.id, [])):
            d = out / rid
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({
                "run_id": rid, "status": "finished", "config": specs[rid].config, "seed": specs[rid].config["seed"],
                "R": [[v]], "metrics": {"avg_acc": v}, "device": "cpu", "threads": 1,
                "versions": {"cl-platform": "0.1"}}))


def test_list_shows_never_run_and_unavailable_entries(tmp_path, capsys):
    d = make(tmp_path)
    (d / "ghost.yaml").write_text(ENTRY.replace("name: tiny", "name: ghost").replace(
        "strategies: [er, finetune]", "strategies: [er, no-such-strategy]"))
    assert main(["reproduce", "list", "--entries", str(d), "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tiny\s+cpu\s+1\.5\s+3\s+not run", out), out
    assert re.search(r"ghost\s+cpu\s+1\.5\s+3\s+strategy not available: no-such-strategy", out), out
    # with results on disk, the status counts them
    e = load_entry(d / "tiny.yaml", tmp_path / "res")
    _write_results(Path(e.out), e, {"er20": [0.5, 0.5]})
    main(["reproduce", "list", "--entries", str(d), "--results", str(tmp_path / "res")])
    assert re.search(r"tiny\s+cpu\s+1\.5\s+3\s+partial: 2/9 runs finished, last \d{4}-", capsys.readouterr().out)


def test_board_values_against_constructed_results(tmp_path):
    d = make(tmp_path)
    (d / "ghost.yaml").write_text(ENTRY.replace("name: tiny", "name: ghost").replace(
        "strategies: [er, finetune]", "strategies: [er, no-such-strategy]"))
    res = tmp_path / "res"
    entries = load_entries(d, res)
    tiny = next(e for e in entries if e.name == "tiny")
    # er20: 0.49, 0.50, 0.54 -> mean 51.0, sample std sqrt(((2^2 + 1^2 + 3^2) / 2)) = sqrt(7) = 2.6458;
    # diff +1.0 <= 2 -> within.  er40: 0.60, 0.64 (2 of 3 seeds) -> 62.0 ± 2.83, diff +2.0 -> within (partial).
    _write_results(Path(tiny.out), tiny, {"er20": [0.49, 0.50, 0.54], "er40": [0.60, 0.64], "ft": [0.1, 0.2, 0.3]})
    rows = {(r["entry"], r["row"]): r for r in board_rows(entries)}
    r = rows[("tiny", "er20")]
    assert r["ours"] == pytest.approx(51.0) and r["ours_std"] == pytest.approx(7 ** 0.5) and r["n"] == 3
    assert r["diff"] == pytest.approx(1.0) and r["verdict"] == "within"
    r = rows[("tiny", "er40")]
    assert r["ours"] == pytest.approx(62.0) and r["ours_std"] == pytest.approx(2 * 2 ** 0.5) and r["n"] == 2
    assert r["verdict"] == "within" and r["verdict_text"] == "within (partial: 2/3 seeds)"
    assert rows[("tiny", "ft")]["verdict"] == "published value not verified"
    assert rows[("tiny", "ft")]["ours"] == pytest.approx(20.0)
    assert rows[("ghost", "er20")]["verdict"] == "strategy not available"
    # a third er40 seed far off: mean (60 + 64 + 74) / 3 = 66 -> +6 > 2 -> outside
    e40 = sorted(next(x for x in tiny.rows if x.id == "er40").run_ids,
                 key=lambda i: next(s for s in tiny.sweep.runs if s.id == i).config["seed"])[2]
    spec = next(s for s in tiny.sweep.runs if s.id == e40)
    (Path(tiny.out) / e40).mkdir()
    (Path(tiny.out) / e40 / "result.json").write_text(json.dumps({
        "run_id": e40, "status": "finished", "config": spec.config, "R": [[0.74]], "metrics": {"avg_acc": 0.74}}))
    board = tmp_path / "docs" / "reproduction.md"
    got = write_board(entries, board)
    rows = {(r["entry"], r["row"]): r for r in got["rows"]}
    assert rows[("tiny", "er40")]["ours"] == pytest.approx(66.0) and rows[("tiny", "er40")]["verdict"] == "outside"
    text = board.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| tiny |") and "| er20 |" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == "50 ± 1 (n=10)" and cells[7] == "51.00 ± 2.65 (n=3)" and cells[8] == "+1.00"
    assert cells[9] == "± 2" and cells[10] == "within"
    assert "secondary transcription, not checked at the paper" in cells[6]
    assert cells[11].startswith("not recorded") and cells[12] == "cpu, 1 thread(s)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", cells[13])
    assert cells[14] == "[report](../res/tiny-sweep/report/report.md)"
    assert (board.parent / "../res/tiny-sweep/report/report.md").resolve().exists()
    line = next(x for x in text.splitlines() if x.startswith("| tiny |") and "| er40 |" in x)
    assert "66.00 ± 7.21 (n=3)" in line and "| outside |" in line and "60 (spread not printed) (n=n/s)" in line
    assert "memory 10 per class" in line
    # never-run and unavailable entries are on the board, never left out
    assert sum(1 for x in text.splitlines() if x.startswith("| ghost |")) == 3
    assert "strategy not available (no-such-strategy)" in text
    png = board.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_budget_and_hardware_selection(tmp_path, capsys):
    d = make(tmp_path)
    (d / "big.yaml").write_text(ENTRY.replace("name: tiny", "name: big").replace("cost_hours: 1.5", "cost_hours: 9")
                                .replace("hardware: cpu", "hardware: gpu"))
    res = str(tmp_path / "res")
    assert main(["reproduce", "run", "--entries", str(d), "--results", res, "--budget", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "skip big: 9.00 device-hours left to run, over the budget" in out and "entry tiny (cpu" in out
    assert main(["reproduce", "run", "--entries", str(d), "--results", res, "--only", "gpu", "-n"]) == 0
    out = capsys.readouterr().out
    assert "entry big (gpu" in out and "entry tiny" not in out
    assert main(["reproduce", "run", "--entries", str(d), "--results", res, "--entry", "nope"]) == 2
    assert "unknown entry 'nope'" in capsys.readouterr().err


def test_where_runs_a_part_of_an_entry_and_the_budget_counts_that_part(tmp_path, capsys):
    d = make(tmp_path)
    (d / "sweeps" / "other.yaml").write_text(SWEEP.replace("tiny-sweep", "other-sweep").replace("[er, finetune]", "[er]"))
    other = ENTRY.replace("name: tiny", "name: other").replace("[er, finetune]", "[er]").replace("sweep.yaml", "other.yaml")
    (d / "other.yaml").write_text(other.split("  - id: ft")[0])
    res = str(tmp_path / "res")
    # 9 runs (finetune's buffer axis merged) at 1.5 h: 2 of them (er at 20, seeds 0 and 1) cost 0.33 h, inside a
    # budget that the whole entry is not
    args = ["reproduce", "run", "--entries", str(d), "--results", res, "--entry", "tiny", "--budget", "0.4",
            "--where", "seed=0,1", "--where", "strategy=er", "--where", "strategy.buffer_size=20"]
    assert main(args + ["-n"]) == 0
    out = capsys.readouterr().out
    assert "0.33 device-hours (estimated) left to run: tiny" in out and "2 runs selected by --where" in out
    assert "9 runs (2 selected by --where)" in out
    assert main(args[:-6] + ["-n"]) == 0 and "skip tiny: 1.50 device-hours" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    done = sorted(p.parent.name for p in (Path(res) / "tiny-sweep").glob("*/result.json"))
    assert len(done) == 2 and all(n.startswith("er-") for n in done), done
    seeds = sorted(json.loads((Path(res) / "tiny-sweep" / n / "result.json").read_text())["config"]["seed"] for n in done)
    assert seeds == [0, 1]
    side = json.loads((Path(res) / "tiny-sweep" / "reproduce.json").read_text())["runs"]
    assert sorted(side) == done and all(v["entry"] == "tiny" for v in side.values())
    assert main(args + ["-n"]) == 0  # finished: nothing of the part is left
    assert "0.00 device-hours" in capsys.readouterr().out
    # an entry the selection does not reach is skipped in one line; a bad key is a one-line error
    assert main(["reproduce", "run", "--entries", str(d), "--results", res, "--where", "strategy=finetune", "-n"]) == 0
    out = capsys.readouterr().out
    assert "matches no run of 1 entries: other" in out and "entry tiny (cpu" in out
    assert main(["reproduce", "run", "--entries", str(d), "--results", res, "--where", "sed=0", "-n"]) == 2
    assert "unknown --where key 'sed'. Did you mean 'seed'?" in capsys.readouterr().err


def test_repository_entries_validate():
    """Every entry in runs/reproduce/ parses; entries with a registered strategy also expand their sweep."""
    entries = load_entries(ROOT / "runs" / "reproduce")
    assert any(e.name == "er-ace-online-ci-tiny" for e in entries)
    for e in entries:
        if e.available:
            assert all(r.run_ids for r in e.rows), e.name
    # every method an entry names is a built-in strategy now: a renamed strategy must not hide an entry
    assert [e.name for e in entries if not e.available] == []


def test_ci_entry_end_to_end(tmp_path, capsys):
    """The CI entry through the sweep runner, then the board: the pipeline and the file format."""
    import shutil

    # the repository's CI entry and the full-size entry it is reduced from, with their sweeps at the same
    # relative places (the board of all entries is built by test_repository_entries_validate's loader)
    for rel in ("runs/reproduce/er-ace-online-ci-tiny.yaml", "runs/reproduce/er-ace-online-cifar10.yaml",
                "runs/reproduce/sweeps/er-ace-online-ci-tiny.yaml", "runs/paper/er-ace-online-cifar10.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    res, board = tmp_path / "res", tmp_path / "docs" / "reproduction.md"
    args = ["--entries", str(tmp_path / "runs" / "reproduce"), "--results", str(res)]
    assert main(["reproduce", "run", *args, "--entry", "er-ace-online-ci-tiny", "-j", "0"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 0 already finished, 2 to run" in out
    runs = sorted(p for p in (res / "er-ace-online-ci-tiny").iterdir() if p.is_dir() and p.name != "report")
    assert len(runs) == 2 and all((p / "result.json").exists() for p in runs)
    side = json.loads((res / "er-ace-online-ci-tiny" / "reproduce.json").read_text())["runs"]
    assert set(side) == {p.name for p in runs} and all(v["commit"] and v["date"] for v in side.values())
    # a second run skips the finished runs
    assert main(["reproduce", "run", *args, "--entry", "er-ace-online-ci-tiny", "-j", "0"]) == 0
    assert "2 runs, 2 already finished, 0 to run" in capsys.readouterr().out
    assert main(["reproduce", "report", *args, "-o", str(board)]) == 0
    text = board.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| er-ace-online-ci-tiny |"))
    assert re.search(r"\| \d+\.\d\d ± \d+\.\d\d \(n=2\) \|", line) and "| not compared |" in line
    assert "(../res/er-ace-online-ci-tiny/report/report.md)" in line
    full = [x for x in text.splitlines() if x.startswith("| er-ace-online-cifar10 |")]
    assert full and all("| not run |" in x for x in full)
    assert board.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the run archived its records beside the entries; from them a fresh clone's board has the same numbers
    recs = sorted((tmp_path / "runs" / "reproduce" / "records" / "er-ace-online-ci-tiny").glob("*.json"))
    assert [p.stem for p in recs] == [p.name for p in runs]
    assert all(json.loads(p.read_text())["reproduce"]["commit"] for p in recs)
    ours = re.search(r"\| (\d+\.\d\d ± \d+\.\d\d \(n=2\)) \|", line).group(1)
    fresh = ["--entries", str(tmp_path / "runs" / "reproduce"), "--results", str(tmp_path / "fresh")]
    assert main(["reproduce", "report", *fresh, "-o", str(board)]) == 0
    again = next(x for x in board.read_text().splitlines() if x.startswith("| er-ace-online-ci-tiny |"))
    assert f"| {ours} |" in again
    assert again.endswith("[report](../fresh/er-ace-online-ci-tiny/report/report.md), "
                          "[records](../runs/reproduce/records/er-ace-online-ci-tiny) |"), again


def test_archived_records_survive_a_fresh_results_folder_and_edited_ones_are_refused(tmp_path, capsys):
    """The board's evidence is committed: records archived from one results folder give the same board from an
    empty one, and the sweep skips those runs; a record whose number or config was edited is not used."""
    d = make(tmp_path)
    res1, res2 = tmp_path / "res1", tmp_path / "res2"
    tiny = load_entries(d, res1)[0]
    _write_results(Path(tiny.out), tiny, {"er20": [0.49, 0.50, 0.54], "er40": [0.60, 0.64]})
    args = ["--entries", str(d)]
    assert main(["reproduce", "archive", *args, "--results", str(res1)]) == 0
    assert "5 records written or updated" in capsys.readouterr().out
    recs = sorted((d / "records" / "tiny-sweep").glob("*.json"))
    assert len(recs) == 5
    assert main(["reproduce", "archive", *args, "--results", str(res1)]) == 0  # identical: nothing rewritten
    assert "0 records written or updated" in capsys.readouterr().out
    ids = {r.id: sorted(r.run_ids, key=lambda i: next(s for s in tiny.sweep.runs if s.id == i).config["seed"])
           for r in tiny.rows}
    # er20 seed 2 (0.54): its number edited; er40 seed 1 (0.64): its config edited
    p = d / "records" / "tiny-sweep" / f"{ids['er20'][2]}.json"
    rec = json.loads(p.read_text())
    rec["metrics"]["avg_acc"] = 0.99
    p.write_text(json.dumps(rec))
    p = d / "records" / "tiny-sweep" / f"{ids['er40'][1]}.json"
    rec = json.loads(p.read_text())
    rec["config"]["strategy"]["lr"] = 0.5
    p.write_text(json.dumps(rec))
    # `list` and the budget of `run` count the 3 valid records as finished runs, reading, not restoring, them
    res3 = tmp_path / "res3"
    assert main(["reproduce", "list", *args, "--results", str(res3)]) == 0
    assert re.search(r"^tiny +cpu +1\.5 +3  partial: 3/9 runs finished$", capsys.readouterr().out, re.M)
    assert main(["reproduce", "run", *args, "--results", str(res3), "-n"]) == 0  # 1.5 h x 6 of 9 runs left
    assert "1 entries, 1.00 device-hours (estimated) left to run: tiny" in capsys.readouterr().out
    assert not res3.exists()
    board = tmp_path / "docs" / "reproduction.md"
    assert main(["reproduce", "report", *args, "--results", str(res2), "-o", str(board)]) == 0
    cap = capsys.readouterr()
    assert f"{ids['er20'][2]}.json is not used: its metric avg_acc = 0.99 is not that of its accuracy matrix" in cap.err
    assert f"{ids['er40'][1]}.json is not used: its config hashes to" in cap.err
    assert "entry tiny: 3 finished runs put back" in cap.out
    text = board.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| tiny |") and "| er20 |" in x)
    assert "| 49.50 ± 0.71 (n=2) of 3 |" in line and "| -0.50 |" in line  # (49 + 50) / 2, sd sqrt(0.5)
    line = next(x for x in text.splitlines() if x.startswith("| tiny |") and "| er40 |" in x)
    assert "| 60.00 (n=1) of 3 |" in line
    # the sweep counts the restored runs as finished: only the refused and never-run ones are left
    assert main(["reproduce", "run", *args, "--results", str(res2), "--entry", "tiny", "-n"]) == 0
    out = capsys.readouterr().out
    assert sum(1 for x in out.splitlines() if " finished " in f"{x} ") == 3, out


def test_published_spread_kinds_are_shown_and_converted_to_a_standard_deviation(tmp_path):
    """ER-ACE prints mean ± standard error over 10 runs, MIR's code mean ± 2 std / sqrt(n): the board says which,
    and its plot's error bar is the standard deviation they imply."""
    from cl.sweeps.reproduce_board import sd_of

    assert sd_of({"sd": 0.7, "n": 10, "spread": "se"}) == pytest.approx(0.7 * 10 ** 0.5)
    assert sd_of({"sd": 1.2, "n": 15, "spread": "2se"}) == pytest.approx(0.6 * 15 ** 0.5)
    assert sd_of({"sd": 1.2, "n": 15}) == 1.2 and sd_of({"sd": 1.2, "n": None, "spread": "se"}) == 1.2
    assert sd_of({"sd": 2.0, "n": 3, "spread": "unknown"}) == 2.0 and sd_of({"sd": None, "n": 3, "spread": "se"}) is None
    d = make(tmp_path, ENTRY.replace("published: {value: 50.0, sd: 1.0, n: 10}",
                                     "published: {value: 50.0, sd: 1.0, n: 10, spread: se}"))
    rows = {r["row"]: r for r in board_rows(load_entries(d, tmp_path / "res"))}
    assert rows["er20"]["published"] == "50 ± 1 (se, n=10)" and rows["er20"]["ref_sd"] == pytest.approx(10 ** 0.5)
    assert rows["er40"]["published"] == "60 (spread not printed) (n=n/s)"


def test_board_hardware_names_every_cpu_model_its_runs_used():
    """The same seed and software give bit-identical runs on one CPU model but not across models (AMD EPYC and
    Intel Xeon differ from the first steps on: benchmarks/results/reproduce-cpu.md), so a cell whose seeds ran
    on two machines says so."""
    from cl.sweeps.reproduce_board import _provenance

    recs = [{"device": "cpu", "threads": 1, "cpu": "AMD EPYC", "date": "2026-12-03T10:00:00Z", "commit": "a"},
            {"device": "cpu", "threads": 1, "cpu": "Intel Xeon", "date": "2026-12-04T10:00:00Z", "commit": "b"},
            {"device": "cpu", "threads": 1, "cpu": "Intel Xeon", "date": "2026-12-04T11:00:00Z", "commit": "b",
             "_side": {"cpu": "Intel Xeon", "commit": "c", "date": "2026-12-04T12:00:00Z"}}]
    p = _provenance(recs)
    assert p["hardware"] == "cpu, 1 thread(s), AMD EPYC; cpu, 1 thread(s), Intel Xeon"
    assert p["commit"] == "a; b; c" and p["date"] == "2026-12-03 to 2026-12-04"
    assert _provenance([{"device": "cuda", "threads": 1, "cpu": "AMD EPYC", "date": "2026-12-04"}])["hardware"] == "cuda, 1 thread(s)"
