"""TinyImageNet from ``tiny-imagenet-200/`` (the standard layout)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cl.core.registry import ConfigError
from cl.data.cache import decode_paths_cached, find_root, list_images
from cl.data.settings import SettingConfig, build_setting, register_family
from scenarios._folders import IMAGENET_MEAN, IMAGENET_STD

# =========================================== TinyImageNet ===========================================
_TINY_LAYOUT = ("<root>/tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
                "val/val_annotations.txt, val/images/*.JPEG}")


def _tiny_check(p: Path):
    need = ["wnids.txt", "train", "val/val_annotations.txt", "val/images"]
    lack = [n for n in need if not (p / n).exists()]
    if not lack:
        return p
    return f"missing: {p} lacks {lack}"


def load_tiny_imagenet(root=None, size: int = 64):
    """TinyImageNet-200 (val as test): ``(xtr uint8 (N,3,size,size), ytr, xte, yte, class_names)``."""
    p = find_root("tiny-imagenet", root, _tiny_check, _TINY_LAYOUT, env=("CL_DATA_TINY_IMAGENET",),
                  subdirs=["tiny-imagenet-200", "tiny-imagenet"])
    wnids = [w.strip() for w in (p / "wnids.txt").read_text().split() if w.strip()]
    words = {}
    if (p / "words.txt").is_file():
        for line in (p / "words.txt").read_text().splitlines():
            if "\t" in line:
                k, v = line.split("\t", 1)
                words[k] = v.split(",")[0].strip()
    idx = {w: k for k, w in enumerate(wnids)}
    ptr, ytr = [], []
    for w in wnids:
        d = p / "train" / w / "images"
        if not d.is_dir():
            d = p / "train" / w
        if not d.is_dir():
            raise ConfigError(f"tiny-imagenet: {p / 'train' / w / 'images'} is missing (wnid listed in wnids.txt)")
        for f in list_images(d):
            ptr.append(f)
            ytr.append(idx[w])
    pte, yte = [], []
    for line in (p / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in idx:
            pte.append(p / "val" / "images" / parts[0])
            yte.append(idx[parts[1]])
    missing = [str(f) for f in pte if not f.is_file()][:3]
    if missing:
        raise ConfigError(f"tiny-imagenet: images listed in val_annotations.txt are missing, e.g. {missing}")
    xtr = decode_paths_cached("tiny-imagenet", ptr, size)
    xte = decode_paths_cached("tiny-imagenet", pte, size)
    return xtr, torch.tensor(ytr).long(), xte, torch.tensor(yte).long(), [words.get(w, w) for w in wnids]


@dataclass
class TinyConfig(SettingConfig):
    n_tasks: int = 10
    root: str | None = None
    image_size: int = 64


def split_tiny_imagenet(cfg: TinyConfig, seed: int):
    """Split TinyImageNet-200 (64x64, val as test), 10 tasks x 20 classes by default."""
    xtr, ytr, xte, yte, names = load_tiny_imagenet(cfg.root, cfg.image_size)
    return build_setting("tiny-imagenet", xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD)


register_family("tiny-imagenet", TinyConfig, split_tiny_imagenet, [1, 2, 5, 10, 20, 40, 100, 200])
register_family("split-tiny-imagenet", TinyConfig, split_tiny_imagenet, [10, 20])
