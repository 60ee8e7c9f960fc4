"""Issue 11, item 2: a checkpoint holds a strategy's declared state only, loads with weights_only=True, and
that state is complete: for every registered strategy, resuming from the experience boundary gives bitwise
the R of an uninterrupted run on CPU, and every attribute of the strategy (and of its model) is the same
after the restore as it was when the checkpoint was written."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn as nn

from cl.core.config import resolve
from cl.core.registry import strategies
from cl.core.strategy import Strategy, register
from cl.train import checkpoint
from cl.train.engine import Run

pytestmark = pytest.mark.usefixtures("restore_registry")

GAUSS = {"name": "gaussian", "n_tasks": 2, "n_classes": 4, "train_per_class": 12, "test_per_class": 6}
VIT = {"name": "vit-tiny", "depth": 1, "embed_dim": 24, "num_heads": 2, "patch_size": 8, "img_size": 16}
CORE = {"cfg", "model", "optimizer", "info", "device", "augment"}
WEIGHTS_ERRORS = ("pretrained", "weights", "huggingface", "hf_hub", "offline", "download", "no such file")


def _snap(v, depth=0):
    """A comparable picture of a value: tensors by dtype, shape and bytes; modules and buffers by state_dict."""
    if depth > 6:
        return "..."
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        return ("tensor", str(t.dtype), tuple(t.shape), t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                if t.numel() else b"")
    if isinstance(v, torch.Generator):
        return ("generator", _snap(v.get_state(), depth + 1))
    if isinstance(v, nn.Module):
        return ("module", type(v).__name__, v.training, {k: _snap(x, depth + 1) for k, x in v.state_dict().items()})
    if isinstance(v, torch.optim.Optimizer):
        return ("optimizer", _snap(v.state_dict(), depth + 1))
    if isinstance(v, dict):
        return {str(k): _snap(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_snap(x, depth + 1) for x in v]
    if isinstance(v, float):
        return ("float", v.hex())
    if isinstance(v, (int, str, bool, type(None), bytes)):
        return v
    if callable(v) or isinstance(v, type):
        return ("callable", getattr(v, "__qualname__", type(v).__qualname__))
    if hasattr(v, "state_dict") and callable(v.state_dict):
        return ("state_dict", _snap(v.state_dict(), depth + 1))
    if hasattr(v, "__dict__"):
        return (type(v).__qualname__, {k: _snap(x, depth + 1) for k, x in vars(v).items()})
    return repr(v)


def snapshot(strategy) -> dict:
    """Every attribute of the strategy but the engine's, and the plain attributes of its model's modules."""
    skip = CORE | {a for c in type(strategy).__mro__ for a in vars(c).get("transient_attrs", ())}  # over the hierarchy
    out = {f"strategy.{k}": _snap(v) for k, v in vars(strategy).items() if k not in skip}
    for name, m in strategy.model.named_modules():
        for k, v in vars(m).items():
            if not k.startswith("_") and k != "training" and f"model.{k}" not in skip:
                out[f"model{'.' + name if name else ''}.{k}"] = _snap(v)
    return out


def differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _configs(name):
    yield {"strategy": {"name": name}, "scenario": GAUSS, "backbone": {"name": "mlp", "hidden": 16}}
    # task-incremental (multi-head methods: PNN, PackNet, HAT, RMN, HNET need task ids)
    yield {"strategy": {"name": name}, "scenario": {**GAUSS, "task_labels": True}, "backbone": {"name": "mlp", "hidden": 16}}
    import test_strategies2_engine  # noqa: F401  (registers s2-tiny-images)

    yield {"strategy": {"name": name}, "scenario": {"name": "s2-tiny-images"}, "backbone": VIT}


def boundary_check(tmp_path, name, monkeypatch):
    """Run uninterrupted (copying the boundary checkpoint and snapshotting the strategy as it is written),
    then resume a second run from that copy. Returns (full result, resumed result, snapshot diffs)."""
    errors = []
    for i, raw in enumerate(_configs(name)):
        raw.update(protocol={"name": "offline", "epochs": 1, "batch_size": 8}, wandb="off")
        try:
            cfg = resolve(raw)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
            continue
        full_dir, cut_dir = tmp_path / f"full{i}", tmp_path / f"cut{i}"
        saved = {}
        orig_save, orig_load = checkpoint.save, checkpoint.load

        def save(path, run_id, config, strategy, state):
            orig_save(path, run_id, config, strategy, state)
            if "at_save" not in saved:
                cut_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, cut_dir / "checkpoint.pt")
                saved["at_save"] = snapshot(strategy)

        def load(path, run_id, strategy, device):
            st = orig_load(path, run_id, strategy, device)
            saved["at_load"] = snapshot(strategy)
            return st

        monkeypatch.setattr(checkpoint, "save", save)
        monkeypatch.setattr(checkpoint, "load", load)
        try:
            full = Run(cfg, progress=False, out_dir=full_dir).execute()
        except Exception as e:  # noqa: BLE001 - a configuration this strategy cannot build
            monkeypatch.setattr(checkpoint, "save", orig_save)
            monkeypatch.setattr(checkpoint, "load", orig_load)
            errors.append(f"{type(e).__name__}: {e}")
            continue
        if full["status"] != "finished":
            errors.append(full.get("error", ""))
            continue
        assert "at_save" in saved, f"{name}: no checkpoint at the experience boundary"
        res = Run(cfg, progress=False, out_dir=cut_dir).execute()
        monkeypatch.setattr(checkpoint, "save", orig_save)
        monkeypatch.setattr(checkpoint, "load", orig_load)
        assert res["status"] == "finished", res.get("traceback") or res.get("error")
        assert res["resumed"], f"{name}: the second run did not resume from the checkpoint"
        return full, res, differences(saved["at_save"], saved["at_load"])
    if any(any(w in e.lower() for w in WEIGHTS_ERRORS) for e in errors):
        pytest.skip(f"{name} needs weights that are not available here: {errors[-1][:200]}")
    pytest.fail(f"{name}: no tiny configuration runs: {errors}")


def _project_strategies() -> list[str]:
    """Every registered strategy except the throw-away ones that other test modules register (those are
    fixtures with deliberately partial state, and which of them exist depends on the collection order)."""
    return [n for n in strategies.names()
            if not strategies.get(n).obj.__module__.split(".")[-1].startswith(("test_", "conftest"))]


@pytest.mark.parametrize("name", _project_strategies())
def test_every_strategy_resumes_bitwise_with_declared_state(tmp_path, monkeypatch, name):
    full, res, diff = boundary_check(tmp_path, name, monkeypatch)
    assert not diff, (f"{name}: attributes not covered by its declared state (state_attrs / extra_state), "
                      f"or not restored: {diff}")
    assert [[None if a is None else float(a).hex() for a in r] for r in res["R"]] == [[None if a is None else float(a).hex() for a in r] for r in full["R"]]


class Counting(Strategy):
    """Counts its steps in an attribute it does not declare."""

    def setup(self):
        self.steps = 0

    def after_step(self, x, y, t=None):
        self.steps += 1


def test_an_undeclared_attribute_is_caught(tmp_path, monkeypatch):
    register("test-undeclared")(Counting)
    _, _, diff = boundary_check(tmp_path, "test-undeclared", monkeypatch)
    assert diff == ["strategy.steps"]
    Counting.state_attrs = ("steps",)  # declared: restored, and the check passes
    try:
        _, _, diff = boundary_check(tmp_path / "declared", "test-undeclared", monkeypatch)
    finally:
        Counting.state_attrs = ()
    assert diff == []


def test_checkpoint_loads_with_weights_only_and_holds_declared_state_once(tmp_path):
    cfg = resolve({"strategy": {"name": "er", "buffer_size": 20}, "scenario": GAUSS,
                   "backbone": {"name": "mlp", "hidden": 16}, "wandb": "off",
                   "protocol": {"name": "offline", "epochs": 1}})
    keep = {}
    orig = checkpoint.save

    def save(path, *a):
        orig(path, *a)
        keep.setdefault("ck", torch.load(path, weights_only=True))

    checkpoint.save = save
    try:
        Run(cfg, progress=False, out_dir=tmp_path).execute()
    finally:
        checkpoint.save = orig
    ck = keep["ck"]
    assert "attrs" not in ck  # no attribute heuristic: the buffer is saved once, in the strategy's state
    assert set(ck["strategy"]["extra"]) == {"buffer", "exp_index"} and isinstance(ck["strategy"]["extra"]["exp_index"], int)


def test_not_plain_state_is_an_error_naming_it(tmp_path):
    class Holder:
        pass

    with pytest.raises(checkpoint.NotPlainState, match=r"extra\.thing: .*Holder is not a tensor"):
        checkpoint.encode({"extra": {"thing": Holder()}}, "strategy")
