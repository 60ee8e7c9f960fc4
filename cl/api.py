"""The Python API: one run from Python, the same lifecycle the CLI and the sweep executors use.

    import cl
    result = cl.fit(strategy="er", scenario="split-mnist", backbone="mlp", protocol="offline", seed=0,
                    buffer_size=200, lr=0.05, epochs=1)
    result.R                    # accuracy matrix, R[i][j]
    result.metrics.avg_acc      # typed metrics (formulas below)
    result.timings.wall_time
    result.paths.result         # results/<run id>/result.json

Keyword overrides are config fields: a bare name that belongs to one section (``lr``, ``buffer_size``,
``epochs``), or a section's mapping (``strategy={"name": "er", "lr": 0.05}``).  :func:`run` takes a
resolved config (:func:`cl.core.config.resolve`) and is what ``cl run`` and the executors call.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from cl.core.config import SECTIONS, apply_overrides, load_yaml, resolve


@dataclass
class Metrics:
    """The metrics of one run.  ``R[i][j]`` is the accuracy on experience j's test data after training on
    experiences 0..i; T is the number of rows (experiences trained).  Accuracies are fractions in [0, 1]."""

    avg_acc: float = float("nan")
    """A_T = (1/T) sum_{j<T} R[T-1][j]: accuracy averaged over the experiences seen, after the last one."""
    avg_inc_acc: float = float("nan")
    """(1/T) sum_{t<T} acc_t, acc_t the accuracy on the test data of experiences 0..t after t (sample-weighted
    over their test sets; iCaRL's average incremental accuracy)."""
    forgetting: float = float("nan")
    """F = (1/(T-1)) sum_{j<T-1} (max_{l<T-1} R[l][j] - R[T-1][j]) (Chaudhry et al. 2018); 0 for T = 1."""
    bwt: float = float("nan")
    """BWT = (1/(T-1)) sum_{i<T-1} (R[T-1][i] - R[i][i]) (GEM); negative means forgetting."""
    fwt: float | None = None
    """FWT = (1/(T-1)) sum_{i>=1} (R[i-1][i] - b_i), b_i the untrained model's accuracy (protocol.fwt only)."""
    online_acc: float | None = None
    """Online protocol: prequential accuracy, correct predictions of incoming samples (each predicted before it
    is learned) over all samples of the stream."""
    anytime_auc: float | None = None
    """Online protocol with eval_every: area under the anytime-accuracy curve over samples seen, divided by its
    length (Koh et al. 2022)."""
    near_future_acc: float | None = None
    """Online protocol with near_future_shift: accuracy on the batch S steps ahead, before learning it."""
    forgetting_per_task: list = field(default_factory=list)
    """f_j = max_{l<T-1} R[l][j] - R[T-1][j] for each j < T-1."""
    extra: dict = field(default_factory=dict)
    """Every other metric of the result file (the protocol's, the strategy's ``extra_metrics``)."""


@dataclass
class Timings:
    """Seconds and rates of one run."""

    wall_time: float = 0.0  #: everything the run waited for: setup (data, encoding, model), training, evaluation
    setup_time: float = 0.0  #: loading the scenario, encoding it with a frozen backbone, building model and strategy
    encode_time: float = 0.0  #: encoding with the frozen backbone (feature-cache reads included; 0 if none)
    feature_cache: str | None = None  #: frozen backbones: hit | miss | partial | off
    run_time: float = 0.0  #: from the first evaluation or training step to the end (wall_time before 13.9)
    train_time: float = 0.0  #: training, the strategy's boundary hooks included
    eval_time: float = 0.0  #: evaluation after each experience
    train_samples_per_s: float = 0.0
    peak_memory_mb: float = 0.0


@dataclass
class Paths:
    run_dir: Path
    result: Path  #: result.json (finished) or failed.json (failed or interrupted)
    checkpoint: Path


@dataclass
class RunResult:
    """What :func:`fit` and :func:`run` return."""

    run_id: str
    status: str  #: finished | failed | interrupted
    R: list
    metrics: Metrics
    timings: Timings
    paths: Paths
    config: dict  #: the resolved config
    skipped: bool = False  #: an earlier process had finished this run; its result file was read back
    error: str | None = None
    raw: dict = field(default_factory=dict, repr=False)  #: the result file's contents

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @classmethod
    def from_result(cls, result: dict, run_dir: Path, skipped: bool = False) -> "RunResult":
        m = dict(result.get("metrics") or {})
        named = {f.name for f in fields(Metrics)} - {"extra"}
        timing = {f.name for f in fields(Timings)}
        metrics = Metrics(**{k: m[k] for k in named if k in m},
                          extra={k: v for k, v in m.items() if k not in named and k not in timing})
        timings = Timings(**{k: m[k] for k in timing if k in m})
        run_dir = Path(run_dir)
        outcome = {"finished": "result.json", "interrupted": "interrupted.json"}.get(result.get("status"), "failed.json")
        paths = Paths(run_dir, run_dir / outcome, run_dir / "checkpoint.pt")
        return cls(result["run_id"], result.get("status", "failed"), result.get("R") or [], metrics, timings, paths,
                   result.get("config") or {}, skipped, result.get("error"), result)


def run(resolved: dict, *, progress: bool = False, force: bool = False, out_dir=None, wait: bool = False) -> RunResult:
    """Run one resolved config through the run lifecycle (:class:`cl.train.engine.Run`). A run whose
    ``result.json`` parses and matches its id is read back instead (``skipped``) unless ``force``; a run
    that another process is computing is waited for (``wait``) or returned with status ``busy``."""
    from cl.train.engine import Run
    from cl.train.results import finished_result

    r = Run(resolved, progress=progress, out_dir=out_dir, force=force, wait=wait)
    done = None if force else finished_result(r.dir, r.id, move=False)
    if done is not None:
        return RunResult.from_result(done, r.dir, skipped=True)
    result = r.execute()
    return RunResult.from_result(result, r.dir, skipped=bool(result.get("skipped")))


def fit(strategy: str | dict | None = None, scenario: str | dict | None = None, backbone: str | dict | None = None,
        protocol: str | dict | None = None, seed: int = 0, *, config: str | dict | None = None,
        out: str | None = None, device: str | None = None, wandb: bool | str = False, progress: bool = False,
        force: bool = False, plugins=(), **overrides) -> RunResult:
    """Train ``strategy`` on ``scenario`` and return its :class:`RunResult`.

    ``config``: a run file (YAML path) or a raw config dict to start from; the named arguments replace its
    sections.  ``overrides``: config fields by bare name (``lr=0.05``) -- a name in more than one section is
    an error that lists the qualified choices; pass that section's mapping instead.  ``plugins``: Python files
    that register strategies, scenarios or backbones.  W&B is off unless ``wandb`` is True or a mode string.
    Bad input raises :class:`cl.core.registry.ConfigError` naming the field and the valid choices."""
    from cl.core.registry import load_plugin_file

    for p in plugins:
        load_plugin_file(p)
    raw = load_yaml(config) if isinstance(config, (str, Path)) else dict(config or {})
    for name, val in zip(SECTIONS, (strategy, scenario, backbone, protocol)):
        if val is None:
            continue
        if isinstance(val, str):
            cur = raw.get(name)
            val = {**(cur if isinstance(cur, dict) else {}), "name": val}
        raw[name] = val
    raw["seed"] = seed
    if out is not None:
        raw["out"] = out
    if device is not None:
        raw["device"] = device
    raw["wandb"] = ("auto" if wandb is True else wandb) if wandb else "off"
    sets = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in overrides.items()]
    return run(resolve(apply_overrides(raw, sets)), progress=progress, force=force)
