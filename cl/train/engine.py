"""The run lifecycle: one strategy on one scenario under a protocol, in named phases.

    run = Run(resolved)              # a resolved config (cl.core.config.resolve)
    run.execute()                    # = the phases below, returns the result dict

    setup()              seed, device, scenario (cached features for frozen backbones), model, strategy
    restore()            continue from this run's checkpoint, if there is one
    train_experience(i)  before_experience, the protocol's loop (offline or online), after_experience
    evaluate(i)          row i of R: accuracy on every experience's test data; logged
    checkpoint(i)        at the experience boundary (every RNG state included)
    finish(status)       metrics, timings, the result file, loggers closed

The protocol's training loop sits behind one interface (:class:`cl.train.loop.Loop`); the state
carried across experiences is a typed dataclass (:class:`cl.train.state.RunState`).  Loggers
(progress bar, result file, W&B) receive events and cannot fail the run.
"""
from __future__ import annotations

import contextlib
import functools
import platform
import random
import resource
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

import cl.core.metrics as M
from cl.core.config import run_id as make_run_id, section_config
from cl.core.registry import ConfigError, scenarios, strategies
from cl.core.streams import HiddenBoundary
from cl.core.strategy import RunInfo, uses_frozen_features
from cl.models.backbones import backbone_spec, build_backbone
from cl.models.model import (attach_preprocess, check_mask_unseen, model_preprocess, preprocess_factory,
                            trainable_parameters)
from cl.train import checkpoint
from cl.train.evaluate import class_masks, evaluate
from cl.train.loggers import Events, Progress, ResultFile, WandbLogger
from cl.train.loop import Loop, NonFiniteLoss, RunContext, nonfinite_message  # noqa: F401 (re-exported)
from cl.train.offline import OfflineLoop
from cl.train.online import OnlineLoop
from cl.train.state import RunState

LOOPS = {"offline": OfflineLoop, "online": OnlineLoop}


def resolve_device(name: str) -> torch.device:
    from cl.core.config import check_device

    check_device(name, available=True)
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("cl-platform", "timm", "peft", "avalanche-lib", "wandb", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=None)
def code_commit() -> str | None:
    """The git commit of the platform's code (``abc1234567``, ``+dirty`` with uncommitted tracked changes),
    or None outside a git checkout (an installed wheel)."""
    import subprocess

    where = str(Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "-C", where, "rev-parse", "--short=10", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_model(strategy_cls, scfg, resolved, scenario, device) -> torch.nn.Module:
    """The strategy's network (``Strategy.build_model``: backbone + head by default) on ``device``, carrying
    its input preprocessing (the backbone's own for pretrained backbones, else the scenario's)."""
    name, bcfg = backbone_spec(resolved)
    if scenario.modality == "features" and uses_frozen_features(strategy_cls, scfg):
        name, bcfg = "identity", None  # the frozen backbone already ran (cl.models.features.featurize)
    backbone = build_backbone(name, bcfg, scenario.input_shape)
    model = strategy_cls.build_model(scfg, backbone, scenario)
    check_mask_unseen(model, scfg, resolved["strategy"]["name"])
    attach_preprocess(model, preprocess_factory(backbone, scenario))
    return model.to(device)


def _to_device(scenario, device):
    for e in scenario.experiences:
        for name in ("train_x", "train_y", "test_x", "test_y", "train_t", "test_t"):
            v = getattr(e, name)
            if isinstance(v, torch.Tensor):
                setattr(e, name, v.to(device, non_blocking=True))


def encoding_report(seconds: float, stats: dict) -> dict:
    """What encoding the scenario with the frozen backbone cost: seconds (cache reads included), seconds of
    backbone compute, and whether the feature cache was hit (hit | miss | partial | off)."""
    hits, misses = stats.get("hits", 0), stats.get("misses", 0)
    cache = "off" if not hits and not misses else "hit" if not misses else "miss" if not hits else "partial"
    return {"encode_time": seconds, "encode_compute_time": stats.get("compute_s", 0.0),
            "features_computed": stats.get("computed", 0), "feature_cache": cache}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Run:
    """One platform run. ``Run(resolved).execute()`` returns the result dict and writes the result files."""

    def __init__(self, resolved: dict, progress: bool = True, out_dir: str | Path | None = None,
                 force: bool = False, wait: bool = False):
        self.force, self.wait = force, wait  # recompute a finished run; wait for another process's run
        self.cfg = resolved
        self.id = make_run_id(resolved)
        self.dir = Path(out_dir) if out_dir is not None else Path(resolved.get("out") or "results") / self.id
        self.progress_enabled = progress
        self.state = RunState()
        self.resumed = False
        self.pred_counts: torch.Tensor | None = None  # classes predicted by the last evaluation (prediction_report)
        self.loop: Loop | None = None

    # -- files ----------------------------------------------------------------------------------
    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    # -- phases ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Seed, device, scenario on the device (features of a frozen backbone from the cache), model, strategy."""
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg["seed"])
        self.device = device = resolve_device(cfg.get("device"))
        self.protocol = pcfg = section_config(cfg, "protocol")
        scfg = section_config(cfg, "strategy")
        strategy_cls = strategies.get(cfg["strategy"]["name"]).obj
        scenario = scenarios.get(cfg["scenario"]["name"]).obj(section_config(cfg, "scenario"), cfg["seed"])
        self.encoding = {"encode_time": 0.0}
        if uses_frozen_features(strategy_cls, scfg):
            from cl.models.features import LAST_STATS, featurize  # the feature cache (pretrained frozen backbones)

            t0 = time.perf_counter()
            scenario = featurize(scenario, cfg, device)
            self.encoding = encoding_report(time.perf_counter() - t0, LAST_STATS)
        _to_device(scenario, device)
        self.scenario = scenario
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        info = RunInfo(n_classes=scenario.n_classes, input_shape=scenario.input_shape, device=device,
                       seed=cfg["seed"], setting=scenario.setting, boundaries=scenario.boundaries,
                       protocol=pcfg.name, n_experiences=len(scenario),
                       epochs=pcfg.epochs if pcfg.name == "offline" else 1)
        model = build_model(strategy_cls, scfg, cfg, scenario, device)
        self.strategy = strategy = strategy_cls(scfg, model, info)
        strategy.setup()  # its own checks first: their messages say why it needs boundaries
        if scenario.boundaries != "visible" and not strategy_cls.runs_task_free():
            raise ConfigError(
                f"strategy {cfg['strategy']['name']!r} learns at experience boundaries (it overrides "
                f"{', '.join(strategy_cls.boundary_hooks())}), "
                f"which scenario.boundaries={scenario.boundaries!r} hides; valid choice: scenario.boundaries=visible, "
                f"or a task-free strategy (docs/strategies-ocl3.md lists them)")
        if strategy.augment is None and scenario.modality == "image":  # on-device augmentation (cl/data/augment.py)
            from cl.data.augment import augment_for
            strategy.augment = augment_for(scenario, device)
        self.preprocess = model_preprocess(model, device)
        masks = class_masks(scenario, device) if scenario.task_aware else None
        self.evaluate_fn = lambda exps, counts=None: evaluate(  # noqa: E731
            strategy, exps, self.preprocess, pcfg.eval_batch_size, scenario.task_aware, device, masks,
            by_length=scenario.modality == "text", cpu_bf16=pcfg.eval_amp, pred_counts=counts)

    def restore(self) -> bool:
        """Continue from this run's checkpoint (strategy, RNGs, run state) when there is one that matches."""
        if self.protocol.checkpoint and self.checkpoint_path.exists():
            loaded = checkpoint.load(self.checkpoint_path, self.id, self.strategy, self.device)
            if loaded is not None:
                self.state, self.resumed = RunState.from_dict(loaded), True
        return self.resumed

    def open_loggers(self) -> Events:
        """Progress bar, result file and W&B, behind one guarded fan-out."""
        cfg = self.cfg
        loggers = [WandbLogger(cfg, self.id, self.dir)]
        try:
            loggers.insert(0, Progress(self.progress_enabled, f"{cfg['strategy']['name']} on {cfg['scenario']['name']}"))
        except Exception as e:  # pragma: no cover - a terminal problem never fails the run
            import warnings

            warnings.warn(f"no progress bar: {type(e).__name__}: {e}")
        loggers.insert(-1, ResultFile(self.dir))
        self.events = Events(loggers)
        self.ctx = RunContext(self.strategy, self.scenario, self.protocol, self.preprocess, self.device,
                              self.evaluate_fn, self.events)
        return self.events

    def train_experience(self, i: int) -> None:
        """The strategy's boundary hooks around the protocol's loop; training time and samples counted."""
        exp, st, device = self.scenario[i], self.state, self.device
        # on a task-free stream the hooks learn only that an evaluation point is reached, not what the data is
        seen = exp if self.scenario.boundaries == "visible" else HiddenBoundary(i, self.scenario.boundaries)
        self.strategy.before_experience(seen)
        t0 = time.perf_counter()
        n = self.loop.run_experience(i, exp)
        self.strategy.after_experience(seen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        st.train_time += time.perf_counter() - t0
        st.samples += n

    def evaluated(self, i: int) -> list:
        """The experiences whose test data row i of R evaluates: those trained so far (0..i), or every one
        when a metric needs the others (``protocol.fwt``) or ``protocol.eval_future`` asks for them."""
        exps = self.scenario.experiences
        return exps if self.protocol.eval_future or self.protocol.fwt else exps[: i + 1]

    def evaluate(self, i: int) -> list[float]:
        """Row i of R (accuracy on each experience's test data; None where not evaluated), recorded and logged."""
        st = self.state
        t0 = time.perf_counter()
        # the predicted classes of this evaluation; the report reads those of the last one (every experience is
        # seen by then, so counting future experiences in earlier rows changes nothing it reports)
        self.pred_counts = torch.zeros(self.scenario.n_classes, dtype=torch.long, device=self.device)
        row = self.evaluate_fn(self.evaluated(i), self.pred_counts)
        row += [None] * (len(self.scenario) - len(row))
        st.eval_time += time.perf_counter() - t0
        st.R.append(row)
        Rm = np.array(st.R, dtype=float)  # None (not evaluated) -> NaN
        f = M.forgetting_per_task(Rm)
        rec = {"experience": i, "avg_acc": M.average_accuracy(Rm), "forgetting": M.average_forgetting(Rm)}
        st.per_experience.append({**rec, "train_time": st.train_time})
        data = {f"acc/task_{j}": a for j, a in enumerate(row) if a is not None}  # not the unevaluated entries
        data.update({f"forgetting/task_{j}": v for j, v in enumerate(f)})
        data.update({"avg_acc": rec["avg_acc"], "forgetting": rec["forgetting"],
                     "avg_inc_acc": M.average_incremental_accuracy(Rm)})
        data.update(self.loop.log_fields())
        self.events.log(data, step=self.loop.log_step(i))
        return row

    def prediction_report(self) -> dict:
        """``pred_top_class_share``, ``pred_classes_used`` and ``prediction_collapsed`` of the last evaluation
        (every strategy; issue 13 item 4), with a warning when the predictions collapsed to one class."""
        if self.pred_counts is None:
            return {}
        seen = {int(c) for e in self.scenario.experiences[: len(self.state.R)] for c in e.classes}
        out = M.prediction_collapse(self.pred_counts.cpu().numpy(), len(seen))
        if out.get("prediction_collapsed"):
            warnings.warn(f"{self.id}: predictions collapsed: {out['pred_top_class_share']:.0%} of the final "
                          f"evaluation's test samples are predicted as one class ({out['pred_classes_used']} "
                          f"classes predicted at all); check the learning rate", RuntimeWarning, stacklevel=2)
        return out

    def checkpoint(self, i: int) -> None:
        """At the boundary after experience i (not after the last: the result file replaces it)."""
        self.state.next_exp = i + 1
        if self.protocol.checkpoint and i + 1 < len(self.scenario):
            checkpoint.save(self.checkpoint_path, self.id, self.cfg, self.strategy, self.state.to_dict())

    def finish(self, status: str, error: dict, wall: float) -> dict:
        """The result (config, R, metrics, timings), sent to the loggers: result file, W&B."""
        st, device, strategy = self.state, self.device, self.strategy
        result = {**self.header, **error}
        sizes = [len(e.test_y) for e in self.scenario.experiences]
        mets = M.summary(np.array(st.R, dtype=float), sizes, st.random_init) if st.R else {}
        online = self.loop.result() if self.loop is not None else (st.online.public() if st.online else None)
        if online:
            mets.update({k: v for k, v in online.items() if not isinstance(v, (list, dict))})
        mets.update({"wall_time": time.perf_counter() - self.t_begin, "run_time": wall,
                     "setup_time": self.setup_time, **self.encoding,
                     "train_time": st.train_time, "eval_time": st.eval_time,
                     "train_samples_per_s": st.samples / st.train_time if st.train_time else 0.0,
                     "peak_memory_mb": peak_memory_mb(device),
                     "trainable_params": trainable_parameters(strategy.model)})
        mets.update(self.prediction_report())
        mets.update(strategy.extra_metrics())
        result.update({"R": st.R, "test_sizes": sizes, "metrics": mets, "per_experience": st.per_experience,
                       "random_init": st.random_init, "online": online or None, "status": status})
        self.events.finish(result)
        if status == "finished" and self.result_path.exists():
            self.checkpoint_path.unlink(missing_ok=True)
        return result

    # -- the whole run --------------------------------------------------------------------------
    def execute(self) -> dict:
        """One process computes a run (cl.train.results.RunLock); a finished run is returned, not redone.
        The run's thread count is its own (``threads`` in the resolved config), whatever the executor."""
        from cl.train import results

        with results.RunLock(self.dir, self.id, wait=self.wait) as lock:
            if not lock.acquired:
                return results.busy_record(self.id, lock.holder)
            done = None if self.force else results.finished_result(self.dir, self.id)
            if done is not None:
                return {**done, "skipped": True}
            threads = torch.get_num_threads()
            torch.set_num_threads(int(self.cfg.get("threads") or 1))
            try:
                return self._execute_locked()
            finally:
                torch.set_num_threads(threads)

    def _execute_locked(self) -> dict:
        """The phases: setup, restore, open loggers, then per experience train, evaluate, checkpoint; finish."""
        self.t_begin = time.perf_counter()
        self.setup()
        self.restore()
        self.setup_time = time.perf_counter() - self.t_begin
        self.open_loggers()
        cfg, device = self.cfg, self.device
        self.header = {"run_id": self.id, "config": cfg, "seed": cfg["seed"], "versions": versions(),
                       "commit": code_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "host": platform.node(), "cpu": cpu_model(),
                       "device": str(device) + (f" ({torch.cuda.get_device_name(device)})"
                                                if device.type == "cuda" else ""),
                       "threads": torch.get_num_threads(),
                       "scenario": self.scenario.summary(), "resumed": self.resumed,
                       "trainable_params": trainable_parameters(self.strategy.model)}
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and self.protocol.amp
                    else contextlib.nullcontext())
        error: dict = {}
        t_start = time.perf_counter()
        try:
            with autocast:
                if self.protocol.fwt and self.state.random_init is None:
                    self.state.random_init = self.evaluate_fn(self.scenario.experiences)
                self.loop = LOOPS[self.protocol.name](self.ctx, self.state)
                for i in range(self.state.next_exp, len(self.scenario)):
                    self.train_experience(i)
                    self.evaluate(i)
                    self.checkpoint(i)
            status = "finished"
        except NonFiniteLoss as e:
            status, error["error"] = "failed", str(e)
        except KeyboardInterrupt:
            status, error["error"] = "interrupted", "interrupted by the user"
        except Exception as e:
            status, error["error"] = "failed", f"{type(e).__name__}: {e}"
            error["traceback"] = traceback.format_exc()
        finally:
            self.events.close()
        return self.finish(status, error, time.perf_counter() - t_start)


def run(resolved: dict, progress: bool = True, out_dir=None) -> dict:
    return Run(resolved, progress, out_dir).execute()
