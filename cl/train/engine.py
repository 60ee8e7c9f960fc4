"""The engine: runs one strategy on one scenario under a protocol and returns the result.

The step adds almost nothing to a hand-written loop: data lives on the device,
batches are index slices, losses and accuracies are accumulated on the device
and read once per epoch (offline) or every ``SYNC_EVERY`` steps (online).
"""
from __future__ import annotations

import contextlib
import platform
import random
import resource
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import cl.core.metrics as M
from cl.models.backbones import backbone_spec, build_backbone
from cl.core.config import run_id as make_run_id, section_config
from cl.train.loggers import Progress, WandbLogger
from cl.models.model import Model, build_head, trainable_parameters
from cl.core.registry import scenarios, strategies
from cl.core.strategy import RunInfo, uses_frozen_features
from cl.train import checkpoint
from cl.train.evaluate import evaluate

SYNC_EVERY = 200  # online steps between host reads (progress, non-finite check)


class NonFiniteLoss(RuntimeError):
    pass


def nonfinite_message(i: int, where: str) -> str:
    kept = f"accuracies up to experience {i - 1} are kept in failed.json" if i > 0 else "no experience was completed"
    return f"non-finite loss in experience {i}, {where}: stopping; {kept}"


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


def build_model(strategy_cls, scfg, resolved, scenario, device) -> torch.nn.Module:
    """The strategy's own ``build_model`` if it has one, else backbone + head."""
    input_shape = scenario.input_shape
    name, bcfg = backbone_spec(resolved)
    if scenario.modality == "features" and uses_frozen_features(strategy_cls, scfg):
        name, bcfg = "identity", None  # the frozen backbone already ran (cl.models.features.featurize)
    backbone = build_backbone(name, bcfg, input_shape)
    if hasattr(backbone, "make_preprocess"):  # pretrained backbones: their own resize / normalisation
        scenario.preprocess_fn = lambda dev, _b=backbone, _s=scenario: _b.make_preprocess(_s, dev)
    if hasattr(strategy_cls, "build_model"):
        model = strategy_cls.build_model(scfg, backbone, scenario)
    else:
        model = Model(backbone, build_head(getattr(scfg, "head", "linear"), backbone.out_dim, scenario.n_classes))
    return model.to(device)


def _to_device(scenario, device):
    for e in scenario.experiences:
        for name in ("train_x", "train_y", "test_x", "test_y", "train_t", "test_t"):
            v = getattr(e, name)
            if isinstance(v, torch.Tensor):
                setattr(e, name, v.to(device, non_blocking=True))


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

    # -- files ----------------------------------------------------------------------------------
    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def _save_checkpoint(self, strategy, state: dict) -> None:
        checkpoint.save(self.checkpoint_path, self.id, self.cfg, strategy, state)

    def _load_checkpoint(self, strategy, device) -> dict | None:
        return checkpoint.load(self.checkpoint_path, self.id, strategy, device)

    # -- main -----------------------------------------------------------------------------------
    def execute(self) -> dict:
        """One process computes a run (cl.train.results.RunLock); a finished run is returned, not redone."""
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
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg["seed"])
        device = resolve_device(cfg.get("device"))
        pcfg = section_config(cfg, "protocol")
        scfg = section_config(cfg, "strategy")
        strategy_cls = strategies.get(cfg["strategy"]["name"]).obj
        scenario = scenarios.get(cfg["scenario"]["name"]).obj(section_config(cfg, "scenario"), cfg["seed"])
        if uses_frozen_features(strategy_cls, scfg):
            from cl.models.features import featurize  # the feature cache (pretrained frozen backbones)

            scenario = featurize(scenario, cfg, device)
        _to_device(scenario, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        info = RunInfo(n_classes=scenario.n_classes, input_shape=scenario.input_shape, device=device,
                       seed=cfg["seed"], setting=scenario.setting, boundaries=scenario.boundaries,
                       protocol=pcfg.name, n_experiences=len(scenario))
        model = build_model(strategy_cls, scfg, cfg, scenario, device)
        strategy = strategy_cls(scfg, model, info)
        strategy.setup()
        if strategy.augment is None and scenario.modality == "image":  # on-device augmentation (cl/augment.py)
            from cl.data.augment import augment_for
            strategy.augment = augment_for(scenario, device)
        preprocess = scenario.preprocess_fn(device)
        masks = None
        if scenario.task_aware:
            masks = []
            for e in scenario.experiences:
                m = torch.zeros(scenario.n_classes, dtype=torch.bool, device=device)
                m[e.classes] = True
                masks.append(m)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and pcfg.amp
                    else contextlib.nullcontext())
        ev = lambda exps: evaluate(strategy, exps, preprocess, pcfg.eval_batch_size,  # noqa: E731
                                   scenario.task_aware, device, masks)

        state = {"R": [], "next_exp": 0, "train_time": 0.0, "eval_time": 0.0, "samples": 0, "online": None,
                 "per_experience": [], "random_init": None}
        resumed = False
        if pcfg.checkpoint and self.checkpoint_path.exists():
            loaded = self._load_checkpoint(strategy, device)
            if loaded is not None:
                state, resumed = loaded, True
        wandb = WandbLogger(cfg, self.id, self.dir)
        bar = Progress(self.progress_enabled, f"{cfg['strategy']['name']} on {cfg['scenario']['name']}")
        result = {"run_id": self.id, "config": cfg, "seed": cfg["seed"], "versions": versions(),
                  "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
                  "threads": torch.get_num_threads(),
                  "scenario": scenario.summary(), "resumed": resumed,
                  "trainable_params": trainable_parameters(strategy.model)}
        t_start = time.perf_counter()
        try:
            with autocast:
                if pcfg.fwt and state["random_init"] is None:
                    state["random_init"] = ev(scenario.experiences)
                if pcfg.name == "online":
                    from cl.train.online import OnlineLoop

                    loop = OnlineLoop(strategy, scenario, pcfg, preprocess, device, ev, bar, wandb, state)
                else:
                    loop = None
                for i in range(state["next_exp"], len(scenario)):
                    exp = scenario[i]
                    strategy.before_experience(exp)
                    t0 = time.perf_counter()
                    if loop is not None:
                        n = loop.run_experience(i, exp)
                    else:
                        n = self._offline_experience(strategy, exp, pcfg, preprocess, bar, i, len(scenario))
                    strategy.after_experience(exp)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    state["train_time"] += time.perf_counter() - t0
                    state["samples"] += n
                    t0 = time.perf_counter()
                    row = ev(scenario.experiences)
                    state["eval_time"] += time.perf_counter() - t0
                    state["R"].append(row)
                    self._log_experience(wandb, state, i, row)
                    state["next_exp"] = i + 1
                    if pcfg.checkpoint and i + 1 < len(scenario):
                        self._save_checkpoint(strategy, state)
            status = "finished"
        except NonFiniteLoss as e:
            status, result["error"] = "failed", str(e)
        except KeyboardInterrupt:
            status, result["error"] = "interrupted", "interrupted by the user"
        except Exception as e:
            status, result["error"] = "failed", f"{type(e).__name__}: {e}"
            result["traceback"] = traceback.format_exc()
        finally:
            bar.close()
        result.update(self._summarise(state, scenario, strategy, device, time.perf_counter() - t_start))
        result["status"] = status
        from cl.train.results import write_outcome

        write_outcome(self.dir, result)  # result.json, interrupted.json or failed.json; never raises OSError
        if result["status"] == "finished":
            self.checkpoint_path.unlink(missing_ok=True)
        wandb.finish(result)
        return result

    def _offline_experience(self, strategy, exp, pcfg, preprocess, bar, i, n_exp) -> int:
        x_all, y_all = strategy.train_data(exp)
        n, bs = len(y_all), pcfg.batch_size
        steps = (n + bs - 1) // bs
        bar.start_experience(i, n_exp, steps * pcfg.epochs)
        dev = y_all.device
        t = exp.task_id
        for epoch in range(pcfg.epochs):
            perm = torch.randperm(n, device=dev)
            losses = torch.zeros(steps, device=dev)
            for s in range(steps):
                idx = perm[s * bs:(s + 1) * bs]
                losses[s] = strategy.train_step(preprocess(x_all[idx]), y_all[idx], t)
                bar.update()
            mean_loss = losses.mean().item()  # one host read per epoch
            if not np.isfinite(mean_loss):
                raise NonFiniteLoss(nonfinite_message(i, f"epoch {epoch}"))
        return n * pcfg.epochs

    def _log_experience(self, wandb, state, i, row):
        R = state["R"]
        Rm = np.array([r for r in R])
        f = M.forgetting_per_task(Rm)
        rec = {"experience": i, "avg_acc": M.average_accuracy(Rm), "forgetting": M.average_forgetting(Rm)}
        state["per_experience"].append({**rec, "train_time": state["train_time"]})
        data = {f"acc/task_{j}": a for j, a in enumerate(row)}
        data.update({f"forgetting/task_{j}": v for j, v in enumerate(f)})
        data.update({"avg_acc": rec["avg_acc"], "forgetting": rec["forgetting"],
                     "avg_inc_acc": M.average_incremental_accuracy(Rm)})
        if state.get("online"):
            data["online_acc"] = state["online"].get("online_acc")
        # online runs share one W&B step axis with the online points: samples seen
        wandb.log(data, step=state["samples"] if state.get("online") is not None else i)

    def _summarise(self, state, scenario, strategy, device, wall) -> dict:
        R = state["R"]
        sizes = [len(e.test_y) for e in scenario.experiences]
        mets = M.summary(np.array(R), sizes, state["random_init"]) if R else {}
        if state.get("online"):
            mets.update({k: v for k, v in state["online"].items() if not isinstance(v, (list, dict))})
        mets.update({"wall_time": wall, "train_time": state["train_time"], "eval_time": state["eval_time"],
                     "train_samples_per_s": state["samples"] / state["train_time"] if state["train_time"] else 0.0,
                     "peak_memory_mb": peak_memory_mb(device),
                     "trainable_params": trainable_parameters(strategy.model)})
        if hasattr(strategy, "extra_metrics"):  # strategy-specific metrics (e.g. task-id accuracy)
            mets.update(strategy.extra_metrics())
        return {"R": R, "test_sizes": sizes, "metrics": mets, "per_experience": state["per_experience"],
                "random_init": state["random_init"],
                "online": {k: v for k, v in (state.get("online") or {}).items() if k != "correct"} or None}


def run(resolved: dict, progress: bool = True, out_dir=None) -> dict:
    return Run(resolved, progress, out_dir).execute()
