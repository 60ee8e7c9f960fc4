"""CIFAR-10 and CIFAR-100 from disk: the python pickles, an ImageFolder layout, or a tarball of either.

Layouts accepted for CIFAR-10 (``root`` may point at any of them, or at a folder holding one):
  * pickles: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (or the original
    ``cifar-10-python.tar.gz``);
  * ImageFolder: ``{train,test}/<class>/*.jpg`` (also under ``cifar10/``);
  * the shared JPEG tarball ``cifar10-jpeg.tar.gz`` (``cifar10/{train,test}/<class>/<n>.jpg``), found
    automatically in ``../shared/data`` next to the project root.
CIFAR-100: ``cifar-100-python/{train,test,meta}`` (or ``cifar-100-python.tar.gz``), or an ImageFolder.

Decoded arrays are cached once (see :mod:`cl.data.cache`), so a second run memory-maps them.
"""
from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl.data.cache import (IMAGE_EXTS, cached_arrays, decode_image, find_root, list_images, source_key, to_tensor)
from cl.core.registry import ConfigError
from cl.data.settings import SettingConfig, build_setting, register_family

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}

_LAYOUT = {
    10: ("<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, or <root>/{train,test}/<class>/*.jpg "
         "(ImageFolder), or a tarball of either (cifar-10-python.tar.gz, cifar10-jpeg.tar.gz)"),
    100: ("<root>/cifar-100-python/{train,test,meta}, or <root>/{train,test}/<class>/*.png (ImageFolder), "
          "or cifar-100-python.tar.gz"),
}
_PICKLE_DIR = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
_PICKLE_FILES = {10: ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                      "batches.meta"], 100: ["train", "test", "meta"]}
_TARBALLS = {10: ["cifar10-jpeg.tar.gz", "cifar-10-python.tar.gz"], 100: ["cifar-100-python.tar.gz",
                                                                          "cifar100-jpeg.tar.gz"]}


def _detect(n: int):
    """A check for :func:`cl.data.cache.find_root`: returns (kind, path) or a 'missing ...' string."""

    def check(p: Path):
        if p.is_file():
            if p.name.endswith((".tar.gz", ".tgz", ".tar")):
                return ("tar", p)
            return f"missing: {p} is a file but not a tarball"
        pd = p / _PICKLE_DIR[n]
        for d in (pd, p):
            have = [f for f in _PICKLE_FILES[n] if (d / f).is_file()]
            if have:
                lack = [f for f in _PICKLE_FILES[n] if f not in have]
                if lack:
                    return f"missing: {d} has {have} but lacks {lack}"
                return ("pickle", d)
        for d in (p, p / f"cifar{n}"):
            if (d / "train").is_dir() or (d / "test").is_dir():
                lack = [s for s in ("train", "test") if not (d / s).is_dir()]
                if lack:
                    return f"missing: {d} is an ImageFolder but lacks {lack}"
                return ("folder", d)
        for t in _TARBALLS[n]:
            if (p / t).is_file():
                return ("tar", p / t)
        return f"missing: none of {_PICKLE_DIR[n]}/, train/ + test/, {', '.join(_TARBALLS[n])}"

    return check


def _unpickle(f):
    from cl.core.safe_load import load_numpy_pickle

    return load_numpy_pickle(f, getattr(f, "name", "CIFAR pickle"))  # numpy arrays, lists, dicts, bytes only


def _from_pickles(n: int, get) -> tuple[dict, dict]:
    """``get(name)`` opens one pickle file (from a folder or a tarball)."""
    lab = b"labels" if n == 10 else b"fine_labels"
    if n == 10:
        parts = [_unpickle(get(f"data_batch_{i}")) for i in range(1, 6)]
        xtr = np.concatenate([p[b"data"] for p in parts])
        ytr = np.concatenate([np.asarray(p[lab]) for p in parts])
        meta = _unpickle(get("batches.meta"))
        names = [s.decode() for s in meta[b"label_names"]]
        te = _unpickle(get("test_batch"))
    else:
        tr = _unpickle(get("train"))
        xtr, ytr = tr[b"data"], np.asarray(tr[lab])
        meta = _unpickle(get("meta"))
        names = [s.decode() for s in meta[b"fine_label_names"]]
        te = _unpickle(get("test"))
        extra = {}
        if b"coarse_labels" in tr and meta.get(b"coarse_label_names"):
            f2c = {int(f): int(c) for f, c in zip(tr[lab], tr[b"coarse_labels"])}
            extra = {"fine_to_coarse": [f2c.get(i, -1) for i in range(len(names))],
                     "coarse_names": [s.decode() for s in meta[b"coarse_label_names"]]}
    xte, yte = te[b"data"], np.asarray(te[lab])
    arrays = {"xtr": np.asarray(xtr, np.uint8).reshape(-1, 3, 32, 32), "ytr": ytr.astype(np.int64),
              "xte": np.asarray(xte, np.uint8).reshape(-1, 3, 32, 32), "yte": yte.astype(np.int64)}
    return arrays, {"class_names": names, **(extra if n == 100 else {})}


def _assemble(items: dict[str, list[tuple[str, np.ndarray]]], where: str) -> tuple[dict, dict]:
    """items[split] = [(class_name, image CHW)] -> arrays with classes sorted by name."""
    names = sorted({c for split in items.values() for c, _ in split})
    if not names:
        raise ConfigError(f"{where}: no images found")
    idx = {c: k for k, c in enumerate(names)}
    arrays = {}
    for split, key in (("train", "tr"), ("test", "te")):
        rows = items.get(split, [])
        if not rows:
            raise ConfigError(f"{where}: no {split} images found (expected {split}/<class>/*.jpg)")
        arrays["x" + key] = np.stack([a for _, a in rows])
        arrays["y" + key] = np.asarray([idx[c] for c, _ in rows], dtype=np.int64)
    return arrays, {"class_names": names}


_SPLIT_RE = re.compile(r"(?:^|/)(train|test)/([^/]+)/[^/]+$")


def _from_folder(d: Path) -> tuple[dict, dict]:
    items = {}
    for split in ("train", "test"):
        rows = []
        for cdir in sorted(x for x in (d / split).iterdir() if x.is_dir()):
            for p in list_images(cdir):
                rows.append((cdir.name, decode_image(p, 32)))
        items[split] = rows
    return _assemble(items, str(d))


def _from_tar(n: int, path: Path) -> tuple[dict, dict]:
    with tarfile.open(path) as tf:
        names = tf.getnames()
        pick = [m for m in names if m.rsplit("/", 1)[-1] in _PICKLE_FILES[n]]
        if len(pick) >= len(_PICKLE_FILES[n]):
            by = {m.rsplit("/", 1)[-1]: m for m in pick}
            return _from_pickles(n, lambda f: io.BytesIO(tf.extractfile(by[f]).read()))
    items: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(path, mode="r|*") as tf:  # stream: one pass over the archive
        for m in tf:
            if not m.isfile() or not m.name.lower().endswith(IMAGE_EXTS):
                continue
            mt = _SPLIT_RE.search(m.name)
            if not mt:
                continue
            data = tf.extractfile(m).read()
            items[mt.group(1)].append((mt.group(2), m.name, decode_image(io.BytesIO(data), 32)))
    for k in items:  # deterministic order regardless of the archive's member order
        items[k] = [(c, a) for c, _, a in sorted(items[k], key=lambda r: (r[0], r[1]))]
    return _assemble(items, str(path))


def _load(n: int, root=None, use_cache: bool = True):
    kind, path = find_root(f"cifar{n}", root, _detect(n), _LAYOUT[n], env=(f"CL_DATA_CIFAR{n}",),
                           subdirs=[f"cifar{n}", f"cifar-{n}", _PICKLE_DIR[n]])
    if kind == "pickle":
        files = [path / f for f in _PICKLE_FILES[n]]
        key = f"cifar{n}-pickle-" + source_key(*files)
        build = lambda: _from_pickles(n, lambda f: io.BytesIO((path / f).read_bytes()))  # noqa: E731
    elif kind == "tar":
        key = f"cifar{n}-tar-" + source_key(path)
        build = lambda: _from_tar(n, path)  # noqa: E731
    else:
        dirs = [path / "train", path / "test"] + sorted(x for s in ("train", "test") for x in (path / s).iterdir())
        key = f"cifar{n}-folder-" + source_key(*dirs)
        build = lambda: _from_folder(path)  # noqa: E731
    arrays, meta = cached_arrays(key, build, use_cache)
    return (to_tensor(arrays["xtr"]), to_tensor(arrays["ytr"], torch.long), to_tensor(arrays["xte"]),
            to_tensor(arrays["yte"], torch.long), list(meta["class_names"]), meta)


def load_cifar10(root=None, use_cache: bool = True):
    """CIFAR-10 as ``(xtr uint8 (N,3,32,32), ytr long, xte, yte, class_names)``.

    ``root``: a folder or tarball in one of the layouts above; ``None`` resolves it from
    ``$CL_DATA_CIFAR10``, ``$CL_DATA`` or the shared data folder.
    """
    return _load(10, root, use_cache)[:5]


def load_cifar100(root=None, use_cache: bool = True):
    """CIFAR-100 (fine labels) as ``(xtr, ytr, xte, yte, class_names)``."""
    return _load(100, root, use_cache)[:5]


def superclass_order(fine_to_coarse: list[int]) -> list[int]:
    """Fine classes grouped by superclass (coarse label, then fine id): with 20 tasks, task t is superclass t."""
    return sorted(range(len(fine_to_coarse)), key=lambda f: (fine_to_coarse[f], f))


# -- registered scenarios -------------------------------------------------------------------------------


@dataclass
class CifarConfig(SettingConfig):
    n_tasks: int = 5
    root: str | None = None  # folder or tarball; default: $CL_DATA_CIFAR10, $CL_DATA, ../shared/data


@dataclass
class Cifar100Config(SettingConfig):
    n_tasks: int = 10
    root: str | None = None


def split_cifar10(cfg: CifarConfig, seed: int):
    """Split CIFAR-10 (pickles, ImageFolder or the shared JPEG tarball), 5 tasks x 2 classes by default."""
    xtr, ytr, xte, yte, names = load_cifar10(cfg.root)
    return build_setting("split-cifar10", xtr, ytr, xte, yte, cfg, seed, class_names=names,
                         mean=CIFAR_MEAN[10], std=CIFAR_STD[10])


def split_cifar100(cfg: Cifar100Config, seed: int):
    """Split CIFAR-100 (cifar-100-python pickles), 10 tasks x 10 classes by default; order=superclass groups
    the classes by their 20 superclasses."""
    xtr, ytr, xte, yte, names, meta = _load(100, cfg.root)
    if cfg.order == "superclass" and not cfg.class_order:
        if "fine_to_coarse" not in meta:
            raise ConfigError("split-cifar100: order=superclass needs the coarse labels of the cifar-100-python "
                              "pickles (not available from an image folder)")
        cfg.class_order = superclass_order(meta["fine_to_coarse"])
    return build_setting("split-cifar100", xtr, ytr, xte, yte, cfg, seed, class_names=names,
                         mean=CIFAR_MEAN[100], std=CIFAR_STD[100])


register_family("split-cifar10", CifarConfig, split_cifar10, [1, 2, 5, 10])
register_family("split-cifar100", Cifar100Config, split_cifar100, [1, 2, 4, 5, 10, 20, 25, 50, 100])
