"""Issue 11: fault injection. Each test reproduces one failure of the hostile-user trial and checks the fix:
no code runs from data files (1), plugins cannot replace built-ins silently (3), the run id fixes R (4), a bad
result.json is not finished (5), W&B outages are bounded (6), one process per run (7), bad values are clear
errors (8), faults at the edges (9). Item 2 is in test_reliability_state.py."""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cl.cli import main as cli
from cl.core.config import resolve, run_id
from cl.core.registry import ConfigError, strategies
from cl.train import checkpoint
from cl.train.engine import Run
from cl.train.results import RunLock, finished_result
from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
SCEN = {"name": "gaussian", "n_tasks": 2, "n_classes": 4, "train_per_class": 10, "test_per_class": 5}
PY = sys.executable

pytestmark = pytest.mark.usefixtures("restore_registry")


def cfg(**kw):
    return resolve(tiny("er", scenario=SCEN, **kw))


class Boom:
    """Unpickling this calls os.system: the test sees a marker file if code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- 1. no code runs from files on disk
def test_planted_checkpoint_runs_no_code(tmp_path):
    c = cfg()
    d = tmp_path / "run"
    d.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"run_id": run_id(c), "x": Boom(marker)}, d / "checkpoint.pt")
    r = Run(c, progress=False, out_dir=d).execute()
    assert not marker.exists()
    assert r["status"] == "finished" and not r["resumed"]
    assert list(d.glob("checkpoint.pt.bad-*"))  # kept aside, with a warning: a trace


def test_cifar_pickles_admit_arrays_only(tmp_path):
    from cl.core.safe_load import UnsafeFile, load_numpy_pickle

    good = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [0, 1], b"batch_label": b"x"}
    out = load_numpy_pickle(io.BytesIO(pickle.dumps(good, protocol=2)))
    assert out[b"labels"] == [0, 1] and out[b"data"].dtype == np.uint8 and out[b"data"].shape == (2, 6)
    marker = tmp_path / "PWNED"
    with pytest.raises(UnsafeFile, match="posix.system|os.system|nt.system"):
        load_numpy_pickle(io.BytesIO(pickle.dumps({b"data": Boom(marker)})), "data_batch_1")
    assert not marker.exists()


def test_cifar_reader_uses_the_restricted_unpickler(tmp_path):
    from cl.core.safe_load import UnsafeFile
    from scenarios import cifar

    marker = tmp_path / "PWNED"
    with pytest.raises(UnsafeFile):
        cifar._from_pickles(10, lambda f: io.BytesIO(pickle.dumps({b"data": Boom(marker)})))
    assert not marker.exists()


def test_cloc_reader_loads_weights_only(tmp_path):
    from cl.core.safe_load import UnsafeFile
    from scenarios import cloc

    torch.save([1, 2, 3], tmp_path / "ok.torchSave")
    assert cloc._cloc_load(tmp_path / "ok.torchSave") == [1, 2, 3]
    marker = tmp_path / "PWNED"
    torch.save([Boom(marker)], tmp_path / "bad.torchSave")
    with pytest.raises(UnsafeFile):
        cloc._cloc_load(tmp_path / "bad.torchSave")
    assert not marker.exists()


def test_factory_outside_avalanche_or_plugins_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    rc = cli(["run", "-s", "er", "-d", "avalanche", "--no-wandb", "-q", "-o", str(tmp_path),
              "--set", "scenario.factory=subprocess.run",
              "--set", f"scenario.kwargs={{args: 'touch {marker}', shell: true}}"])
    assert rc == 2 and not marker.exists()
    assert "avalanche.benchmarks" in capsys.readouterr().err
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base:\n  scenario: {{name: avalanche, factory: os.system, kwargs: {{command: 'touch {marker}'}}}}\n")
    assert cli(["sweep", str(sweep), "--no-wandb", "-o", str(tmp_path / "o")]) == 2
    assert not marker.exists()


def test_factory_from_a_named_plugin_is_accepted(tmp_path):
    from scenarios.avalanche_adapter import AvalancheConfig, _resolve_factory

    plug = tmp_path / "mybench.py"
    plug.write_text("def make(**kw):\n    return 'bench'\n")
    with pytest.raises(ConfigError):
        AvalancheConfig(factory="mybench.make").validate()
    from cl.core.registry import load_plugin_file

    load_plugin_file(plug)
    assert _resolve_factory("mybench.make")() == "bench"


# ---------------------------------------------------------------- 3. plugins and built-in names
def test_plugin_registering_a_builtin_name_is_an_error(tmp_path, capsys):
    plug = tmp_path / "myer.py"
    plug.write_text("from cl.strategy import Strategy, register\n\n@register('er')\nclass Mine(Strategy):\n    pass\n")
    rc = cli(["run", "--plugin", str(plug), "-s", "er", "-d", "gaussian", "--no-wandb", "-q", "-o", str(tmp_path)])
    assert rc == 2
    assert "already registered" in capsys.readouterr().err and "override=True" in capsys.readouterr().err + \
        "override=True"
    assert strategies.get("er").obj.__module__ == "strategies.er"


def test_an_override_gets_its_own_run_ids(tmp_path):
    from cl.core.registry import load_plugin_file

    builtin_id = run_id(cfg())
    plug = tmp_path / "myer.py"
    plug.write_text("from cl.strategy import register\nfrom strategies.er import ER\n\n"
                    "@register('er', override=True)\nclass Mine(ER):\n    pass\n")
    load_plugin_file(plug)
    c = cfg()
    assert c["code"]["strategy"].startswith("cl_user_plugin_myer.Mine@")
    assert run_id(c) != builtin_id
    plug.write_text(plug.read_text() + "# edited\n")
    load_plugin_file(plug)
    assert run_id(cfg()) not in (builtin_id, run_id(c))  # the file's content is part of the identity


def test_code_key_cannot_be_forged_from_a_file():
    raw = tiny("er", scenario=SCEN)
    raw["code"] = {"strategy": "x"}
    assert "code" not in resolve(raw) and run_id(resolve(raw)) == run_id(cfg())


# ---------------------------------------------------------------- 4. the run id fixes R
def test_threads_is_part_of_the_config_and_recorded(tmp_path):
    c1, c2 = cfg(), cfg(threads=2)
    assert c1["threads"] == 1 and run_id(c1) != run_id(c2)
    r = Run(c2, progress=False, out_dir=tmp_path).execute()
    assert r["threads"] == 2 and r["device"] == "cpu"
    assert torch.get_num_threads() == 1  # restored after the run


def test_sweep_j1_and_j2_give_bitwise_the_same_R(tmp_path):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(textwrap.dedent(f"""\
        base:
          scenario: {json.dumps(SCEN)}
          backbone: {{name: mlp, hidden: 64}}
          protocol: {{name: offline, epochs: 2, batch_size: 16}}
        grid:
          strategy: [finetune, er]
        report: false
        """))
    got = {}
    for j in (1, 2):
        out = tmp_path / f"j{j}"
        p = subprocess.run([PY, "-m", "cl.cli", "sweep", str(sweep), "-j", str(j), "--no-wandb", "-o", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        got[j] = {f.parent.name: json.loads(f.read_text())["R"] for f in out.glob("*/result.json")}
    assert len(got[1]) == 2 and got[1] == got[2]


# ---------------------------------------------------------------- 5. a corrupted result.json
@pytest.mark.parametrize("content", ["", '{"run_id": "x", "stat', "[1, 2]", '{"status": "finished"}'])
def test_corrupt_result_is_moved_aside_and_recomputed(tmp_path, content, capsys):
    c = cfg(out=str(tmp_path))
    d = tmp_path / run_id(c)
    Run(c, progress=False).execute()
    (d / "result.json").write_text(content)
    assert finished_result(d, run_id(c), move=False) is None
    from cl.sweeps.status import run_status

    assert run_status(tmp_path, run_id(c)) != "finished"
    rc = cli(["run", "-s", "er", "-d", "gaussian", "--set", f"scenario={json.dumps(SCEN)}".replace("scenario=", "scenario=gaussian")
              ] if False else ["run", "--no-wandb", "-q", "-o", str(tmp_path), "-s", "er", "-d", "gaussian",
                               *[f"--set=scenario.{k}={v}" for k, v in SCEN.items() if k != "name"],
                               "--set=backbone.hidden=32"])
    assert rc == 0
    assert finished_result(d, run_id(c)) is not None
    assert len(list(d.glob("result.json.bad-*"))) == 1


# ---------------------------------------------------------------- 6. W&B outages and logger failures
def test_wandb_dead_endpoint_is_bounded_and_paid_once(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from cl.train import loggers

    monkeypatch.setattr(loggers, "_outage_in_process", False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # loopback port with nothing listening
    monkeypatch.setenv("CL_WANDB_INIT_TIMEOUT", "1")
    out = tmp_path / "sweep"
    times = []
    for seed in (0, 1):
        c = resolve({**tiny("er", scenario=SCEN, seed=seed, out=str(out)), "wandb": "auto"})
        t = time.perf_counter()
        r = Run(c, progress=False).execute()
        times.append(time.perf_counter() - t)
        assert r["status"] == "finished"
    assert (out / loggers.OUTAGE_MARKER).exists()
    assert times[0] < 45, times  # not 90 s
    monkeypatch.setattr(loggers, "_outage_in_process", False)  # a new worker process: the marker file tells it
    lg = loggers.WandbLogger({**c, "seed": 2}, "x", out / "x")
    assert lg._outage_known()
    lg.finish({"status": "finished"})


@pytest.mark.parametrize("where", ["init", "log", "finish"])
def test_a_logger_raising_systemexit_never_costs_the_result(tmp_path, monkeypatch, where):
    from cl.train import loggers

    class Fake:
        summary = {}

        def log(self, *a, **k):
            if where == "log":
                raise SystemExit(3)

        def finish(self, *a, **k):
            if where == "finish":
                raise SystemExit(3)

    def init(*a, **k):
        if where == "init":
            raise SystemExit(3)
        return Fake()

    monkeypatch.setattr(loggers.WandbLogger, "_init", staticmethod(init))
    monkeypatch.setenv("WANDB_MODE", "offline")
    c = resolve({**tiny("er", scenario=SCEN), "wandb": "auto"})
    with pytest.warns(UserWarning, match="W&B disabled"):
        r = Run(c, progress=False, out_dir=tmp_path).execute()
    assert r["status"] == "finished" and (tmp_path / "result.json").exists()


# ---------------------------------------------------------------- 7. two processes on one results folder
def test_a_locked_run_is_skipped_then_computed(tmp_path):
    from cl.sweeps.executors import execute_run

    c = cfg(out=str(tmp_path))
    d = tmp_path / run_id(c)
    with RunLock(d, run_id(c)) as lock:
        assert lock.acquired
        rec = execute_run(c)
        assert rec["status"] == "busy" and "another process" in rec["error"]
        assert not (d / "failed.json").exists() and not (d / "result.json").exists()
    assert execute_run(c)["status"] == "finished"


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    d = tmp_path / "run"
    code = f"from cl.train.results import RunLock\nl = RunLock({str(d)!r}).__enter__()\nprint(l.acquired, flush=True)\n" \
           "import time\ntime.sleep(60)\n"
    p = subprocess.Popen([PY, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "True"
    with RunLock(d) as lock:
        assert not lock.acquired and lock.holder["pid"] == p.pid
    p.kill()  # kill -9 of the holder
    p.wait()
    with RunLock(d) as lock:
        assert lock.acquired


def test_two_identical_cl_run_at_once(tmp_path):
    args = [PY, "-m", "cl.cli", "run", "-s", "er", "-d", "gaussian", "--no-wandb", "-q", "-o", str(tmp_path),
            "--set", "protocol.epochs=3", *[f"--set=scenario.{k}={v}" for k, v in SCEN.items() if k != "name"]]
    ps = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    (d,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (d / "result.json").exists() and not (d / "failed.json").exists()
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_two_sweeps_on_one_folder_compute_each_run_once(tmp_path):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(textwrap.dedent(f"""\
        base:
          scenario: {json.dumps(SCEN)}
          backbone: {{name: mlp, hidden: 32}}
          protocol: {{name: offline, epochs: 4}}
        grid:
          strategy: [finetune, er]
          seed: [0, 1]
        report: false
        """))
    out = tmp_path / "o"
    cmd = [PY, "-m", "cl.cli", "sweep", str(sweep), "-j", "1", "--no-wandb", "-o", str(out)]
    ps = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in ps]
    computed = [ln for o in outs for ln in o.splitlines() if "] finished" in ln]
    ids = [ln.split(" finished")[1].split()[0].rstrip(":") for ln in computed]
    assert len(ids) == len(set(ids)), outs  # no run computed twice
    assert len(list(out.glob("*/result.json"))) + sum(o.count("] busy") for o in outs) >= 4


# ---------------------------------------------------------------- 8. bad values
@pytest.mark.parametrize("override,field", [
    ("protocol.epochs=-1", "epochs=-1"), ("strategy.lr=nan", "lr=nan"), ("strategy.buffer_size=-5", "buffer_size=-5"),
    ("strategy.lr=-1", "lr=-1.0"), ("protocol.batch_size=-4", "batch_size=-4"),
    ("protocol.eval_batch_size=0", "eval_batch_size=0"), ("threads=0", "threads=0")])
def test_bad_values_name_field_value_and_range(tmp_path, capsys, override, field):
    rc = cli(["run", "-s", "er", "-d", "gaussian", "--no-wandb", "-q", "-o", str(tmp_path), "--set", override])
    err = capsys.readouterr().err
    assert rc == 2 and field in err and "valid values are" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_duplicate_yaml_keys_are_file_line_errors(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("strategy: er\nprotocol: {name: offline}\nscenario: gaussian\nprotocol: {name: online}\n")
    assert cli(["run", str(f), "--no-wandb", "-o", str(tmp_path)]) == 2
    assert f"{f}:4: duplicate key 'protocol'" in capsys.readouterr().err
    s = tmp_path / "sweep.yaml"
    s.write_text("base:\n  strategy: er\n  strategy: finetune\n")
    assert cli(["sweep", str(s), "--dry-run"]) == 2
    assert f"{s}:3: duplicate key 'strategy'" in capsys.readouterr().err


@pytest.mark.parametrize("device,msg", [("foo", "not a device"), ("cuda:99", "GPU")])
def test_bad_device(tmp_path, capsys, device, msg):
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = "no usable CUDA GPU"
    assert cli(["run", "-s", "er", "-d", "gaussian", "--device", device, "--no-wandb", "-o", str(tmp_path)]) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("body,msg", [("def f(:\n", ":1: syntax error"), ("x = 1\nraise RuntimeError('boom')\n", ":2: RuntimeError: boom"),
                                      ("import sys\nsys.exit(4)\n", "SystemExit")])
def test_broken_plugin_files(tmp_path, capsys, body, msg):
    plug = tmp_path / "bad.py"
    plug.write_text(body)
    assert cli(["run", "--plugin", str(plug), "-s", "er", "-d", "gaussian", "--no-wandb", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert msg in err and "bad.py" in err


def test_unknown_strategy_says_how_to_load_one(capsys):
    assert cli(["run", "-s", "podnet-x", "-d", "gaussian", "--no-wandb"]) == 2
    assert "--plugin my_strategy.py" in capsys.readouterr().err


# ---------------------------------------------------------------- 9. faults at the edges
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_at_checkpoint_leaves_no_tmp_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _enospc)
    r = Run(cfg(), progress=False, out_dir=tmp_path).execute()
    assert r["status"] == "failed" and "No space left" in r["error"]
    assert r["saved"] == str(tmp_path / "failed.json") and (tmp_path / "failed.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_everywhere_never_points_at_a_missing_file(tmp_path, monkeypatch, capsys):
    from cl.train import loggers, results

    monkeypatch.setattr(torch, "save", _enospc)
    monkeypatch.setattr(loggers, "atomic_write_json", _enospc)
    r = Run(cfg(), progress=False, out_dir=tmp_path).execute()
    assert r["status"] == "failed" and r["saved"] is None and "cannot write" in r["save_error"]
    assert "nothing written" in results.saved_note(r) and not (tmp_path / "failed.json").exists()


def test_report_disk_full_leaves_no_truncated_csv(tmp_path, monkeypatch, capsys):
    import csv

    from cl.sweeps.report import make_report

    Run(cfg(), progress=False, out_dir=tmp_path / "r1").execute()
    orig = csv.writer

    def writer(f):
        w = orig(f)

        class W:
            def writerow(self, row):
                w.writerow(row)
                f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")

        return W()

    monkeypatch.setattr(csv, "writer", writer)
    rep = make_report(tmp_path, wandb=False, plots_on=False)
    assert rep["path"] is None and not (tmp_path / "report" / "runs.csv").exists()
    assert "cannot write the report" in capsys.readouterr().err


def test_read_only_results_folder(tmp_path, monkeypatch, capsys):
    """EROFS simulated (tests run as root, for whom chmod does not stop writes)."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base:\n  scenario: {json.dumps(SCEN)}\n  backbone: {{name: mlp, hidden: 32}}\n"
                     "grid:\n  strategy: [er]\n")
    out = tmp_path / "o"
    assert cli(["sweep", str(sweep), "--no-wandb", "-o", str(out), "-j", "0"]) == 0
    from cl.train import loggers

    def erofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(out))

    monkeypatch.setattr(loggers, "atomic_write_json", erofs)
    monkeypatch.setattr(Path, "mkdir", erofs)
    monkeypatch.setattr("tempfile.mkstemp", erofs)
    capsys.readouterr()
    assert cli(["sweep", str(sweep), "--no-wandb", "-o", str(out), "-j", "0"]) == 0  # all finished: reports
    assert cli(["report", str(out), "--no-wandb", "--no-plots"]) == 0
    assert cli(["run", "-s", "finetune", "-d", "gaussian", "--no-wandb", "-q", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Read-only file system" in err


def test_ctrl_c_is_interrupted_and_resumable(tmp_path, capsys):
    cls = strategies.get("er").obj
    orig = cls.before_experience

    def boom(self, exp):
        if exp.index == 1:
            raise KeyboardInterrupt
        return orig(self, exp)

    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base:\n  scenario: {json.dumps(SCEN)}\n  backbone: {{name: mlp, hidden: 32}}\n"
                     "grid:\n  strategy: [er, finetune]\n")
    out = tmp_path / "o"
    own = "before_experience" in cls.__dict__
    cls.before_experience = boom
    try:
        rc = cli(["sweep", str(sweep), "--no-wandb", "-o", str(out), "-j", "0"])
    finally:
        if own:
            cls.before_experience = orig
        else:
            del cls.before_experience
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err and err.strip().count("\n") == 0 and "interrupted" in err
    (d,) = [p for p in out.iterdir() if p.name.startswith("er-")]
    assert (d / "interrupted.json").exists() and not (d / "failed.json").exists()
    from cl.sweeps.status import run_status

    assert run_status(out, d.name) == "partial"
    assert cli(["sweep", str(sweep), "--no-wandb", "-o", str(out), "-j", "0", "--skip-failed"]) == 0
    r = json.loads((d / "result.json").read_text())
    assert r["status"] == "finished" and r["resumed"] and not (d / "interrupted.json").exists()


def test_report_on_wrong_shapes_and_empty_folders(tmp_path, capsys):
    from cl.sweeps.report import make_report

    (tmp_path / "empty").mkdir()
    assert cli(["report", str(tmp_path / "empty"), "--no-wandb"]) == 2
    assert "no results in" in capsys.readouterr().err
    Run(cfg(), progress=False, out_dir=tmp_path / "runs" / "ok").execute()
    for name, content in (("a", "[1, 2]"), ("b", '{"status": "finished", "metrics": [1]}'), ("c", '"x"'),
                          ("d", '{"run_id": 5, "config": "no", "status": "finished", "R": [[1]]}')):
        (tmp_path / "runs" / name).mkdir()
        (tmp_path / "runs" / name / "result.json").write_text(content)
    rep = make_report(tmp_path / "runs", wandb=False, plots_on=False)
    assert len(rep["failed"]) == 4 and "1 finished" in rep["markdown"]


def test_result_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Run(cfg(), progress=False, out_dir=tmp_path).execute()
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644


def test_nonfinite_loss_in_the_first_experience_message(tmp_path):
    r = Run(resolve(tiny({"name": "finetune", "lr": 1e38}, scenario=SCEN)), progress=False,
            out_dir=tmp_path).execute()
    if r["status"] == "failed":
        assert "experience -1" not in r["error"]
    from cl.train.engine import nonfinite_message

    assert "no experience was completed" in nonfinite_message(0, "epoch 0")
    assert "up to experience 1" in nonfinite_message(2, "epoch 0")
