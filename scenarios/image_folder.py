"""ImageNet-R (``imagenet-r/<wnid>/*.jpg``, or train/test folders) and any user image folder (``<class>/*``)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from cl.core.registry import ConfigError, scenarios
from cl.data.cache import find_root
from cl.data.settings import SettingConfig, build_setting, register_family
from scenarios._folders import IMAGENET_MEAN, IMAGENET_STD, _class_folder_check, _folder_arrays


# =========================================== ImageNet-R / user image folder ===========================================
@dataclass
class ImagenetRConfig(SettingConfig):
    n_tasks: int = 10
    root: str | None = None
    image_size: int = 224
    test_fraction: float = 0.2  # when the folder is not already split into train/ and test/


def split_imagenet_r(cfg: ImagenetRConfig, seed: int):
    """Split ImageNet-R (200 classes), 10 tasks x 20 classes by default; 80/20 seeded split."""
    kind, p = find_root("imagenet-r", cfg.root, _class_folder_check(2),
                        "<root>/imagenet-r/<wnid>/*.jpg (split 80/20) or <root>/{train,test}/<wnid>/*.jpg",
                        env=("CL_DATA_IMAGENET_R",), subdirs=["imagenet-r", "imagenet_r"])
    xtr, ytr, xte, yte, names = _folder_arrays("imagenet-r", kind, p, cfg.image_size, cfg.test_fraction)
    return build_setting("imagenet-r", xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD)


register_family("imagenet-r", ImagenetRConfig, split_imagenet_r, [1, 5, 10, 20])


@dataclass
class ImageFolderConfig(SettingConfig):
    n_tasks: int = 2
    root: str | None = None
    image_size: int = 32
    test_fraction: float = 0.2
    task_classes: list[list[str]] | None = None  # explicit tasks by class (folder) names; overrides n_tasks
    normalize: str = "none"  # none ([0, 1]) | imagenet


def image_folder(cfg: ImageFolderConfig, seed: int):
    """Your own images: <root>/<class>/* (or {train,test}/<class>/*), split into tasks by count or class lists."""
    if not cfg.root and not os.environ.get("CL_DATA_IMAGE_FOLDER"):
        raise ConfigError("image-folder needs a root: --set scenario.root=PATH (a folder of <class>/ folders)")
    kind, p = find_root("image-folder", cfg.root, _class_folder_check(1),
                        "<root>/<class>/*.{jpg,png,...} or <root>/{train,test}/<class>/*",
                        env=("CL_DATA_IMAGE_FOLDER",), subdirs=["."])
    xtr, ytr, xte, yte, names = _folder_arrays("image-folder", kind, p, cfg.image_size, cfg.test_fraction)
    if cfg.task_classes:
        flat = [c for t in cfg.task_classes for c in t]
        bad = [c for c in flat if c not in names]
        if bad:
            raise ConfigError(f"image-folder: task_classes names unknown classes {bad}; the folder has {names}")
        if len(set(flat)) != len(flat):
            raise ConfigError(f"image-folder: task_classes repeats classes: {cfg.task_classes}")
        if any(len(t) == 0 for t in cfg.task_classes):
            raise ConfigError("image-folder: every task in task_classes needs at least one class")
        cfg.classes = flat
        cfg.class_order = [names.index(c) for c in flat]
        cfg.per_task = [len(t) for t in cfg.task_classes]
        cfg.n_tasks = len(cfg.task_classes)
    norm = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize == "imagenet" else (None, None)
    return build_setting("image-folder", xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=norm[0],
                         std=norm[1])


scenarios.register("image-folder", ImageFolderConfig)(image_folder)
