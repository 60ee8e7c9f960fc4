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
from cl.core.streams import Experience, Scenario, class_incremental, seeded_class_order, split_classes

SETTINGS = ("class", "task", "domain", "data")
BOUNDARIES = ("visible", "hidden", "blurry", "gradual")
DOMAIN_SHIFTS = ("rotate", "permute")
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


def validate(cfg, n_classes: int | None = None) -> None:
    """Config errors that must surface before any training starts."""
    if getattr(cfg, "setting", "class") not in SETTINGS:
        raise unknown("setting", cfg.setting, SETTINGS)
    if getattr(cfg, "boundaries", "visible") not in BOUNDARIES:
        raise unknown("boundaries", cfg.boundaries, BOUNDARIES)
    if getattr(cfg, "augment", "none") not in AUGMENTS:
        raise unknown("augment", cfg.augment, AUGMENTS)
    if getattr(cfg, "boundaries", "visible") == "blurry" and getattr(cfg, "setting", "class") in ("domain", "data"):
        raise ConfigError(f"boundaries=blurry needs disjoint classes per task (setting=class or task), "
                          f"not setting={cfg.setting}; use boundaries=gradual or hidden for a shifting stream")
    if getattr(cfg, "setting", "class") == "domain" and getattr(cfg, "domain_shift", "rotate") not in DOMAIN_SHIFTS:
        raise unknown("domain_shift", cfg.domain_shift, DOMAIN_SHIFTS)
    for f in ("disjoint_share", "blurry_share"):
        v = getattr(cfg, f, 0.0)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{f}={v} must be in [0, 1]")
    if not 0.0 <= getattr(cfg, "gradual_width", 0.0) <= 1.0:
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


def _restrict(xtr, ytr, xte, yte, cfg, class_names):
    """Apply ``classes`` (by name or id) and the per-class limits."""
    present = sorted(torch.unique(ytr).tolist())
    if getattr(cfg, "classes", None):
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
    if getattr(cfg, "train_per_class", 0):
        i = subsample(ytr, cfg.train_per_class)
        xtr, ytr = xtr[i], ytr[i]
    if getattr(cfg, "test_per_class", 0):
        i = subsample(yte, cfg.test_per_class)
        xte, yte = xte[i], yte[i]
    return xtr, ytr, xte, yte


def _meta(cfg, extra=None) -> dict:
    m = {"augment": getattr(cfg, "augment", "none")}
    if getattr(cfg, "input_size", 0):
        m["input_size"] = int(cfg.input_size)
    m.update(extra or {})
    return m


def build_setting(name: str, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                  cfg, seed: int, class_names: Sequence[str] | None = None, mean=None, std=None,
                  modality: str = "image") -> Scenario:
    """The scenario that ``cfg`` (a :class:`SettingConfig`) asks for, over one labelled dataset."""
    validate(cfg)
    xtr, ytr, xte, yte = _restrict(xtr, ytr, xte, yte, cfg, list(class_names) if class_names is not None else None)
    setting = "task" if getattr(cfg, "task_labels", False) and cfg.setting == "class" else cfg.setting
    oseed = seed if getattr(cfg, "order_seed", None) is None else cfg.order_seed
    present = sorted(torch.unique(ytr).tolist())
    if len(present) == 0:
        raise ConfigError(f"{name}: no training data")
    if getattr(cfg, "class_order", None):
        order = [int(c) for c in cfg.class_order]
        if sorted(order) != present:
            bad = [c for c in order if c not in present]
            raise ConfigError(f"{name}: class_order {order} " + (f"names unknown classes {bad}; " if bad else
                              "must list each class once; ") + f"the data has classes {present}")
    else:
        order = named_class_order(getattr(cfg, "order", "seeded"), present, oseed)
    extra = {"order": getattr(cfg, "order", "seeded")}
    if setting == "domain":
        sc = generated_domains(name, xtr, ytr, xte, yte, cfg.n_tasks, cfg.domain_shift, order, seed=0,
                               max_angle=getattr(cfg, "max_angle", 180.0))
    elif setting == "data":
        sc = data_incremental(name, xtr, ytr, xte, yte, cfg.n_tasks, order, seed=0)
    else:
        if cfg.boundaries == "blurry" and getattr(cfg, "stochastic_tasks", False):
            sizes = stochastic_task_sizes(len(order), cfg.n_tasks, oseed)
            per_task, first = sizes, None
        else:
            per_task, first = getattr(cfg, "per_task", None), getattr(cfg, "first", None)
        split_classes(order, cfg.n_tasks, per_task, first)  # raises a ConfigError before any training
        sc = class_incremental(name, xtr, ytr, xte, yte, n_tasks=cfg.n_tasks, class_order=order, per_task=per_task,
                               first=first, task_labels=setting == "task", modality=modality)
        if setting == "task":
            for e in sc.experiences:
                e.train_t = torch.full((len(e.train_y),), e.task_id, dtype=torch.long)
                e.test_t = torch.full((len(e.test_y),), e.task_id, dtype=torch.long)
    if class_names is not None:
        sc.class_names = [class_names[c] for c in sc.class_order]
    sc.mean, sc.std, sc.modality = mean, std, modality
    sc.meta.update(_meta(cfg, extra))
    if getattr(cfg, "input_size", 0) and modality == "image":
        sc.input_shape = (sc.input_shape[0], int(cfg.input_size), int(cfg.input_size))
    if cfg.boundaries == "hidden":
        sc = hide_boundaries(sc)
    elif cfg.boundaries == "blurry":
        sc = blurry(sc, cfg.disjoint_share, cfg.blurry_share, seed=oseed)
    elif cfg.boundaries == "gradual":
        sc = gradual(sc, cfg.gradual_width, seed=oseed)
    return sc


# -- task-free streams ------------------------------------------------------------------------------------
def hide_boundaries(sc: Scenario) -> Scenario:
    """Task-free: no task ids anywhere; experiences stay as evaluation points."""
    for e in sc.experiences:
        e.task_id, e.train_t, e.test_t = None, None, None
    sc.boundaries = "hidden"
    if sc.setting == "task":
        sc.setting = "class"
    return sc


def stochastic_task_sizes(n_classes: int, n_tasks: int, seed: int | None) -> list[int]:
    """Si-Blurry: a random partition of the classes into ``n_tasks`` non-empty tasks."""
    if n_tasks > n_classes:
        raise ConfigError(f"n_tasks={n_tasks} exceeds the {n_classes} classes")
    g = np.random.RandomState(0 if seed is None else seed)
    cuts = sorted(g.choice(np.arange(1, n_classes), n_tasks - 1, replace=False).tolist()) if n_tasks > 1 else []
    edges = [0] + cuts + [n_classes]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def blurry(sc: Scenario, disjoint_share: float, blurry_share: float, seed: int | None = 0) -> Scenario:
    """i-Blurry-N-M over a class-split scenario (N = 100 x disjoint_share, M = 100 x blurry_share).

    A class is *disjoint* (all its samples in its home task) or *blurry* (``blurry_share`` of its training
    samples, drawn at random, move to the other tasks, spread uniformly).  Test data stays with the home task.
    ``train_t`` holds each sample's home task; ``meta["blurry_classes"]`` the blurry labels.
    """
    T = len(sc)
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    labels = list(range(sc.n_classes))
    home = torch.full((sc.n_classes,), -1, dtype=torch.long)
    for t, e in enumerate(sc.experiences):
        home[torch.tensor(e.classes, dtype=torch.long)] = t
    n_disjoint = int(round(disjoint_share * len(labels)))
    perm = torch.randperm(len(labels), generator=g).tolist()
    blurry_cls = sorted(labels[i] for i in perm[n_disjoint:])
    xs = [[e.train_x] for e in sc.experiences]
    ys = [[e.train_y] for e in sc.experiences]
    keep = [torch.ones(len(e.train_y), dtype=torch.bool) for e in sc.experiences]
    if T > 1:
        for c in blurry_cls:
            t = int(home[c])
            e = sc.experiences[t]
            idx = torch.nonzero(e.train_y == c).flatten()
            k = int(round(blurry_share * len(idx)))
            if k == 0:
                continue
            moved = idx[torch.randperm(len(idx), generator=g)[:k]]
            keep[t][moved] = False
            others = [u for u in range(T) if u != t]
            dest = torch.tensor(others)[torch.randint(len(others), (k,), generator=g)]
            for u in others:
                sel = moved[dest == u]
                if len(sel):
                    xs[u].append(e.train_x[sel])
                    ys[u].append(e.train_y[sel])
    new = []
    for t, e in enumerate(sc.experiences):
        xs[t][0], ys[t][0] = e.train_x[keep[t]], e.train_y[keep[t]]
        x, y = torch.cat(xs[t]), torch.cat(ys[t])
        p = torch.randperm(len(y), generator=g)
        x, y = x[p], y[p]
        new.append(Experience(x, y, e.test_x, e.test_y, sorted(torch.unique(y).tolist()), None, index=t,
                              train_t=home[y], test_t=home[e.test_y]))
    sc.experiences = new
    sc.boundaries = "blurry"
    sc.setting = "class"  # task ids are not given to the learner in a blurry stream
    sc.meta.update(blurry_classes=blurry_cls, disjoint_share=disjoint_share, blurry_share=blurry_share,
                   home_classes=[[c for c in range(sc.n_classes) if int(home[c]) == t] for t in range(T)])
    return sc


def _gradual_windows(lengths: Sequence[int], width: float) -> tuple[np.ndarray, np.ndarray]:
    total = int(sum(lengths))
    w = np.zeros(total)
    win = np.full(total, -1, dtype=np.int64)
    edges = np.cumsum(lengths)
    for t in range(len(lengths) - 1):
        b = edges[t]
        W = width * min(lengths[t], lengths[t + 1])
        if W <= 0:
            continue
        lo, hi = b - W / 2, b + W / 2
        pos = np.arange(max(0, int(math.ceil(lo - 0.5))), min(total, int(math.floor(hi - 0.5)) + 1))
        w[pos] = np.clip((pos + 0.5 - lo) / W, 0, 1)
        win[pos] = t
    return w, win


def gradual_weights(lengths: Sequence[int], width: float) -> np.ndarray:
    """Expected weight of the *next* task at each stream position: 0 outside the windows, rising linearly
    from 0 to 1 across a window of ``width`` x (the shorter neighbour's length) centred on each boundary."""
    return _gradual_windows(lengths, width)[0]


def gradual(sc: Scenario, width: float, seed: int | None = 0) -> Scenario:
    """Gradual boundaries: linear mixing of consecutive tasks around each boundary (see module doc)."""
    T = len(sc)
    rs = np.random.RandomState(0 if seed is None else int(seed))
    lengths = [len(e) for e in sc.experiences]
    total = sum(lengths)
    edges = np.concatenate([[0], np.cumsum(lengths)])
    seg_of = np.repeat(np.arange(T), lengths)
    queues = [rs.permutation(n) for n in lengths]
    heads = [0] * T
    weights, win = _gradual_windows(lengths, width)
    draws = rs.rand(total)
    src_task = np.empty(total, dtype=np.int64)
    src_idx = np.empty(total, dtype=np.int64)
    low = 0  # the earliest task with samples left
    for p in range(total):
        a = int(win[p])
        if a >= 0:
            t = a + 1 if draws[p] < weights[p] else a
        else:
            t = int(seg_of[p])
        while low < T and heads[low] >= lengths[low]:
            low += 1
        if low < t and (a < 0 or low < a):
            t = low  # leftovers of an earlier task come first
        if heads[t] >= lengths[t]:
            u = t + 1
            while u < T and heads[u] >= lengths[u]:
                u += 1
            t = u if u < T else low
        src_task[p], src_idx[p] = t, queues[t][heads[t]]
        heads[t] += 1
    new = []
    for t, e in enumerate(sc.experiences):
        pos = np.arange(edges[t], edges[t + 1])
        tx = torch.from_numpy(src_task[pos])
        ix = torch.from_numpy(src_idx[pos])
        xs = torch.empty((len(pos),) + tuple(e.train_x.shape[1:]), dtype=e.train_x.dtype)
        ys = torch.empty(len(pos), dtype=e.train_y.dtype)
        for u in torch.unique(tx).tolist():
            m = tx == u
            xs[m] = sc.experiences[u].train_x[ix[m]]
            ys[m] = sc.experiences[u].train_y[ix[m]]
        new.append(Experience(xs, ys, e.test_x, e.test_y, sorted(torch.unique(ys).tolist()), None, index=t,
                              train_t=tx.clone(), test_t=None,
                              train_time=torch.from_numpy(pos.astype(np.float64))))
    sc.experiences = new
    sc.boundaries = "gradual"
    if sc.setting == "task":  # no task ids in a task-free stream; domain / data settings stay what they are
        sc.setting = "class"
    sc.meta.update(mixing=weights.tolist() if total <= 200_000 else None, gradual_width=width, ordered=True)
    return sc


# -- domain- and data-incremental ---------------------------------------------------------------------------
def _renumber(order: Sequence[int], *ys: torch.Tensor):
    remap = torch.full((max(order) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(list(order))] = torch.arange(len(order))
    return [remap[y.long()] for y in ys]


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate uint8 ``(N, C, H, W)`` images by ``degrees`` (bilinear, zero fill), returning uint8."""
    if degrees % 360 == 0:
        return x.clone()
    import torch.nn.functional as F

    th = math.radians(degrees)
    A = torch.tensor([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0]])
    out = torch.empty_like(x)
    for i in range(0, len(x), 4096):
        xb = x[i:i + 4096].float()
        grid = F.affine_grid(A.expand(len(xb), 2, 3), list(xb.shape), align_corners=False)
        out[i:i + 4096] = F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False).round_().clamp_(0, 255).to(x.dtype)
    return out


def permute_pixels(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Apply one fixed pixel permutation (over H x W, shared by the channels)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


def generated_domains(name: str, xtr, ytr, xte, yte, n_tasks: int, shift: str, order: Sequence[int],
                      seed: int = 0, max_angle: float = 180.0) -> Scenario:
    """Domain-incremental by a generated input shift: every task has all classes (all images),
    task ``t`` rotated by ``t * max_angle / n_tasks`` degrees, or pixel-permuted (task 0 unpermuted)."""
    if shift not in DOMAIN_SHIFTS:
        raise unknown("domain_shift", shift, DOMAIN_SHIFTS)
    if xtr.dim() != 4:
        raise ConfigError(f"{name}: domain_shift={shift} needs images (N, C, H, W), got shape {tuple(xtr.shape)}")
    ytr_r, yte_r = _renumber(order, ytr, yte)
    g = torch.Generator().manual_seed(seed)
    exps, params = [], []
    hw = xtr.shape[2] * xtr.shape[3]
    for t in range(n_tasks):
        if shift == "rotate":
            ang = t * max_angle / n_tasks
            f = lambda x, a=ang: rotate_images(x, a)  # noqa: E731
            params.append(ang)
        else:
            perm = torch.arange(hw) if t == 0 else torch.randperm(hw, generator=g)
            f = lambda x, p=perm: permute_pixels(x, p)  # noqa: E731
            params.append(t)
        exps.append(Experience(f(xtr), ytr_r.clone(), f(xte), yte_r.clone(), list(range(len(order))), None, index=t,
                               train_t=torch.full((len(ytr),), t, dtype=torch.long),
                               test_t=torch.full((len(yte),), t, dtype=torch.long)))
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(xtr.shape[1:]),
                    class_order=list(order), setting="domain", meta={"domain_shift": shift, "domain_params": params})


def domain_incremental(name: str, domains: Sequence[tuple], domain_names: Sequence[str] | None = None,
                       class_names=None, order: Sequence[int] | None = None, **kw) -> Scenario:
    """Domain-incremental from a dataset's own domains: ``domains[t] = (xtr, ytr, xte, yte)`` with a shared
    label space; task ``t`` is domain ``t``."""
    present = sorted(set().union(*[set(torch.unique(d[1]).tolist()) for d in domains]))
    order = list(order) if order is not None else present
    exps = []
    for t, (xtr, ytr, xte, yte) in enumerate(domains):
        ytr_r, yte_r = _renumber(order, ytr, yte)
        exps.append(Experience(xtr, ytr_r, xte, yte_r, sorted(torch.unique(ytr_r).tolist()), None, index=t,
                               train_t=torch.full((len(ytr),), t, dtype=torch.long),
                               test_t=torch.full((len(yte),), t, dtype=torch.long)))
    names = [class_names[c] for c in order] if class_names is not None else None
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(domains[0][0].shape[1:]),
                    class_order=order, class_names=names, setting="domain",
                    meta={"domains": list(domain_names) if domain_names else None}, **kw)


def _shards(y: torch.Tensor, n: int, g: torch.Generator) -> list[torch.Tensor]:
    """Stratified random split of the indices of ``y`` into ``n`` near-equal shards."""
    parts = [[] for _ in range(n)]
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for k, chunk in enumerate(torch.tensor_split(idx, n)):
            parts[k].append(chunk)
    return [torch.cat(p).sort().values for p in parts]


def data_incremental(name: str, xtr, ytr, xte, yte, n_tasks: int, order: Sequence[int], seed: int = 0) -> Scenario:
    """Data-incremental: every task has all classes and new instances (disjoint stratified shards of the
    training set); the test set is split the same way, so the mean over tasks is the full test accuracy."""
    smallest = int(torch.bincount(ytr)[torch.unique(ytr)].min())
    if n_tasks > smallest:
        raise ConfigError(f"{name}: n_tasks={n_tasks} exceeds the {smallest} training samples of the "
                              f"smallest class (data-incremental shards need one per class)")
    ytr_r, yte_r = _renumber(order, ytr, yte)
    g = torch.Generator().manual_seed(seed)
    tr, te = _shards(ytr_r, n_tasks, g), _shards(yte_r, n_tasks, g)
    exps = [Experience(xtr[a], ytr_r[a], xte[b], yte_r[b], sorted(torch.unique(ytr_r[a]).tolist()), None, index=t)
            for t, (a, b) in enumerate(zip(tr, te))]
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(xtr.shape[1:]),
                    class_order=list(order), setting="data")


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
