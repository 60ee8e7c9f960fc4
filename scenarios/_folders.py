"""Helpers shared by the image-folder datasets: the layout check of a class-per-folder tree and its decoded
arrays (train/test folders, or one folder split by a seeded fraction)."""
from __future__ import annotations

from pathlib import Path

import torch

from cl.core.registry import ConfigError
from cl.core.streams import stratified_split
from cl.data.cache import decode_paths_cached, image_folder_index, list_images

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# =========================================== generic folder helpers ===========================================
def _class_folder_check(min_classes: int = 1):
    def check(p: Path):
        if not p.is_dir():
            return f"missing: {p} is not a folder"
        if (p / "train").is_dir() or (p / "test").is_dir():
            lack = [s for s in ("train", "test") if not (p / s).is_dir()]
            if lack:
                return f"missing: {p} has train/ or test/ but lacks {lack}"
            return ("split", p)
        classes = [d for d in p.iterdir() if d.is_dir() and list_images(d)]
        if len(classes) >= min_classes:
            return ("flat", p)
        return f"missing: no <class>/ folders with images in {p}"

    return check


def _folder_arrays(prefix, kind, path, size, test_fraction, classes=None):
    """Decode ``<class>/*`` (split seeded) or ``{train,test}/<class>/*`` to uint8 tensors."""
    if kind == "split":
        ptr, ytr, names = image_folder_index(path / "train", classes)
        pte, yte, names_te = image_folder_index(path / "test", names)
        if not ptr:
            raise ConfigError(f"{path / 'train'}: no images found (expected train/<class>/*.jpg)")
        xtr = decode_paths_cached(prefix, ptr, size)
        xte = decode_paths_cached(prefix, pte, size)
        return xtr, torch.tensor(ytr).long(), xte, torch.tensor(yte).long(), names
    paths, y, names = image_folder_index(path, classes)
    if not paths:
        raise ConfigError(f"{path}: no images found (expected <class>/*.jpg)")
    y = torch.tensor(y).long()
    x = decode_paths_cached(prefix, paths, size)
    small = int(torch.bincount(y).min())
    if small < 2:
        raise ConfigError(f"{path}: every class needs at least 2 images to hold some out for testing")
    tr, te = stratified_split(y, test_fraction, seed=0)
    if len(te) == 0:
        raise ConfigError(f"{path}: test_fraction={test_fraction} leaves no test images")
    return x[tr], y[tr], x[te], y[te], names

def _check_augment(cfg):
    from cl.data.settings import AUGMENTS

    if cfg.augment not in AUGMENTS:
        from cl.core.registry import unknown

        raise unknown("augment", cfg.augment, AUGMENTS)
