"""Dataset roots, the decode cache, and the Dataset-backed path for large folders.

Root resolution (:func:`find_root`): an explicit ``root`` (CLI / YAML) wins; else a
per-dataset environment variable (e.g. ``CL_DATA_CIFAR10``); else ``$CL_DATA``
(the folder itself or a sub-folder named after the dataset); else the shared data
folder ``../shared/data`` next to the project root, found automatically.  When
nothing matches, :class:`DatasetNotFound` (a :class:`~cl.core.registry.ConfigError`)
names every path tried, what was missing and the layout expected.

Decoded arrays are cached once under :func:`cache_dir` (``$CL_CACHE`` or
``~/.cache/cl-platform``, never inside the repository), written atomically
(temporary file + rename) and memory-mapped on reuse.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from cl.train.loggers import atomic_write_json
from cl.core.registry import ConfigError
from cl.core.files import atomic_write

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # cl/data/cache.py -> the project root
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DatasetNotFound(ConfigError):
    """A dataset root is missing or incomplete."""


def shared_data_dir() -> Path:
    """``../shared/data`` relative to the project root (may not exist)."""
    return PROJECT_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """The decode cache: ``$CL_CACHE`` or ``~/.cache/cl-platform`` (created on demand)."""
    d = Path(os.environ.get("CL_CACHE") or Path.home() / ".cache" / "cl-platform")
    d.mkdir(parents=True, exist_ok=True)
    return d


def candidate_roots(name: str, root: str | os.PathLike | None = None, env: Sequence[str] = (),
                    subdirs: Sequence[str] = (), extra: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Where to look for dataset ``name``, in order of preference.

    With an explicit ``root`` only that root (and its ``subdirs``) is tried.
    """
    subdirs = list(subdirs) or [name]
    out: list[Path] = []
    if root:
        r = Path(os.path.expanduser(str(root)))
        return [r] + [r / s for s in subdirs]
    for var in env:
        if os.environ.get(var):
            out.append(Path(os.path.expanduser(os.environ[var])))
    if os.environ.get("CL_DATA"):
        base = Path(os.path.expanduser(os.environ["CL_DATA"]))
        out += [base / s for s in subdirs] + [base]
    sh = shared_data_dir()
    out += [sh / s for s in subdirs] + [sh]
    out += [Path(p) for p in extra]
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def find_root(name: str, root, check: Callable[[Path], object], layout: str, env: Sequence[str] = (),
              subdirs: Sequence[str] = (), extra: Sequence[str | os.PathLike] = ()):
    """Return ``check(p)`` for the first candidate path ``p`` where it is truthy.

    ``check`` returns something truthy when ``p`` holds the dataset (for example the
    detected layout), or a string starting with ``"missing"`` describing what is
    missing (kept for the error message).
    """
    tried = []
    for p in candidate_roots(name, root, env, subdirs, extra):
        try:
            res = check(p) if p.exists() else f"missing: {p} does not exist"
        except OSError as e:
            res = f"missing: cannot read {p}: {e}"
        if res and not (isinstance(res, str) and res.startswith("missing")):
            return res
        tried.append(f"  {p}: {res or 'not the expected layout'}")
    envs = ", ".join(list(env) + ["CL_DATA"])
    raise DatasetNotFound(f"{name}: no dataset found. Paths tried:\n" + "\n".join(tried) +
                          f"\nExpected layout: {layout}\n"
                          f"Give the root with `--set scenario.root=PATH` (or `root:` in the YAML) or set {envs}.")


# -- the decode cache ------------------------------------------------------------------------------
def source_key(*paths: Path, extra: str = "") -> str:
    """A short hash identifying source files by path, size and modification time."""
    h = hashlib.sha1(extra.encode())
    for p in paths:
        p = Path(p)
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr), binary=True, public=False, suffix=".tmp")


def cached_arrays(key: str, build: Callable[[], tuple[dict, dict]], use_cache: bool = True):
    """Arrays cached under ``cache_dir()/key``: ``build()`` returns ``(arrays, meta)`` once;
    later calls memory-map the ``.npy`` files (copy-on-write) and read ``meta`` back.

    The meta JSON is written last, so a half-written cache is never taken as complete.
    """
    if not use_cache:
        return build()
    d = cache_dir() / key
    meta_path = d / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            arrays = {k: np.load(d / f"{k}.npy", mmap_mode="c") for k in meta["_arrays"]}
            return arrays, {k: v for k, v in meta.items() if k != "_arrays"}
        except (OSError, ValueError, KeyError):
            pass  # corrupt or partial: rebuild
    arrays, meta = build()
    d.mkdir(parents=True, exist_ok=True)
    for k, a in arrays.items():
        _atomic_save_npy(d / f"{k}.npy", np.ascontiguousarray(a))
    atomic_write_json(meta_path, {**meta, "_arrays": list(arrays)})
    return arrays, meta


def to_tensor(a: np.ndarray, dtype=None) -> torch.Tensor:
    a = np.asarray(a)
    if not a.flags.writeable:  # e.g. np.frombuffer: copy rather than share read-only memory
        a = a.copy()
    t = torch.from_numpy(a)
    return t if dtype is None else t.to(dtype)


# -- image decoding ----------------------------------------------------------------------------------
def decode_image(src, size: int | tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """Decode an image (path or file object) to uint8 ``(C, H, W)``; resized to ``size`` when given."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert(mode)
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            if im.size != (hw[1], hw[0]):
                im = im.resize((hw[1], hw[0]), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def decode_many(paths: Sequence[Path], size, mode: str = "RGB") -> np.ndarray:
    if not len(paths):
        c = 1 if mode == "L" else 3
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return np.zeros((0, c, *hw), dtype=np.uint8)
    first = decode_image(paths[0], size, mode)
    out = np.empty((len(paths),) + first.shape, dtype=np.uint8)
    out[0] = first
    for i, p in enumerate(paths[1:], 1):
        out[i] = decode_image(p, size or first.shape[1:], mode)
    return out


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def image_folder_index(root: Path, classes: Iterable[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """``root/<class>/*.<img>``: (paths, labels, class names) with classes sorted by name."""
    root = Path(root)
    names = sorted(d.name for d in root.iterdir() if d.is_dir()) if classes is None else list(classes)
    paths, labels = [], []
    for k, c in enumerate(names):
        for p in list_images(root / c):
            paths.append(p)
            labels.append(k)
    return paths, labels, names


# -- Dataset-backed path for folders that do not fit in memory -----------------------------------------
class ImagePathDataset(torch.utils.data.Dataset):
    """Decodes ``paths[i]`` on access (uint8 CHW, resized to ``size``); for a DataLoader with workers."""

    def __init__(self, paths: Sequence, labels: Sequence[int], size=None, mode: str = "RGB", times=None):
        self.paths, self.labels, self.size, self.mode = list(paths), torch.as_tensor(labels).long(), size, mode
        self.times = None if times is None else torch.as_tensor(times)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        x = torch.from_numpy(decode_image(self.paths[i], self.size, self.mode))
        return x, self.labels[i]


def streaming_loader(dataset, batch_size: int = 64, shuffle: bool = True, workers: int | None = None,
                     seed: int = 0, pin_memory: bool | None = None, persistent: bool = True, **kw):
    """A DataLoader with worker processes, pinned memory (on CUDA) and persistent workers."""
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       pin_memory=pin_memory, persistent_workers=persistent and workers > 0, generator=g,
                                       prefetch_factor=4 if workers > 0 else None, **kw)


def materialize(dataset, batch_size: int = 256, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a whole Dataset into (uint8 x, long y) tensors with parallel workers."""
    if len(dataset) == 0:
        raise ConfigError("empty dataset")
    dl = streaming_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers, pin_memory=False,
                           persistent=False)
    xs, ys = [], []
    for x, y in dl:
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def decode_paths_cached(prefix: str, paths: Sequence[Path], size, mode: str = "RGB", use_cache: bool = True,
                        workers: int | None = None) -> torch.Tensor:
    """Decode images (resized to ``size``) into one uint8 tensor, once: cached under a key made of the
    paths, the size and the mode.  Large lists are decoded by a DataLoader with worker processes."""
    h = hashlib.sha1(f"{size}|{mode}|{len(paths)}".encode())
    for p in paths:
        h.update(str(p).encode())
        h.update(b"\0")
    key = f"{prefix}-{h.hexdigest()[:12]}"

    def build():
        if len(paths) < 2000 or workers == 0:
            x = decode_many(list(paths), size, mode)
        else:
            xs, _ = materialize(ImagePathDataset(paths, [0] * len(paths), size, mode), workers=workers)
            x = xs.numpy()
        return {"x": x}, {"n": len(paths)}

    arrays, _ = cached_arrays(key, build, use_cache)
    return to_tensor(arrays["x"])
