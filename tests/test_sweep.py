"""Sweep files: grid expansion, overrides, exclusions, ids, bad input (all in-process, fast)."""
import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cl.core.config import ID_EXCLUDE, resolve, run_id
from cl.core.registry import ConfigError
from cl.sweeps.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]


BASE = """
base:
  backbone: {name: mlp, hidden: 16}
  scenario: {train_per_class: 10, test_per_class: 5}
  wandb: off
"""


def write(tmp_path, body, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def test_grid_expansion_overrides_and_exclusions(tmp_path):
    f = write(tmp_path, f"""
    name: mine
    tags: [a, b]
    out: {tmp_path}/out
    {BASE.strip().replace(chr(10), chr(10) + '    ')}
    grid:
      strategy: [finetune, er, joint]
      scenario: [gaussian]
      seed: [0, 1, 2]
      strategy.lr: [0.1, 0.01]
    strategies:
      er: {{buffer_size: 30, grid: {{replay_batch_size: [4, 8]}}}}
      joint: {{lr: 0.05, protocol.epochs: 2}}
    scenarios:
      gaussian: {{n_tasks: 2}}
    exclude:
      - {{strategy: finetune, seed: [1, 2]}}
      - {{strategy.lr: 0.01, strategy: er, strategy.replay_batch_size: 8}}
    """)
    sw = load_sweep(f)
    by = {}
    for r in sw.runs:
        by.setdefault(r.config["strategy"]["name"], []).append(r)
    # finetune: 2 lr x seed 0 only; er: 3 seeds x 2 lr x 2 rbs - 3 excluded; joint: lr fixed by override -> 3 seeds
    assert len(by["finetune"]) == 2 and {r.config["seed"] for r in by["finetune"]} == {0}
    assert len(by["er"]) == 3 * 2 * 2 - 3
    assert len(by["joint"]) == 3 and sw.merged == 3  # the lr axis collapses for joint
    for r in by["joint"]:
        assert r.config["strategy"]["lr"] == 0.05 and r.config["protocol"]["epochs"] == 2
    for r in by["er"]:
        assert r.config["strategy"]["buffer_size"] == 30
        assert not (r.config["strategy"]["lr"] == 0.01 and r.config["strategy"]["replay_batch_size"] == 8)
    for r in sw.runs:
        c = r.config
        assert c["scenario"]["n_tasks"] == 2 and c["backbone"]["hidden"] == 16 and c["scenario"]["train_per_class"] == 10
        assert c["group"] == "mine" and c["tags"] == ["a", "b"] and c["out"] == f"{tmp_path}/out"
        assert r.id == run_id(resolve(c))  # ids come from the resolved config
    assert len({r.id for r in sw.runs}) == len(sw.runs)


def test_strategy_axis_with_mappings_and_field_axis_only_where_it_exists(tmp_path):
    f = write(tmp_path, f"""
    {BASE.strip().replace(chr(10), chr(10) + '    ')}
    grid:
      strategy: [finetune, {{name: er, buffer_size: 7}}]
      scenario: gaussian
      strategy.replay_batch_size: [3, 5]
    """)
    sw = load_sweep(f)
    ers = [r for r in sw.runs if r.config["strategy"]["name"] == "er"]
    assert len(ers) == 2 and all(r.config["strategy"]["buffer_size"] == 7 for r in ers)
    assert sorted(r.config["strategy"]["replay_batch_size"] for r in ers) == [3, 5]
    assert len(sw.runs) == 3  # finetune has no replay_batch_size: one run, not two
    assert sw.name == "s" and sw.group == "s" and sw.out == "results/s"  # defaults from the file name


def test_ids_stable_across_processes_and_changed_by_any_config_change(tmp_path):
    f = write(tmp_path, f"""
    {BASE.strip().replace(chr(10), chr(10) + '    ')}
    grid: {{strategy: [er, finetune], scenario: [gaussian], seed: [0, 1]}}
    """)
    ids = [r.id for r in load_sweep(f).runs]
    assert ids == [r.id for r in load_sweep(f).runs]
    out = subprocess.run([sys.executable, "-m", "cl", "sweep", f, "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for i in ids:
        assert i in out.stdout
    # every field that can change results changes the id; bookkeeping keys do not
    cfg = load_sweep(f).runs[0].config
    base_id = run_id(cfg)
    changed = 0
    for sec in ("strategy", "scenario", "backbone", "protocol"):
        for k, v in cfg[sec].items():
            c = copy.deepcopy(cfg)
            c[sec][k] = (not v) if isinstance(v, bool) else (v + 1 if isinstance(v, (int, float)) else f"{v}x")
            assert run_id(c) != base_id, f"{sec}.{k} does not change the id"
            changed += 1
    c = copy.deepcopy(cfg)
    c["seed"] += 1
    assert run_id(c) != base_id
    for k in ID_EXCLUDE:
        c = copy.deepcopy(cfg)
        c[k] = "something-else"
        assert run_id(c) == base_id
    assert changed > 20


BAD = [
    ("top-level key", "grid: {strategy: [er]}\nstrategys: {er: {lr: 1}}\n", 2, ["strategys", "strategies"]),
    ("strategy name", "grid:\n  strategy: [er,\n    erace]\n", 3, ["erace", "er-ace", "finetune"]),
    ("scenario name", "grid:\n  strategy: [er]\n  scenario: [gausian]\n", 3, ["gausian", "gaussian", "split-mnist"]),
    ("per-strategy field", "grid: {strategy: [er]}\nstrategies:\n  er:\n    bufer_size: 3\n", 4,
     ["bufer_size", "buffer_size", "replay_batch_size"]),
    ("per-strategy name", "grid: {strategy: [er]}\nstrategies:\n  err: {lr: 1}\n", 3, ["err", "er"]),
    ("axis field", "grid:\n  strategy: [er]\n  strategy.bufer_size: [1, 2]\n", 3, ["bufer_size", "buffer_size"]),
    ("bad value", "grid:\n  strategy: [er]\n  strategy.lr: [0.1, fast]\n", 3, ["fast", "float"]),
    ("exclude name", "grid: {strategy: [er]}\nexclude:\n  - {strategy: joint}\n  - {scenario: nope}\n", 4,
     ["nope", "gaussian"]),
    ("section", "grid:\n  strat.lr: [1]\n", 2, ["strat", "strategy"]),
    ("base field", "grid: {strategy: [er]}\nscenarios:\n  gaussian: {protocol.epochz: 2}\n", 3, ["epochz", "epochs"]),
    ("seed", "grid:\n  seed: [0, one]\n", 2, ["seed", "one"]),
]


@pytest.mark.parametrize("what,body,line,words", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_files_name_file_line_and_choices(tmp_path, what, body, line, words):
    f = write(tmp_path, "base: {scenario: gaussian, wandb: off}\n" + body.replace("\n", "\n", 1), "bad.yaml")
    # the prepended base line shifts every line by one
    with pytest.raises(ConfigError) as e:
        load_sweep(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line + 1}:"), msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_sweep_file_fails_before_any_run_starts(tmp_path):
    out = tmp_path / "out"
    f = write(tmp_path, f"out: {out}\ngrid:\n  strategy: [er, finetune]\n  scenario: [gaussian]\n"
                        f"strategies:\n  finetune: {{buffer_size: 3}}\n")
    from cl.cli import main

    assert main(["sweep", f]) == 2
    assert not out.exists()


def test_dry_run_lists_runs_and_status(tmp_path, capsys):
    from cl.cli import main

    f = write(tmp_path, f"out: {tmp_path}/o\n{BASE}\ngrid: {{strategy: [er], scenario: [gaussian], seed: [0, 1]}}\n")
    sw = load_sweep(f)
    (tmp_path / "o" / sw.runs[0].id).mkdir(parents=True)
    (tmp_path / "o" / sw.runs[0].id / "result.json").write_text(json.dumps({"run_id": sw.runs[0].id,
                                                                             "status": "finished", "R": [[1.0]]}))
    assert main(["sweep", f, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "2 runs" in text and sw.runs[1].id in text
    assert f"{sw.runs[0].id}  finished" in text and f"{sw.runs[1].id}  pending" in text
    assert not (tmp_path / "o" / "sweep.json").exists()  # a dry run writes nothing



def test_only_runs_a_selection_and_the_manifest_keeps_the_whole_sweep(tmp_path, capsys):
    from cl.cli import main

    f = write(tmp_path, f"""
    out: {tmp_path}/o
    {BASE.strip().replace(chr(10), chr(10) + '    ')}
    grid: {{strategy: [finetune, er], scenario: [gaussian], seed: [0, 1]}}
    strategies: {{er: {{buffer_size: 20}}}}
    """)
    sw = load_sweep(f)
    ids = {(r.config["strategy"]["name"], r.config["seed"]): r.id for r in sw.runs}
    assert main(["sweep", f, "-j", "0", "--only", "strategy=er", "--only", "seed=1", "--no-report"]) == 0
    out = tmp_path / "o"
    assert sorted(p.parent.name for p in out.glob("*/result.json")) == [ids["er", 1]]
    assert "4 runs (1 selected by --only), 0 already finished, 1 to run" in capsys.readouterr().out
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 4  # the report shows 3 missing
    # a field value (read as YAML: 20 is an int); finetune has no buffer_size, so it is not selected
    assert main(["sweep", f, "-j", "0", "--only", "strategy.buffer_size=20,30", "--no-report"]) == 0
    assert sorted(p.parent.name for p in out.glob("*/result.json")) == sorted([ids["er", 0], ids["er", 1]])
    assert "(2 selected by --only), 1 already finished, 1 to run" in capsys.readouterr().out
    for bad, words in ((["strategy=gdumb"], ["no run of sweep", "strategy: 'er', 'finetune'"]),
                       (["seed=0", "strategy=gdumb"], ["seed: 0, 1"]),
                       (["bogus=1"], ["unknown --only key 'bogus'", "SECTION.FIELD"]),
                       (["strategy"], ["expected KEY=VALUE"])):
        assert main(["sweep", f, "--dry-run", *[a for b in bad for a in ("--only", b)]]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err
    assert main(["sweep", f, "--dry-run", "--only", "strategy=finetune"]) == 0
    text = capsys.readouterr().out
    assert "(2 selected by --only)" in text and ids["finetune", 0] in text and ids["er", 0] not in text

def test_paper_key_and_comments_are_kept_not_validated(tmp_path):
    f = write(tmp_path, f"""
    # a comment
    paper: {{title: Some paper, reported: {{avg_acc: 88.5}}, anything: [1, 2]}}
    description: text
    {BASE.strip().replace(chr(10), chr(10) + '    ')}
    grid: {{strategy: [finetune], scenario: [gaussian]}}
    """)
    sw = load_sweep(f)
    assert sw.paper["reported"]["avg_acc"] == 88.5 and len(sw.runs) == 1


def test_quickstart_file_is_valid():
    sw = load_sweep(str(ROOT / "runs" / "quickstart.yaml"))
    names = {r.config["strategy"]["name"] for r in sw.runs}
    assert {"finetune", "er", "joint"} <= names
    assert {r.config["scenario"]["name"] for r in sw.runs} == {"split-mnist", "split-digits"}
    assert len({r.config["seed"] for r in sw.runs}) >= 2


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for pat in ("uer-*.yaml", "ncm-*.yaml", "kalman-*.yaml")
                                        for p in (ROOT / "runs" / "paper").glob(pat)))
def test_paper_configs_validate(path):
    sw = load_sweep(str(ROOT / path))
    assert sw.runs and sw.paper and "paper" in sw.tags


def test_records_keep_a_sweeps_finished_runs_across_a_fresh_results_folder(tmp_path, capsys):
    """`cl sweep --records DIR` copies every finished run to DIR/<name>/; a fresh results folder (a new clone)
    gets them back, skips them and runs only the rest; an edited record is refused and its run recomputed."""
    from cl.cli import main

    f = write(tmp_path, f"name: recs\n{BASE}\ngrid: {{strategy: [er], scenario: [gaussian], seed: [0, 1]}}\n"
                        f"strategies: {{er: {{buffer_size: 20}}}}\n")
    sw = load_sweep(f)
    ids = [r.id for r in sw.runs]
    recs = tmp_path / "records"
    o1, o2, o3 = (str(tmp_path / n) for n in ("o1", "o2", "o3"))
    assert main(["sweep", f, "-j", "0", "-o", o1, "--only", "seed=0", "--records", str(recs), "--no-report"]) == 0
    assert "records: 1 record(s) written or updated" in capsys.readouterr().out
    assert sorted(p.stem for p in (recs / "recs").glob("*.json")) == [ids[0]]
    first = json.loads((Path(o1) / ids[0] / "result.json").read_text())
    # a fresh results folder: the dry run counts the record (and writes nothing), the real run restores it
    assert main(["sweep", f, "-o", o2, "--records", str(recs), "--dry-run"]) == 0
    assert "records: 1 of the 2 runs not finished" in capsys.readouterr().out
    assert not Path(o2).exists()
    assert main(["sweep", f, "-j", "0", "-o", o2, "--records", str(recs), "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "1 finished run(s) put back" in text and "1 already finished, 1 to run" in text, text
    assert json.loads((Path(o2) / ids[0] / "result.json").read_text())["R"] == first["R"]
    assert sorted(p.stem for p in (recs / "recs").glob("*.json")) == sorted(ids)  # the new run archived too
    # an edited number is refused with a warning; that run is run again, the other still put back
    p = recs / "recs" / f"{ids[1]}.json"
    rec = json.loads(p.read_text())
    rec["metrics"]["avg_acc"] = 0.99
    p.write_text(json.dumps(rec))
    assert main(["sweep", f, "-j", "0", "-o", o3, "--records", str(recs), "--no-report"]) == 0
    cap = capsys.readouterr()
    assert "is not used" in cap.err and "avg_acc" in cap.err and "Traceback" not in cap.err
    assert "1 finished run(s) put back" in cap.out and "1 already finished, 1 to run" in cap.out
    assert json.loads(p.read_text())["metrics"]["avg_acc"] != 0.99  # rewritten from the recomputed run
