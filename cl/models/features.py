"""The feature cache: frozen backbones run once per (backbone, weights, preprocessing, data, split).

``featurize(scenario, resolved_cfg, device) -> Scenario`` turns an image / text scenario into one of
feature vectors (``modality="features"``, ``input_shape=(out_dim,)``) with the backbone named in
``resolved_cfg["backbone"]``.  The engine calls it for strategies with ``frozen_features = True``; it
then builds the model on an ``identity`` backbone.

Cache entries live under ``$CL_CACHE/features`` (default ``~/.cache/cl-platform/features``), one folder
per key::

    <key>/features.npy   float32 [M, D]   (read memory-mapped)
    <key>/hashes.npy     uint64  [M]      sorted 64-bit content hashes of the M distinct samples
    <key>/meta.json

The key digests: the backbone name and config, a digest of its weights (every tensor of its state
dict), its preprocessing (input size, mean, std; or the scenario's own normalisation), the modality and
sample shape, the split name and a fingerprint of the split's *set* of samples (each sample is
content-hashed, so the same data in another class order - another seed - hits the same entry, and
any change to the data, the weights or the preprocessing makes a new one).  Rows are found by their
sample hash.  Two runs filling one entry at once are safe: a file lock makes the second wait for the
first, and an entry only appears through an atomic rename of a finished temporary folder.

``CL_FEATURE_CACHE=0`` (or ``use_cache=False``) computes features without reading or writing the cache.
Extraction runs under ``torch.inference_mode``, with bf16 autocast on CUDA, channels-last for CNNs
and ``torch.compile`` when the backbone config says ``compile: true``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch

FORMAT = 1
LAST_STATS: dict = {}  # what the latest featurize did (hits, misses, seconds); for tests and benchmarks


def cache_root() -> Path:
    d = Path(os.environ.get("CL_CACHE") or Path.home() / ".cache" / "cl-platform") / "features"
    d.mkdir(parents=True, exist_ok=True)
    return d


def weights_digest(module: torch.nn.Module) -> str:
    """Digest of every tensor (name, dtype, shape, bytes) of a module's state dict."""
    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(module.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sample_hashes(x: torch.Tensor, text: bool = False) -> np.ndarray:
    """64-bit content hash of each sample (for text, trailing padding is ignored)."""
    a = x.detach().cpu().contiguous().numpy()
    a = a.reshape(len(a), -1)
    out = np.empty(len(a), dtype=np.uint64)
    for i, row in enumerate(a):
        if text:
            nz = np.flatnonzero(row)
            row = row[:nz[-1] + 1] if len(nz) else row[:0]
        out[i] = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
    return out


def _describe_preprocessing(backbone, scenario) -> dict:
    pp = getattr(backbone, "preprocessing", None)
    if pp is not None:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()}
    return {"scenario_mean": list(scenario.mean) if scenario.mean is not None else None,
            "scenario_std": list(scenario.std) if scenario.std is not None else None}


def entry_key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.inference_mode()
def extract(backbone, x: torch.Tensor, preprocess, device, batch_size: int) -> np.ndarray:
    """Features of ``x`` in order, as float32 numpy."""
    device = torch.device(device)
    out = np.empty((len(x), backbone.out_dim), dtype=np.float32)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    cuda = device.type == "cuda"
    # on CUDA, keep features on the device and copy them back in large chunks (no sync per batch)
    flush_rows = max(batch_size, (256 << 20) // (4 * backbone.out_dim)) if cuda else batch_size
    pending, start = [], 0

    def flush():
        nonlocal pending, start
        if pending:
            f = torch.cat(pending).cpu().numpy()
            out[start:start + len(f)] = f
            start += len(f)
            pending = []

    with amp:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if cuda and xb.device.type == "cpu":
                xb = xb.pin_memory()
            pending.append(backbone(preprocess(xb.to(device, non_blocking=True))).float())
            if sum(len(p) for p in pending) >= flush_rows:
                flush()
        flush()
    return out


def _write_entry(final: Path, hashes: np.ndarray, feats: np.ndarray, meta: dict) -> None:
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "hashes.npy", hashes)
        np.save(tmp / "features.npy", feats)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(tmp, final)  # atomic; fails if another writer got there first
        except OSError:
            if not (final / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_entry(final: Path):
    if not (final / "meta.json").exists():
        return None
    try:
        hashes = np.load(final / "hashes.npy", mmap_mode="r")
        feats = np.load(final / "features.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if len(hashes) != len(feats):
        return None
    return hashes, feats


def split_features(backbone, xs: list[torch.Tensor], key_parts: dict, preprocess, device, batch_size: int,
                   use_cache: bool, text: bool, stats: dict) -> list[torch.Tensor]:
    """Features for each tensor of ``xs`` (the pieces of one split), through the cache."""
    x_all = torch.cat(xs) if len(xs) > 1 else xs[0]
    h_all = sample_hashes(x_all, text=text)
    uniq, first = np.unique(h_all, return_index=True)
    parts = {**key_parts, "n": int(len(uniq)),
             "fingerprint": hashlib.sha1(uniq.tobytes()).hexdigest()}
    key = entry_key(parts)
    stats.setdefault("keys", []).append(key)
    entry = None
    if use_cache:
        from filelock import FileLock

        root = cache_root()
        final = root / key
        entry = _read_entry(final)
        if entry is None:
            with FileLock(str(root / f"{key}.lock")):
                entry = _read_entry(final)  # another run may have filled it while we waited
                if entry is None:
                    t0 = time.perf_counter()
                    feats = extract(backbone, x_all[torch.from_numpy(first)], preprocess, device, batch_size)
                    stats["compute_s"] = stats.get("compute_s", 0.0) + time.perf_counter() - t0
                    stats["computed"] = stats.get("computed", 0) + len(feats)
                    if final.exists():  # a broken leftover
                        shutil.rmtree(final, ignore_errors=True)
                    _write_entry(final, uniq, feats, {**parts, "created": time.time(), "format": FORMAT})
                    entry = _read_entry(final)
                    stats["misses"] = stats.get("misses", 0) + 1
                else:
                    stats["hits"] = stats.get("hits", 0) + 1
        else:
            stats["hits"] = stats.get("hits", 0) + 1
        hashes, feats = entry
    else:
        t0 = time.perf_counter()
        feats = extract(backbone, x_all[torch.from_numpy(first)], preprocess, device, batch_size)
        stats["compute_s"] = stats.get("compute_s", 0.0) + time.perf_counter() - t0
        stats["computed"] = stats.get("computed", 0) + len(feats)
        hashes = uniq
    pos = np.searchsorted(hashes, h_all)
    if pos.max(initial=0) >= len(hashes) or not np.array_equal(np.asarray(hashes)[pos], h_all):
        raise RuntimeError(f"feature cache entry {key} does not hold every sample; delete {cache_root() / key}")
    rows = torch.from_numpy(np.ascontiguousarray(feats[pos]))
    out, i = [], 0
    for x in xs:
        out.append(rows[i:i + len(x)])
        i += len(x)
    return out


def featurize(scenario, resolved_cfg: dict, device, use_cache: bool | None = None, batch_size: int | None = None,
              backbone=None, verbose: bool = True):
    """The scenario with every sample replaced by the frozen backbone's features (cached on disk)."""
    from cl.core.streams import Scenario

    if scenario.modality == "features":
        return scenario
    if use_cache is None:
        use_cache = os.environ.get("CL_FEATURE_CACHE", "1").lower() not in ("0", "false", "no", "off")
    device = torch.device(device) if not isinstance(device, torch.device) else device
    from cl.models.backbones import backbone_spec, build_backbone

    name, bcfg = backbone_spec(resolved_cfg)
    if backbone is None:
        backbone = build_backbone(name, bcfg, scenario.input_shape)
    backbone = backbone.to(device).eval()
    from cl.models.model import preprocess_factory

    preprocess = preprocess_factory(backbone, scenario)(device)
    bdict = {k: v for k, v in (dataclasses.asdict(bcfg) if dataclasses.is_dataclass(bcfg) else {}).items()
             if k not in ("compile", "channels_last")}
    text = scenario.modality == "text"
    ex = scenario.experiences[0]
    common = {"format": FORMAT, "backbone": name, "backbone_cfg": bdict, "weights": weights_digest(backbone),
              "preprocessing": _describe_preprocessing(backbone, scenario), "modality": scenario.modality,
              "sample_shape": list(ex.train_x.shape[1:]) if not text else "text", "dtype": str(ex.train_x.dtype)}
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else (128 if text else 64)
    stats = {"hits": 0, "misses": 0, "computed": 0, "compute_s": 0.0}
    t0 = time.perf_counter()
    exps = scenario.experiences
    new = {}
    for split in ("train", "test"):
        xs = [getattr(e, f"{split}_x") for e in exps]
        if any(not isinstance(x, torch.Tensor) for x in xs):
            raise TypeError("featurize needs tensor-backed experiences (materialise streaming datasets first)")
        new[split] = split_features(backbone, xs, {**common, "split": split}, preprocess, device, batch_size,
                                    use_cache, text, stats)
    stats["seconds"] = time.perf_counter() - t0
    LAST_STATS.clear()
    LAST_STATS.update(stats)
    if verbose and stats["computed"]:
        print(f"featurize: {name} computed {stats['computed']} features in {stats['compute_s']:.1f}s "
              f"({'cached in ' + str(cache_root()) if use_cache else 'cache off'})", file=sys.stderr)
    exps2 = [dataclasses.replace(e, train_x=new["train"][i], test_x=new["test"][i]) for i, e in enumerate(exps)]
    meta = {**scenario.meta, "features": {"backbone": name, "out_dim": backbone.out_dim, "keys": stats.get("keys"),
                                          "source_modality": scenario.modality}}
    return dataclasses.replace(scenario, experiences=exps2, input_shape=(backbone.out_dim,), mean=None, std=None,
                               modality="features", meta=meta)
