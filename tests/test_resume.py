"""Resume inside a run: a run cut off at an experience boundary (or killed with SIGKILL mid-experience)
continues from its checkpoint and ends with exactly the result of an uninterrupted run on CPU."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cl.core.config import resolve
from cl.train.engine import Run
from cl.core.registry import strategies
from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
SCEN = {"name": "gaussian", "train_per_class": 30, "test_per_class": 10}

pytestmark = pytest.mark.usefixtures("restore_registry")


def _interrupt_at(strategy_name, index):
    """Make the strategy raise KeyboardInterrupt when experience ``index`` starts (after the checkpoint)."""
    cls = strategies.get(strategy_name).obj
    orig = cls.before_experience

    def boom(self, exp):
        if exp.index == index:
            raise KeyboardInterrupt
        return orig(self, exp)

    own = "before_experience" in cls.__dict__
    cls.before_experience = boom
    return (lambda: setattr(cls, "before_experience", orig)) if own else (lambda: delattr(cls, "before_experience"))


@pytest.mark.parametrize("strategy,protocol", [
    ("er", {"name": "offline", "epochs": 2}),
    ("er", {"name": "online"}),
    ("joint", {"name": "offline"}),  # keeps its data in plain attributes, not in state_dict
    ("test-memoriser", {"name": "online"}),  # ditto (defined in test_engine)
])
def test_resume_reproduces_uninterrupted_result(tmp_path, strategy, protocol):
    if strategy == "test-memoriser":
        import test_engine  # noqa: F401  (registers it)
    raw = tiny(strategy, protocol=protocol, scenario=SCEN,
               backbone="identity" if strategy == "test-memoriser" else "mlp")
    cfg = resolve(raw)
    full = Run(cfg, progress=False, out_dir=tmp_path / "full").execute()
    undo = _interrupt_at(strategy, 3)
    try:
        part = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    finally:
        undo()
    assert part["status"] == "interrupted" and len(part["R"]) == 3
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "result.json").exists()
    res = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    assert res["status"] == "finished" and res["resumed"]
    assert res["R"] == full["R"]
    for k in ("avg_acc", "forgetting", "avg_inc_acc"):
        assert res["metrics"].get(k) == full["metrics"].get(k)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()  # removed once the run finished
    assert res["metrics"].get("online_acc") == full["metrics"].get("online_acc")


def test_checkpoint_of_another_config_is_ignored(tmp_path):
    cfg = resolve(tiny("er", scenario=SCEN))
    undo = _interrupt_at("er", 2)
    try:
        Run(cfg, progress=False, out_dir=tmp_path / "r").execute()
    finally:
        undo()
    other = resolve(tiny("er", scenario=SCEN, seed=5))
    res = Run(other, progress=False, out_dir=tmp_path / "r").execute()
    assert res["status"] == "finished" and not res["resumed"]


PLUGIN = '''
import os, signal
from cl.core.strategy import register
from strategies.er import ER, ERConfig

@register("test-kill-er", ERConfig)
class KillER(ER):
    """ER that SIGKILLs its own process in the middle of experience $KILL_AT (when the variable is set)."""
    def after_step(self, x, y, t=None):
        super().after_step(x, y, t)
        self.n = getattr(self, "n", 0) + 1
        at = os.environ.get("KILL_AT")
        if at and self.n == int(at):
            os.kill(os.getpid(), signal.SIGKILL)
'''


def test_sigkill_mid_experience_then_resume_matches(tmp_path):
    plugin = tmp_path / "killer.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cl", "run", "-s", "test-kill-er", "-d", "gaussian", "-b", "mlp", "-q",
            "--plugin", str(plugin), "-o", str(out), "--no-wandb", "--set", "hidden=16",
            "--set", "train_per_class=30", "--set", "test_per_class=10", "--set", "protocol.epochs=2"]
    env = {**os.environ, "KILL_AT": "10", "OMP_NUM_THREADS": "1"}  # 60 samples/exp, 2 epochs: 4 steps/exp; step 10 is in exp 2
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    (run_dir,) = list(out.iterdir())
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    env.pop("KILL_AT")
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    import json

    resumed = json.loads((run_dir / "result.json").read_text())
    assert resumed["resumed"]
    # the uninterrupted reference, in this process with one thread like the subprocess
    import torch

    from cl.core.config import apply_overrides
    from cl.core.registry import load_plugin_file

    load_plugin_file(plugin)
    raw = {"strategy": "test-kill-er", "scenario": "gaussian", "backbone": "mlp", "wandb": "off", "out": str(out)}
    cfg = resolve(apply_overrides(raw, ["hidden=16", "train_per_class=30", "test_per_class=10", "protocol.epochs=2"]))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = Run(cfg, progress=False, out_dir=tmp_path / "ref").execute()
    finally:
        torch.set_num_threads(n)
    assert ref["run_id"] == run_dir.name and not ref["resumed"]
    assert ref["R"] == resumed["R"] and ref["metrics"]["avg_acc"] == resumed["metrics"]["avg_acc"]


@pytest.mark.parametrize("strategy", ["er-ace", "uer", "pec", "prd", "center-loss", "kalman", "ncm"])
def test_resume_exact_for_other_strategies(tmp_path, strategy):
    """Strategies keep their state in many ways (buffers, prototypes, frozen copies, filters, generators):
    the checkpoint's state_dict + attributes must cover them all."""
    try:
        strategies.get(strategy)
    except Exception:
        pytest.skip(f"{strategy} is not registered")
    bb = "identity" if strategy in ("kalman", "ncm") else "mlp"
    cfg = resolve(tiny(strategy, scenario={"name": "gaussian", "train_per_class": 12, "test_per_class": 4,
                                           "n_classes": 6, "n_tasks": 3}, backbone=bb))
    full = Run(cfg, progress=False, out_dir=tmp_path / "full").execute()
    undo = _interrupt_at(strategy, 2)
    try:
        Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    finally:
        undo()
    res = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    assert full["status"] == res["status"] == "finished" and res["resumed"]
    assert res["R"] == full["R"]
