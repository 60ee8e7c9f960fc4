"""Continual-learning settings built over tensors: class-, task-, domain- and data-incremental,
and online task-free streams with hidden, blurry or gradual boundaries.

Every dataset scenario takes a config derived from :class:`SettingConfig` and calls
:func:`build_setting`, so each dataset supports each setting::

    cl run -s er -d split-cifar10 --set scenario.setting=task
    cl run -s er -d split-cifar10 -p online --set scenario.boundaries=blurry --set scenario.blurry_share=0.1

Conventions (see :mod:`cl.core.streams`): one :class:`Experience` per task, labels renumbered to the
class order, ``train_t`` / ``test_t`` hold per-sample task ids where the setting has them.

* ``setting="class"``: disjoint classes per task, no task id.  ``"task"``: the same split with task ids
  (the engine masks logits to the task's classes).
* ``setting="domain"``: every task has every class; the input shifts.  The shift comes from the dataset's
  own domains (:func:`domain_incremental`) or is generated (``domain_shift="rotate" | "permute"``).
* ``setting="data"``: every task has every class; new instances (disjoint stratified shards).
* ``boundaries="hidden"``: experiences as above, but no task id (task-free; ``RunInfo.boundaries`` says so).
* ``boundaries="blurry"`` (i-Blurry-N-M, Koh et al. 2022; Si-Blurry, Moon et al. 2023 with
  ``stochastic_tasks``): a share ``1 - disjoint_share`` of the classes is *blurry*; ``blurry_share`` of each
  blurry class's training samples leak into the other tasks.  ``train_t`` is each sample's home task.
* ``boundaries="gradual"``: the tasks' training streams are concatenated and, in a window of
  ``gradual_width`` x (task length) around each boundary, samples of the next task replace those of the
  current one with a probability rising linearly from 0 to 1.  Experience ``t`` is the ``t``-th segment of
  that stream *in stream order* (``train_time`` is the stream position; use
  ``protocol.shuffle_within_experience=false``); ``train_t`` is each sample's source task and
  ``meta["mixing"]`` the expected next-task weight per position.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, make_dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from cl.core.registry import ConfigError, scenarios, unknown
from cl.core.streams import Scenario, class_incremental, seeded_class_order, split_classes
from cl.data.domains import DOMAIN_SHIFTS, data_incremental, generated_domains
from cl.data.task_free import blurry, gradual, hide_boundaries, stochastic_task_sizes

SETTINGS = ("class", "task", "domain", "data")
BOUNDARIES = ("visible", "hidden", "blurry", "gradual")
AUGMENTS = ("none", "crop_flip", "pcr", "crop_flip_jitter")

#: fixed class orders published with papers, by name (besides "seeded" and "natural")
NAMED_ORDERS = {
    # iCaRL (Rebuffi et al. 2017), reused by UCIR, PODNet, DER, PyCIL: numpy seed 1993 permutation
    "icarl": lambda n: np.random.RandomState(1993).permutation(n).tolist(),
}
ORDER_ALIASES = {"pycil": "icarl", "podnet": "icarl", "der": "icarl", "ucir": "icarl", "seed1993": "icarl"}


@dataclass
class SettingConfig:
    """Fields shared by the dataset scenarios (see :mod:`cl.data.settings`)."""

    n_tasks: int = 5
    setting: str = "class"  # class | task | domain | data
    boundaries: str = "visible"  # visible | hidden | blurry | gradual
    task_labels: bool = False  # same as setting=task (kept for split-mnist compatibility)
    order: str = "seeded"  # seeded | natural | icarl (numpy seed 1993: iCaRL/PODNet/DER/PyCIL) | superclass (CIFAR-100)
    class_order: list[int] | None = None  # explicit order (original class ids); overrides `order`
    classes: list[str] | None = None  # restrict to these class names (folder datasets) / ids
    order_seed: int | None = None  # seed of the "seeded" order (default: the run seed)
    first: int | None = None  # classes in the first task (then equal increments), e.g. B50-10
    per_task: list[int] | None = None  # explicit task sizes in classes
    domain_shift: str = "rotate"  # setting=domain on a dataset without domains: rotate | permute
    max_angle: float = 180.0  # rotate: task t is rotated by t * max_angle / n_tasks degrees
    disjoint_share: float = 0.5  # blurry: share of classes that stay in their own task (N of i-Blurry-N-M)
    blurry_share: float = 0.1  # blurry: share of a blurry class's samples leaking to other tasks (M)
    stochastic_tasks: bool = False  # blurry: Si-Blurry's random number of classes per task
    gradual_width: float = 0.5  # gradual: transition window, as a fraction of a task's length
    train_per_class: int = 0  # keep at most this many training images per class (0: all)
    test_per_class: int = 0  # and test images per class (0: all)
    augment: str = "none"  # on-device augmentation: none | crop_flip | crop_flip_jitter | pcr
    input_size: int = 0  # resize images on the device to this size (0: keep)
    mean: list[float] | None = None  # per-channel input normalisation (default: the dataset's statistics),
    std: list[float] | None = None  # e.g. mean [0.5, 0.5, 0.5], std [2, 2, 2] of Mammoth's / AML's ER-ACE


def named_class_order(name: str, classes: Sequence[int], seed: int | None) -> list[int]:
    classes = sorted(int(c) for c in classes)
    key = ORDER_ALIASES.get(name, name)
    if key == "seeded":
        return seeded_class_order(classes, seed)
    if key == "natural":
        return classes
    if key in NAMED_ORDERS:
        perm = NAMED_ORDERS[key](len(classes))
        return [classes[i] for i in perm]
    raise unknown("class order", name, ["seeded", "natural", *NAMED_ORDERS, *ORDER_ALIASES])


def validate(cfg: SettingConfig, n_classes: int | None = None) -> None:
    """Config errors that must surface before any training starts (``cfg``: a :class:`SettingConfig`)."""
    if cfg.setting not in SETTINGS:
        raise unknown("setting", cfg.setting, SETTINGS)
    if cfg.boundaries not in BOUNDARIES:
        raise unknown("boundaries", cfg.boundaries, BOUNDARIES)
    if cfg.augment not in AUGMENTS:
        raise unknown("augment", cfg.augment, AUGMENTS)
    if cfg.boundaries == "blurry" and cfg.setting in ("domain", "data"):
        raise ConfigError(f"boundaries=blurry needs disjoint classes per task (setting=class or task), "
                          f"not setting={cfg.setting}; use boundaries=gradual or hidden for a shifting stream")
    if cfg.setting == "domain" and cfg.domain_shift not in DOMAIN_SHIFTS:
        raise unknown("domain_shift", cfg.domain_shift, DOMAIN_SHIFTS)
    for f, v in (("disjoint_share", cfg.disjoint_share), ("blurry_share", cfg.blurry_share)):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{f}={v} must be in [0, 1]")
    if not 0.0 <= cfg.gradual_width <= 1.0:
        raise ConfigError(f"gradual_width={cfg.gradual_width} must be in [0, 1]")
    if cfg.n_tasks is not None and cfg.n_tasks < 1:
        raise ConfigError(f"n_tasks={cfg.n_tasks} must be at least 1")


def subsample(y: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices keeping at most ``per_class`` samples of each class (deterministic, sorted)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(keep).sort().values


def _restrict(xtr, ytr, xte, yte, cfg: SettingConfig, class_names):
    """Apply ``classes`` (by name or id) and the per-class limits."""
    present = sorted(torch.unique(ytr).tolist())
    if cfg.classes:
        ids = []
        for c in cfg.classes:
            if class_names is not None and str(c) in class_names:
                ids.append(class_names.index(str(c)))
            elif str(c).lstrip("-").isdigit() and int(c) in present:
                ids.append(int(c))
            else:
                raise ConfigError(f"classes names unknown class {c!r}; known classes: "
                                  f"{class_names if class_names is not None else present}")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"classes repeats a class: {list(cfg.classes)}")
        mtr, mte = torch.isin(ytr, torch.tensor(ids)), torch.isin(yte, torch.tensor(ids))
        xtr, ytr, xte, yte = xtr[mtr], ytr[mtr], xte[mte], yte[mte]
    if cfg.train_per_class:
        i = subsample(ytr, cfg.train_per_class)
        xtr, ytr = xtr[i], ytr[i]
    if cfg.test_per_class:
        i = subsample(yte, cfg.test_per_class)
        xte, yte = xte[i], yte[i]
    return xtr, ytr, xte, yte


def _meta(cfg: SettingConfig, extra=None) -> dict:
    m = {"augment": cfg.augment}
    if cfg.input_size:
        m["input_size"] = int(cfg.input_size)
    m.update(extra or {})
    return m


def normalisation(name: str, cfg: SettingConfig, xtr: torch.Tensor, mean, std):
    """The per-channel (mean, std) of the inputs: the dataset's, or ``cfg.mean`` / ``cfg.std`` where given (one
    value per channel of an image dataset; std > 0).  A dataset without statistics keeps the identity for the
    one not given."""
    if cfg.mean is None and cfg.std is None:
        return mean, std
    if mean is None and xtr.dim() != 4:
        raise ConfigError(f"{name}: scenario.mean / scenario.std normalise image channels; this dataset's inputs "
                          f"have shape {tuple(xtr.shape[1:])}")
    ch = len(mean) if mean is not None else xtr.shape[1]
    out = []
    for field, given, default, fill in (("mean", cfg.mean, mean, 0.0), ("std", cfg.std, std, 1.0)):
        if given is None:
            out.append(default if default is not None else tuple([fill] * ch))
            continue
        vals = list(given) if isinstance(given, (list, tuple)) else [given]
        if len(vals) != ch or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                      for v in vals):
            raise ConfigError(f"{name}: scenario.{field}={given!r} must be {ch} finite numbers, one per channel")
        if field == "std" and min(vals) <= 0:
            raise ConfigError(f"{name}: scenario.std={given!r} must be > 0 in every channel")
        out.append(tuple(float(v) for v in vals))
    return out[0], out[1]


def build_setting(name: str, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                  cfg: SettingConfig, seed: int, class_names: Sequence[str] | None = None, mean=None, std=None,
                  modality: str = "image") -> Scenario:
    """The scenario that ``cfg`` (a :class:`SettingConfig`) asks for, over one labelled dataset."""
    validate(cfg)
    xtr, ytr, xte, yte = _restrict(xtr, ytr, xte, yte, cfg, list(class_names) if class_names is not None else None)
    setting = "task" if cfg.task_labels and cfg.setting == "class" else cfg.setting
    oseed = seed if cfg.order_seed is None else cfg.order_seed
    present = sorted(torch.unique(ytr).tolist())
    if len(present) == 0:
        raise ConfigError(f"{name}: no training data")
    if cfg.class_order:
        order = [int(c) for c in cfg.class_order]
        if sorted(order) != present:
            bad = [c for c in order if c not in present]
            raise ConfigError(f"{name}: class_order {order} " + (f"names unknown classes {bad}; " if bad else
                              "must list each class once; ") + f"the data has classes {present}")
    else:
        order = named_class_order(cfg.order, present, oseed)
    extra = {"order": cfg.order}
    if setting == "domain":
        sc = generated_domains(name, xtr, ytr, xte, yte, cfg.n_tasks, cfg.domain_shift, order, seed=0,
                               max_angle=cfg.max_angle)
    elif setting == "data":
        sc = data_incremental(name, xtr, ytr, xte, yte, cfg.n_tasks, order, seed=0)
    else:
        if cfg.boundaries == "blurry" and cfg.stochastic_tasks:
            sizes = stochastic_task_sizes(len(order), cfg.n_tasks, oseed)
            per_task, first = sizes, None
        else:
            per_task, first = cfg.per_task, cfg.first
        split_classes(order, cfg.n_tasks, per_task, first)  # raises a ConfigError before any training
        sc = class_incremental(name, xtr, ytr, xte, yte, n_tasks=cfg.n_tasks, class_order=order, per_task=per_task,
                               first=first, task_labels=setting == "task", modality=modality)
        if setting == "task":
            for e in sc.experiences:
                e.train_t = torch.full((len(e.train_y),), e.task_id, dtype=torch.long)
                e.test_t = torch.full((len(e.test_y),), e.task_id, dtype=torch.long)
    if class_names is not None:
        sc.class_names = [class_names[c] for c in sc.class_order]
    mean, std = normalisation(name, cfg, xtr, mean, std)
    sc.mean, sc.std, sc.modality = mean, std, modality
    sc.meta.update(_meta(cfg, extra))
    if cfg.input_size and modality == "image":
        sc.input_shape = (sc.input_shape[0], int(cfg.input_size), int(cfg.input_size))
    if cfg.boundaries == "hidden":
        sc = hide_boundaries(sc)
    elif cfg.boundaries == "blurry":
        sc = blurry(sc, cfg.disjoint_share, cfg.blurry_share, seed=oseed)
    elif cfg.boundaries == "gradual":
        sc = gradual(sc, cfg.gradual_width, seed=oseed)
    return sc


# -- registration helpers ------------------------------------------------------------------------------------
def register_family(base: str, cfg_cls: type, builder: Callable, n_tasks_choices: Sequence[int],
                    description: str | None = None) -> None:
    """Register ``base`` and ``base/N`` (N tasks) for each N: the suffix sets the default ``n_tasks``."""
    scenarios.register(base, cfg_cls, description)(builder)
    for n in n_tasks_choices:
        sub = make_dataclass(f"{cfg_cls.__name__}_{n}", [("n_tasks", int, n)], bases=(cfg_cls,))
        sub.__module__ = cfg_cls.__module__
        desc = f"{base} in {n} tasks (n_tasks={n})"
        scenarios.register(f"{base}/{n}", sub, desc)(builder)
