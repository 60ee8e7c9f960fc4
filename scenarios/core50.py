"""CORe50 (NI, NC, NIC) in Avalanche's layout: ``core50_128x128/`` and ``batches_filelists/``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl.core.registry import ConfigError, scenarios
from cl.core.streams import Experience, Scenario
from cl.data.cache import decode_paths_cached, find_root
from cl.data.task_free import hide_boundaries
from scenarios._folders import IMAGENET_MEAN, IMAGENET_STD, _check_augment

# =========================================== CORe50 ===========================================
_CORE50_DIRS = {"ni": "NI_inc", "nc": "NC_inc", "nic": "NIC_inc"}
_CORE50_LAYOUT = ("<root>/core50_128x128/s1..s11/o1..o50/C_ss_oo_fff.png and "
                  "<root>/batches_filelists/{NI_inc,NC_inc,NIC_inc}/run<k>/{train_batch_XX_filelist.txt,"
                  "test_filelist.txt} (Avalanche's layout)")
CORE50_CATEGORIES = ["plug_adapter", "mobile_phone", "scissor", "light_bulb", "can", "glass", "ball", "marker",
                     "cup", "remote_control"]


def _core50_check(scen: str, run: int):
    def check(p: Path):
        lack = []
        if not (p / "core50_128x128").is_dir():
            lack.append("core50_128x128/")
        d = p / "batches_filelists" / _CORE50_DIRS[scen] / f"run{run}"
        if not d.is_dir():
            lack.append(f"batches_filelists/{_CORE50_DIRS[scen]}/run{run}/")
        elif not (d / "test_filelist.txt").is_file() or not sorted(d.glob("train_batch_*_filelist.txt")):
            lack.append(f"{d.relative_to(p)}/{{train_batch_XX_filelist.txt,test_filelist.txt}}")
        return ("ok", p) if not lack else f"missing: {p} lacks {lack}"

    return check


def _read_filelist(path: Path, img_root: Path):
    paths, labels = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, lab = line.rsplit(None, 1)
            paths.append(img_root / rel)
            labels.append(int(lab))
    return paths, labels


@dataclass
class Core50Config:
    scenario: str = "nc"  # ni (new instances) | nc (new classes) | nic (new instances and classes)
    run: int = 0  # which of the published batch orders (run0..run9)
    object_level: bool = True  # 50 objects; false: 10 categories
    root: str | None = None
    image_size: int = 128  # 128 is native; 32 or 64 save memory
    boundaries: str = "visible"  # visible | hidden
    train_per_batch: int = 0  # keep at most this many images per training batch (0: all)
    augment: str = "none"
    input_size: int = 0


def load_core50(cfg: Core50Config, seed: int = 0) -> Scenario:
    scen = cfg.scenario.lower()
    if scen not in _CORE50_DIRS:
        from cl.core.registry import unknown

        raise unknown("CORe50 scenario", cfg.scenario, list(_CORE50_DIRS))
    if cfg.boundaries not in ("visible", "hidden"):
        raise ConfigError(f"core50: boundaries={cfg.boundaries!r}; CORe50's batches support visible or hidden")
    _check_augment(cfg)
    _, p = find_root("core50", cfg.root, _core50_check(scen, cfg.run), _CORE50_LAYOUT, env=("CL_DATA_CORE50",),
                     subdirs=["core50", "CORe50"])
    d = p / "batches_filelists" / _CORE50_DIRS[scen] / f"run{cfg.run}"
    img_root = p / "core50_128x128"
    batches = [_read_filelist(f, img_root) for f in sorted(d.glob("train_batch_*_filelist.txt"))]
    pte, yte = _read_filelist(d / "test_filelist.txt", img_root)
    if cfg.train_per_batch:
        g = np.random.RandomState(0)
        batches = [_take(ps, ys, cfg.train_per_batch, g) for ps, ys in batches]
    missing = [str(x) for x in [*(q for ps, _ in batches for q in ps[:1]), *pte[:1]] if not Path(x).is_file()]
    if missing:
        raise ConfigError(f"core50: images listed in {d} are missing under {img_root}, e.g. {missing[:2]}")
    conv = (lambda y: y) if cfg.object_level else (lambda y: y // 5)
    names = ([f"o{i + 1}" for i in range(50)] if cfg.object_level else CORE50_CATEGORIES)
    xs = [decode_paths_cached("core50", ps, cfg.image_size) for ps, _ in batches]
    ys = [conv(torch.tensor(y).long()) for _, y in batches]
    xte = decode_paths_cached("core50", pte, cfg.image_size)
    yte_t = conv(torch.tensor(yte).long())
    # class order = order of first appearance in the stream
    order = []
    for y in ys:
        for c in y.tolist():
            if c not in order:
                order.append(c)
    for c in sorted(set(yte_t.tolist()) - set(order)):
        order.append(c)
    remap = torch.full((max(order) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(len(order))
    ys = [remap[y] for y in ys]
    yte_r = remap[yte_t]
    exps = []
    if scen == "nc":
        seen = set()
        for t, (x, y) in enumerate(zip(xs, ys)):
            new = sorted(set(y.tolist()) - seen)
            seen |= set(new)
            m = torch.isin(yte_r, torch.tensor(new, dtype=torch.long))
            exps.append(Experience(x, y, xte[m], yte_r[m], new, None, index=t))
        setting = "class"
    else:  # NI / NIC: the common test set, split in stratified shards (mean over shards = full test accuracy)
        g = torch.Generator().manual_seed(0)
        from cl.data.domains import _shards

        shards = _shards(yte_r, len(xs), g)
        for t, (x, y) in enumerate(zip(xs, ys)):
            exps.append(Experience(x, y, xte[shards[t]], yte_r[shards[t]], sorted(set(y.tolist())), None, index=t))
        setting = "domain" if scen == "ni" else "class"
    sc = Scenario(name=f"core50-{scen}", experiences=exps, n_classes=len(order), input_shape=tuple(xte.shape[1:]),
                  class_order=order, class_names=[names[c] for c in order], setting=setting, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, meta={"augment": cfg.augment, "run": cfg.run, "core50_scenario": scen})
    if cfg.input_size:
        sc.meta["input_size"] = cfg.input_size
        sc.input_shape = (3, cfg.input_size, cfg.input_size)
    if cfg.boundaries == "hidden":
        sc = hide_boundaries(sc)
    return sc



def _take(ps, ys, k, g):
    idx = sorted(g.permutation(len(ps))[:k].tolist())
    return [ps[i] for i in idx], [ys[i] for i in idx]


def _core50_variant(scen):
    def build(cfg, seed):
        if scen is not None:
            cfg.scenario = scen
        return load_core50(cfg, seed)

    build.__doc__ = f"CORe50 {(scen or 'ni|nc|nic').upper()} (Avalanche's layout; batch order run0..9)."
    return build


scenarios.register("core50", Core50Config)(_core50_variant(None))
for _s in ("ni", "nc", "nic"):
    scenarios.register(f"core50-{_s}", Core50Config)(_core50_variant(_s))
