"""CLOC: the time-ordered geolocation stream (``train_{labels,time,store_loc}.torchSave``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cl.core.registry import ConfigError, scenarios
from cl.core.streams import Experience, Scenario
from cl.data.cache import decode_paths_cached, find_root
from scenarios._folders import IMAGENET_MEAN, IMAGENET_STD, _check_augment

# =========================================== CLOC ===========================================
_CLOC_LAYOUT = ("<root>/train_{labels,time,store_loc}.torchSave (store_loc: image paths relative to "
                "<root>/dataset/images/), optional test_{labels,time,store_loc}.torchSave, images under dataset/images/")


def _cloc_check(p: Path):
    need = ["train_labels.torchSave", "train_time.torchSave", "train_store_loc.torchSave"]
    lack = [n for n in need if not (p / n).is_file()]
    return ("ok", p) if not lack else f"missing: {p} lacks {lack}"


@dataclass
class ClocConfig:
    n_tasks: int = 10  # equal-count time segments of the stream (evaluation points)
    root: str | None = None
    image_size: int = 64
    max_samples: int = 0  # keep the first N samples in time order (0: all; the full stream is 39M images)
    test_fraction: float = 0.02  # held out per segment when there are no test_* files
    boundaries: str = "hidden"  # hidden (task-free) | visible
    augment: str = "none"
    input_size: int = 0


def _cloc_load(path: Path):
    from cl.core.safe_load import torch_load

    v = torch_load(path)  # weights_only=True: tensors and lists only, never code from the file
    return list(v.tolist() if isinstance(v, torch.Tensor) else v)


def _cloc_paths(p: Path, locs):
    base = p / "dataset" / "images"
    out = []
    for s in locs:
        s = str(s).strip()
        q = Path(s)
        out.append(q if q.is_absolute() else (base / s if (base / s).exists() or not (p / s).exists() else p / s))
    return out


def cloc(cfg: ClocConfig, seed: int):
    """CLOC: geolocation stream ordered by time (per-sample timestamps in train_time), task-free."""
    if cfg.boundaries not in ("hidden", "visible"):
        raise ConfigError(f"cloc: boundaries={cfg.boundaries!r}; CLOC supports hidden or visible")
    _check_augment(cfg)
    _, p = find_root("cloc", cfg.root, _cloc_check, _CLOC_LAYOUT, env=("CL_DATA_CLOC",), subdirs=["cloc", "CLOC"])
    y = torch.tensor(_cloc_load(p / "train_labels.torchSave")).long()
    tm = torch.tensor(_cloc_load(p / "train_time.torchSave"), dtype=torch.float64)
    locs = _cloc_load(p / "train_store_loc.torchSave")
    if not (len(y) == len(tm) == len(locs)):
        raise ConfigError(f"cloc: train_labels ({len(y)}), train_time ({len(tm)}) and train_store_loc "
                          f"({len(locs)}) differ in length")
    order = torch.argsort(tm, stable=True)
    if cfg.max_samples:
        order = order[:cfg.max_samples]
    y, tm = y[order], tm[order]
    paths = _cloc_paths(p, [locs[i] for i in order.tolist()])
    miss = [str(q) for q in paths[:1] if not q.is_file()]
    if miss:
        raise ConfigError(f"cloc: images listed in train_store_loc.torchSave are missing, e.g. {miss}")
    x = decode_paths_cached("cloc", paths, cfg.image_size)
    has_test = (p / "test_labels.torchSave").is_file() and (p / "test_store_loc.torchSave").is_file()
    if has_test:
        yte_all = torch.tensor(_cloc_load(p / "test_labels.torchSave")).long()
        tte_all = (torch.tensor(_cloc_load(p / "test_time.torchSave"), dtype=torch.float64)
                   if (p / "test_time.torchSave").is_file() else None)
        xte_all = decode_paths_cached("cloc", _cloc_paths(p, _cloc_load(p / "test_store_loc.torchSave")),
                                      cfg.image_size)
    n = len(y)
    if cfg.n_tasks < 1 or cfg.n_tasks > n:
        raise ConfigError(f"cloc: n_tasks={cfg.n_tasks} must be between 1 and the {n} samples")
    segs = torch.tensor_split(torch.arange(n), cfg.n_tasks)
    classes = sorted(torch.unique(y).tolist() + ([] if not has_test else torch.unique(yte_all).tolist()))
    classes = sorted(set(classes))
    remap = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    g = torch.Generator().manual_seed(0)
    exps = []
    edges = [float(tm[s[0]]) for s in segs] + [float("inf")]
    for t, s in enumerate(segs):
        if has_test:
            tr = s
            if tte_all is not None:
                lo = edges[t] if t > 0 else -float("inf")
                m = (tte_all >= lo) & (tte_all < edges[t + 1])
            else:
                m = torch.zeros(len(yte_all), dtype=torch.bool)
                m[torch.tensor_split(torch.arange(len(yte_all)), cfg.n_tasks)[t]] = True
            xte, yte = xte_all[m], remap[yte_all[m]]
        else:
            k = max(1, int(round(len(s) * cfg.test_fraction))) if len(s) > 1 else 0
            perm = s[torch.randperm(len(s), generator=g)]
            te, tr = perm[:k].sort().values, perm[k:].sort().values
            xte, yte = x[te], remap[y[te]]
        ytr = remap[y[tr]]
        exps.append(Experience(x[tr], ytr, xte, yte, sorted(torch.unique(ytr).tolist()),
                               t if cfg.boundaries == "visible" else None, index=t, train_time=tm[tr].clone()))
    sc = Scenario(name="cloc", experiences=exps, n_classes=len(classes), input_shape=tuple(x.shape[1:]),
                  class_order=classes, setting="domain", boundaries=cfg.boundaries, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, meta={"augment": cfg.augment, "ordered": True, "time_ordered": True})
    if cfg.input_size:
        sc.meta["input_size"] = cfg.input_size
        sc.input_shape = (3, cfg.input_size, cfg.input_size)
    return sc


scenarios.register("cloc", ClocConfig)(cloc)
