import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cl.cli import main
from cl.train.wandb_files import read_run, run_files

ROOT = Path(__file__).resolve().parents[1]
FAST = ["-d", "gaussian", "-b", "mlp", "--set", "backbone.hidden=16", "-q"]


def test_unknown_strategy_names_it_and_suggests(capsys):
    assert main(["run", "-s", "err", *FAST, "--no-wandb"]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'err'" in err and "Did you mean 'er'?" in err and "finetune" in err


@pytest.mark.parametrize("args, expect", [
    (["-s", "er", "-d", "split-mnsit"], ["unknown scenario 'split-mnsit'", "split-mnist"]),
    (["-s", "er", "-d", "gaussian", "-b", "resnet"], ["unknown backbone 'resnet'", "resnet18r"]),
    (["-s", "er", "-d", "gaussian", "--set", "strategy.buffer_sz=3"], ["buffer_sz", "Did you mean 'buffer_size'"]),
    (["-s", "er", "-d", "gaussian", "--set", "strategy.buffer_size=lots"], ["cannot read 'lots' as int"]),
    (["-s", "er", "-d", "gaussian", "--set", "bogus=1"], ["unknown config key 'bogus'", "strategy.buffer_size"]),
    (["-s", "er", "-d", "gaussian", "--set", "strategy.optimizer=adamm"], ["unknown optimizer 'adamm'", "adam"]),
])
def test_bad_input_errors(args, expect, capsys, tmp_path):
    code = main(["run", *args, "-o", str(tmp_path), "--no-wandb", "-q"])
    err = capsys.readouterr().err
    assert code != 0
    for e in expect:
        assert e in err, err


def test_run_with_overrides_and_yaml(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text(textwrap.dedent("""
        strategy: {name: er, buffer_size: 50}
        scenario: gaussian
        backbone: {name: mlp, hidden: 16}
        protocol: {name: online}
        wandb: off
    """))
    assert main(["run", str(f), "--set", "replay_batch_size=4", "--seed", "3", "-o", str(tmp_path / "out"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "finished" in out
    (res,) = list((tmp_path / "out").glob("*/result.json"))
    cfg = json.loads(res.read_text())["config"]
    assert cfg["strategy"]["buffer_size"] == 50 and cfg["strategy"]["replay_batch_size"] == 4
    assert cfg["seed"] == 3 and cfg["protocol"]["batch_size"] == 10
    # the same run again is not recomputed
    assert main(["run", str(f), "--set", "replay_batch_size=4", "--seed", "3", "-o", str(tmp_path / "out"), "-q"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_list_shows_fields(capsys):
    assert main(["list", "strategies", "-v"]) == 0
    out = capsys.readouterr().out
    assert "er " in out and "buffer_size = 500" in out


PLUGIN = '''
from dataclasses import dataclass
from cl.core.strategy import Strategy, StrategyConfig, register

@dataclass
class MineConfig(StrategyConfig):
    scale: float = 2.0

@register("mine", MineConfig)
class Mine(Strategy):
    """A user's strategy living outside the project."""
    def loss(self, x, y, t=None):
        return self.cfg.scale * super().loss(x, y, t)
'''


def test_user_file_plugin_runs_from_the_cli(tmp_path, capsys):
    p = tmp_path / "my_strategy.py"
    p.write_text(PLUGIN)
    code = main(["run", "--plugin", str(p), "-s", "mine", "--set", "scale=3", *FAST, "-o", str(tmp_path / "o"),
                 "--no-wandb"])
    assert code == 0
    (res,) = list((tmp_path / "o").glob("mine-*/result.json"))
    assert json.loads(res.read_text())["config"]["strategy"]["scale"] == 3.0


def test_entry_point_plugin(tmp_path):
    """A strategy installed as a distribution with a `cl.strategies` entry point runs with no --plugin."""
    (tmp_path / "ep_strategy.py").write_text(PLUGIN.replace('"mine"', '"ep-mine"'))
    dist = tmp_path / "ep_strategy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-strategy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cl.strategies]\nep-mine = ep_strategy\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "cl", "run", "-s", "ep-mine", *FAST, "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "o").glob("ep-mine-*/result.json"))


def test_wandb_offline_run_holds_per_task_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    code = main(["run", "-s", "er", *FAST, "-o", str(tmp_path), "--set", "wandb=auto"])
    assert code == 0
    (f,) = run_files(tmp_path)
    for _ in range(100):  # wandb-core may still be writing the file for a moment after finish() returns
        run = read_run(f)
        keys = set().union(*run["history"])
        if "forgetting/task_3" in keys:
            break
        time.sleep(0.2)
    assert {f"forgetting/task_{j}" for j in range(4)} <= keys
    assert {f"acc/task_{j}" for j in range(5)} <= keys and "avg_acc" in keys
    last = [h for h in run["history"] if "forgetting/task_3" in h][-1]
    res = json.loads(next(tmp_path.glob("*/result.json")).read_text())
    assert last["forgetting/task_0"] == pytest.approx(res["metrics"]["forgetting_per_task"][0])
    assert run["config"]["strategy"]["name"] == "er"
