"""A synthetic, learnable class-incremental image stream for the GPU checks (scenario ``gpu-bench``).

The GPU machine has no data sets (nothing can be downloaded there, and CIFAR-10 does not fit in what
travels beside the wheels), so the checks that run the engine use this stream: each class is a fixed
random 3xSxS uint8 prototype plus Gaussian pixel noise, so a model learns it (accuracies mean something
for the graphs-on/off comparison) while its cost per sample is that of CIFAR-sized images.  The data
are the same for every seed; the seed draws the class order, as for the real benchmarks.

Self-contained: the sweep check loads this file with ``cl sweep --plugin`` in its workers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.registry import scenarios
from cl.core.streams import class_incremental

NAME = "gpu-bench"


@dataclass
class GpuBenchConfig:
    n_classes: int = 10
    n_tasks: int = 5
    train_per_class: int = 200
    test_per_class: int = 50
    size: int = 32  # image side (px)
    noise: float = 64.0  # pixel noise standard deviation (of 255)


def make_images(cfg: GpuBenchConfig):
    g = torch.Generator().manual_seed(20261126)
    protos = torch.rand(cfg.n_classes, 3, cfg.size, cfg.size, generator=g) * 255
    per = cfg.train_per_class + cfg.test_per_class
    y = torch.arange(cfg.n_classes).repeat_interleave(per)
    x = (protos[y] + cfg.noise * torch.randn(len(y), 3, cfg.size, cfg.size, generator=g)).clamp_(0, 255)
    x = x.to(torch.uint8)
    is_train = (torch.arange(len(y)) % per) < cfg.train_per_class
    return x[is_train], y[is_train], x[~is_train], y[~is_train]


if NAME not in scenarios.entries:
    @scenarios.register(NAME, GpuBenchConfig)
    def gpu_bench(cfg: GpuBenchConfig, seed: int):
        """Synthetic learnable uint8 images (class prototype + noise), class-incremental; for benchmarks."""
        xtr, ytr, xte, yte = make_images(cfg)
        return class_incremental(NAME, xtr, ytr, xte, yte, n_tasks=cfg.n_tasks, seed=seed)
