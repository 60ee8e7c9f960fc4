"""Running sweeps: SIGKILL of a local sweep's whole process group and restart, failed runs, the Ray executor."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cl.sweeps.runner import run_sweep
from cl.sweeps.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("restore_registry")


PLUGIN = '''
import time
from cl.core.strategy import register
from strategies.er import ER, ERConfig

@register("test-slow-er", ERConfig)
class SlowER(ER):
    """ER that sleeps at each experience boundary, so that a sweep can be killed in the middle of a run."""
    def after_experience(self, exp):
        time.sleep(0.12)

@register("test-sleepy-er", ERConfig)
class SleepyER(ER):
    """ER that sleeps 2 s at each experience boundary: a signal surely finds its runs in progress."""
    def after_experience(self, exp):
        time.sleep(2.0)

@register("test-die-once", ERConfig)
class DieOnce(ER):
    """Kills its own worker process at experience 2 the first time (a lost worker)."""
    def before_experience(self, exp):
        import os
        from pathlib import Path
        marker = Path(os.environ["CL_TEST_DIE_MARKER"])
        if exp.index == 2 and not marker.exists():
            marker.write_text("died")
            os._exit(3)

@register("test-crash", ERConfig)
class Crash(ER):
    """Crashes in its first step."""
    def train_step(self, x, y, t=None):
        raise RuntimeError("boom from test-crash")
'''


def sweep_file(tmp_path, out, strategies="[finetune, test-slow-er]", seeds="[0, 1, 2]"):
    f = tmp_path / "sweep.yaml"
    f.write_text(textwrap.dedent(f"""
    name: killtest
    out: {out}
    base:
      backbone: {{name: mlp, hidden: 16}}
      scenario: {{name: gaussian, train_per_class: 20, test_per_class: 10}}
      wandb: off
    grid:
      strategy: {strategies}
      seed: {seeds}
    strategies:
      test-slow-er: {{buffer_size: 40}}
    """))
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    return str(f), str(plugin)


def live_members(pgid: int) -> list[int]:
    """Processes of the group that are still running (zombies awaiting a reaper do not count)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def results(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in Path(out).glob("*/result.json")}


def reference(tmp_path, plugin):
    """The uninterrupted sweep, in this process (one thread, as each of the two local workers)."""
    import torch

    from cl.sweeps.executors import LocalExecutor
    from cl.core.registry import load_plugin_file

    load_plugin_file(plugin)
    (tmp_path / "ref_cfg").mkdir()
    f, _ = sweep_file(tmp_path / "ref_cfg", tmp_path / "ref")
    n = torch.get_num_threads()
    try:
        run_sweep(load_sweep(f), LocalExecutor(workers=0, threads=1), log=lambda s: None)
    finally:
        torch.set_num_threads(n)
    return results(tmp_path / "ref")


def test_sigkill_local_sweep_then_restart_loses_nothing_and_reruns_nothing(tmp_path):
    out = tmp_path / "out"
    f, plugin = sweep_file(tmp_path, out)
    cmd = [sys.executable, "-m", "cl", "sweep", f, "--workers", "2", "--plugin", plugin, "--no-report"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    deadline = time.time() + 90
    killed_with = None
    try:
        while time.time() < deadline and p.poll() is None:
            done = list(out.glob("*/result.json"))
            partial = [c for c in out.glob("*/checkpoint.pt") if not (c.parent / "result.json").exists()]
            if len(done) >= 2 and partial:
                os.killpg(p.pid, signal.SIGKILL)  # the driver and both workers
                killed_with = (len(done), len(partial))
                break
            time.sleep(0.01)
    finally:
        if p.poll() is None and killed_with is None:
            os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert killed_with is not None, "the sweep finished before it could be killed"
    # nothing is left running in the group
    time.sleep(0.2)
    assert not live_members(p.pid)
    before = {rid: (out / rid / "result.json").stat().st_mtime_ns for rid in results(out)}
    assert len(before) >= 2

    p2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert f"{len(before)} already finished" in p2.stdout
    after = results(out)
    for rid, mtime in before.items():  # finished runs were not run again
        assert (out / rid / "result.json").stat().st_mtime_ns == mtime
    assert sum(1 for r in after.values() if r["resumed"]) >= 1  # the cut-off run(s) resumed
    ref = reference(tmp_path, plugin)
    assert set(after) == set(ref) and len(ref) == 6
    for rid in ref:
        assert after[rid]["R"] == ref[rid]["R"], rid
        assert after[rid]["metrics"]["avg_acc"] == ref[rid]["metrics"]["avg_acc"]
    assert not list(out.glob("*/checkpoint.pt")) and not list(out.glob("*/failed.json"))



def test_sigterm_to_the_driver_interrupts_its_runs_and_leaves_no_process(tmp_path):
    """``kill PID`` (or a scheduler's preemption) of the driver alone: like Ctrl-C, each running run is recorded
    as interrupted, the workers stop, the command exits 130 without a traceback, and a rerun resumes."""
    out = tmp_path / "out"
    f, plugin = sweep_file(tmp_path, out, strategies="[test-sleepy-er]", seeds="[0, 1]")
    cmd = [sys.executable, "-m", "cl", "sweep", f, "--workers", "2", "--plugin", plugin, "--no-report"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True, text=True)
    sent = False
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if len(list(out.glob("*/checkpoint.pt"))) == 2:  # both runs past their first boundary
                os.kill(p.pid, signal.SIGTERM)  # the driver only, not its group
                sent = True
                break
            time.sleep(0.02)
        text, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert sent, "the sweep finished before the signal"
    assert p.returncode == 130, text
    assert "Traceback" not in text and "interrupted" in text
    time.sleep(0.5)
    assert not live_members(p.pid)  # no worker (nor fork server) outlives the driver
    assert len(list(out.glob("*/interrupted.json"))) == 2 and not list(out.glob("*/result.json"))
    p2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    done = results(out)
    assert len(done) == 2 and all(r["status"] == "finished" and r["resumed"] for r in done.values())

def test_crashing_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    from cl.cli import main

    out = tmp_path / "out"
    f, plugin = sweep_file(tmp_path, out, strategies="[finetune, test-crash]", seeds="[0]")
    rc = main(["sweep", f, "--workers", "0", "--plugin", plugin])
    text = capsys.readouterr().out
    assert rc == 1
    crash = [d for d in out.iterdir() if d.name.startswith("test-crash")]
    assert len(crash) == 1
    failed = json.loads((crash[0] / "failed.json").read_text())
    assert failed["status"] == "failed" and "boom from test-crash" in failed["traceback"]
    assert not (crash[0] / "result.json").exists()
    assert len(results(out)) == 1  # finetune finished
    assert "1 failed" in text and "| finetune |" in text  # the report still prints, and names the failure
    assert "boom from test-crash" in (out / "report" / "report.md").read_text()


def test_ray_executor_matches_local(tmp_path):
    pytest.importorskip("ray")
    from cl.sweeps.executors import LocalExecutor, RayExecutor

    from cl.core.registry import load_plugin_file

    f, plugin = sweep_file(tmp_path, tmp_path / "ray", strategies="[finetune, er]", seeds="[0, 1]")
    load_plugin_file(plugin)  # the file has overrides for a test strategy
    sw = load_sweep(f)
    run_sweep(sw, RayExecutor(workers=2, threads=1), log=lambda s: None)
    got = results(tmp_path / "ray")
    sw_local = load_sweep(f, out=str(tmp_path / "local"))
    import torch

    n = torch.get_num_threads()
    try:
        run_sweep(sw_local, LocalExecutor(workers=0, threads=1), log=lambda s: None)
    finally:
        torch.set_num_threads(n)
    ref = results(tmp_path / "local")
    assert set(got) == set(ref) and len(ref) == 4
    for rid in ref:
        assert got[rid]["R"] == ref[rid]["R"]


def test_workers_get_the_drivers_environment_of_now_not_the_fork_servers(tmp_path, monkeypatch):
    """A first sweep starts the process's fork server; a variable set after that must reach the workers of the
    next sweep (a forkserver child inherits the server's environment, frozen when it started)."""
    from cl.sweeps.executors import LocalExecutor
    from cl.core.registry import load_plugin_file

    f, plugin = sweep_file(tmp_path, tmp_path / "out0", strategies="[finetune]", seeds="[0]")
    load_plugin_file(plugin)
    monkeypatch.delenv("CL_TEST_DIE_MARKER", raising=False)
    first = run_sweep(load_sweep(f), LocalExecutor(workers=1, threads=1, plugins=[plugin]), log=lambda s: None)
    assert not first["failed"]
    g = tmp_path / "again"
    g.mkdir()
    f2, _ = sweep_file(g, tmp_path / "out1", strategies="[test-die-once]", seeds="[0]")
    monkeypatch.setenv("CL_TEST_DIE_MARKER", str(tmp_path / "marker"))  # read by the worker (KeyError without)
    second = run_sweep(load_sweep(f2), LocalExecutor(workers=1, threads=1, plugins=[plugin]), log=lambda s: None)
    assert not second["failed"] and (tmp_path / "marker").read_text() == "died"


def test_lost_local_worker_is_replaced_and_its_run_resumes(tmp_path, monkeypatch, capsys):
    from cl.sweeps.executors import LocalExecutor
    from cl.core.registry import load_plugin_file

    f, plugin = sweep_file(tmp_path, tmp_path / "out", strategies="[test-die-once]", seeds="[0]")
    load_plugin_file(plugin)
    monkeypatch.setenv("CL_TEST_DIE_MARKER", str(tmp_path / "marker"))
    summary = run_sweep(load_sweep(f), LocalExecutor(workers=1, threads=1, plugins=[plugin]), log=lambda s: None)
    assert not summary["failed"] and (tmp_path / "marker").exists()
    assert "died (exit code 3)" in capsys.readouterr().err
    (res,) = results(tmp_path / "out").values()
    assert res["resumed"]  # the retry continued from the checkpoint of experience 1
