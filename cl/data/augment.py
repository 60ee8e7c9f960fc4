"""Batched on-device augmentation for image batches (no per-sample Python, no host sync).

The engine hands a strategy preprocessed batches (float, normalised with the scenario's mean/std and,
if ``meta["input_size"]`` is set, resized).  :class:`Augment` undoes the normalisation, applies random
ops to the whole batch at once with per-sample random parameters, and normalises again::

    aug = make_augment("crop_flip", scenario, device)    # or augment_for(scenario, device)
    strategy.augment = aug                               # Strategy.loss applies it to training batches

Kinds:
  * ``crop_flip``: random crop with zero padding (``padding`` = H/8, 4 pixels at 32x32) + horizontal flip.
  * ``crop_flip_jitter``: the above plus colour jitter (brightness, contrast, saturation).
  * ``pcr``: the contrastive online-CL recipe (SCR/OCM/PCR): random resized crop (scale 0.2-1) + flip +
    colour jitter with probability 0.8 + grayscale with probability 0.2.
  * ``none``: identity (``make_augment`` returns ``None``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, unknown

KINDS = ("none", "crop_flip", "crop_flip_jitter", "pcr")


def random_crop(x: torch.Tensor, padding: int, fill: float = 0.0, flip_p: float = 0.0) -> torch.Tensor:
    """Per-sample random crop of ``x`` (N, C, H, W) after padding by ``padding`` pixels with ``fill``, and
    a horizontal flip with probability ``flip_p``: one ``gather`` over the flattened padded batch."""
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (padding,) * 4, value=fill) if padding > 0 else x
    wp = w + 2 * padding
    oy = torch.randint(0, 2 * padding + 1, (n, 1), device=dev)
    ox = torch.randint(0, 2 * padding + 1, (n, 1), device=dev)
    cols = torch.arange(w, device=dev).expand(n, w)
    if flip_p > 0:
        flip = torch.rand(n, 1, device=dev) < flip_p
        cols = torch.where(flip, (w - 1) - cols, cols)
    idx = ((oy + torch.arange(h, device=dev)) * wp)[:, :, None] + (ox + cols)[:, None, :]  # (N, H, W)
    return xp.reshape(n, c, -1).gather(2, idx.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    m = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(m, x.flip(3), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def colour_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                  p: float = 1.0) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s] per sample; ``x`` in [0, 1]."""
    n = x.shape[0]
    dev, dt = x.device, x.dtype

    def factor(s):
        return (1 + (torch.rand(n, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * s)

    y = x * factor(brightness)
    m = _gray(y).mean((2, 3), keepdim=True)
    y = (y - m) * factor(contrast) + m
    if x.shape[1] == 3:
        g = _gray(y)
        y = (y - g) * factor(saturation) + g
    y = y.clamp(0, 1)
    if p < 1.0:
        keep = (torch.rand(n, device=dev) >= p).view(-1, 1, 1, 1)
        y = torch.where(keep, x, y)
    return y


def random_grayscale(x: torch.Tensor, p: float = 0.2) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    m = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(m, _gray(x).expand_as(x), x)


def random_resized_crop(x: torch.Tensor, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), size: int | None = None):
    """Per-sample random resized crop by one batched ``grid_sample`` (output ``size`` x ``size``)."""
    n, c, h, w = x.shape
    dev, dt = x.device, x.dtype
    area = torch.empty(n, device=dev).uniform_(*scale)
    logr = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(logr)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=dt)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    oh = ow = size or h
    if size is None:
        oh, ow = h, w
    grid = F.affine_grid(theta, [n, c, oh, ow], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Augment:
    """A callable ``x -> augmented x`` on normalised float batches (see module doc)."""

    def __init__(self, kind: str = "crop_flip", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 padding: int | None = None, size: int | None = None, device=None):
        if kind not in KINDS or kind == "none":
            raise unknown("augment", kind, KINDS[1:])
        self.kind, self.padding, self.size = kind, padding, size
        self.mean = None if mean is None else torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __repr__(self) -> str:
        return f"Augment({self.kind!r})"

    def _to01(self, x):
        if self.mean is None:
            return x
        return x * self.std.to(x.device, x.dtype) + self.mean.to(x.device, x.dtype)

    def _from01(self, x):
        if self.mean is None:
            return x
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"augment={self.kind!r} needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
        dt = x.dtype
        y = self._to01(x.float())
        if self.kind == "pcr":
            y = random_resized_crop(y, size=None)
            y = random_flip(y)
            y = colour_jitter(y, 0.4, 0.4, 0.4, p=0.8)
            y = random_grayscale(y, 0.2)
        else:
            pad = self.padding if self.padding is not None else max(1, x.shape[-1] // 8)
            y = random_crop(y, pad, flip_p=0.5)
            if self.kind == "crop_flip_jitter":
                y = colour_jitter(y)
        if self.size and y.shape[-1] != self.size:
            y = F.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self._from01(y).to(dt)


def make_augment(kind: str, scenario=None, device=None, **kw) -> Augment | None:
    """The augmentation ``kind`` for ``scenario`` (its mean/std), or ``None`` for ``"none"``."""
    if kind in (None, "", "none"):
        return None
    if scenario is not None and scenario.modality != "image":
        raise ConfigError(f"augment={kind!r} needs an image scenario; {scenario.name} is {scenario.modality}")
    mean = getattr(scenario, "mean", None) if scenario is not None else None
    std = getattr(scenario, "std", None) if scenario is not None else None
    return Augment(kind, mean, std, device=device, **kw)


def augment_for(scenario, device=None) -> Augment | None:
    """The augmentation a scenario asks for in ``scenario.meta["augment"]`` (``None`` when none)."""
    return make_augment((scenario.meta or {}).get("augment", "none"), scenario, device)
