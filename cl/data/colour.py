"""Colour jitter as the two libraries that the contrastive online-CL codes call compute it, batched on device.

The codes name the same settings, ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` with probability 0.8, but their
libraries compute different things:

* ``kornia`` -- kornia 0.4.1's ``ColorJitter`` (the version SCR's code pins: RaptorMai/online-continual-learning
  ``requirements.txt``; the module later kept as ``ColorJiggle``): factors b, c, s in [0.6, 1.4] and h in
  [-0.1, 0.1] per sample; brightness *adds* ``b - 1``; contrast *multiplies* by ``c`` (no mean); saturation
  multiplies HSV saturation by ``s``; hue adds ``h * 2 pi`` to HSV hue; each step clamps to [0, 1]. The four
  steps run in one random order per call (one ``randperm(4)`` for the whole batch).
* ``torchvision`` -- torchvision's ``ColorJitter`` inside ``RandomApply(p=0.8)``, applied per sample (PCR's code,
  ``utils/setup_elements.py::transforms_aug``): brightness blends with black (``x * b``); contrast blends with the
  mean of the grayscale image; saturation blends with the grayscale image; hue shifts HSV hue by ``h`` turns;
  each blend clamps to [0, 1]; a random order *per sample* (each call of the transform draws its own).
  The code runs it on PIL uint8 images (rounding after each step); here in float.

:func:`rgb_to_hsv` / :func:`hsv_to_rgb` use hue in turns, [0, 1). Images are (N, 3, H, W) in [0, 1]; other
channel counts are returned unchanged by the saturation and hue steps.
"""
from __future__ import annotations

import torch

JITTERS = ("kornia", "torchvision")
_GRAY = (0.299, 0.587, 0.114)


def rgb_to_hsv(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r, g, b = x.unbind(1)
    v, arg = x.max(1)
    c = v - x.min(1).values
    s = torch.where(v > eps, c / v.clamp_min(eps), torch.zeros_like(v))
    cs = c.clamp_min(eps)
    h = torch.stack([((g - b) / cs) % 6, (b - r) / cs + 2, (r - g) / cs + 4], 1).gather(1, arg[:, None])[:, 0]
    h = torch.where(c > eps, h / 6, torch.zeros_like(h)) % 1.0
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hsv`; periodic in the hue (any real number of turns)."""
    h, s, v = hsv.unbind(1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
         + h[:, None] * 6) % 6
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def shift_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Add ``turns`` (N,) to each image's HSV hue (in turns: 1 = a full circle)."""
    if x.shape[1] != 3:
        return x
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(torch.stack([hsv[:, 0] + turns.view(-1, 1, 1), hsv[:, 1], hsv[:, 2]], 1))


def scale_hsv_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    hsv = rgb_to_hsv(x)
    s = (hsv[:, 1] * f.view(-1, 1, 1)).clamp(0, 1)
    return hsv_to_rgb(torch.stack([hsv[:, 0], s, hsv[:, 2]], 1))


def _blend(x, other, f):
    return (other + (x - other) * f.view(-1, 1, 1, 1)).clamp(0, 1)


def kornia_steps(b, c, s, h):
    """kornia 0.4.1's four steps, given per-sample factors (N,) each."""
    return (lambda y: (y + (b - 1).view(-1, 1, 1, 1)).clamp(0, 1),
            lambda y: (y * c.view(-1, 1, 1, 1)).clamp(0, 1),
            lambda y: scale_hsv_saturation(y, s),
            lambda y: shift_hue(y, h))


def torchvision_steps(b, c, s, h):
    """torchvision's four steps, given per-sample factors (N,) each."""
    def saturation(y):
        return _blend(y, gray(y), s) if y.shape[1] == 3 else y

    def contrast(y):
        g = gray(y) if y.shape[1] == 3 else y.mean(1, keepdim=True)
        return _blend(y, g.mean((1, 2, 3), keepdim=True), c)

    return (lambda y: _blend(y, torch.zeros_like(y), b), contrast, saturation, lambda y: shift_hue(y, h))


def _factors(n, dev, dt, brightness, contrast, saturation, hue):
    def u(lo, hi):
        return torch.empty(n, device=dev, dtype=dt).uniform_(lo, hi)

    return (u(max(0.0, 1 - brightness), 1 + brightness), u(max(0.0, 1 - contrast), 1 + contrast),
            u(max(0.0, 1 - saturation), 1 + saturation), u(-hue, hue))


def jitter(x: torch.Tensor, library: str, brightness: float = 0.4, contrast: float = 0.4,
           saturation: float = 0.4, hue: float = 0.1, p: float = 0.8) -> torch.Tensor:
    """Colour jitter of ``x`` (N, C, H, W) in [0, 1] as ``library`` computes it (module doc), each sample
    jittered with probability ``p``."""
    if library not in JITTERS:
        raise ValueError(f"colour jitter library {library!r}: choose one of {', '.join(JITTERS)}")
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    factors = _factors(n, dev, dt, brightness, contrast, saturation, hue)
    steps = (kornia_steps if library == "kornia" else torchvision_steps)(*factors)
    y = x
    if library == "kornia":
        for i in torch.randperm(4).tolist():
            y = steps[i](y)
    else:  # a random order per sample: at each of the four positions, each sample takes its own step
        order = torch.argsort(torch.rand(n, 4, device=dev), 1)
        for k in range(4):
            outs = torch.stack([f(y) for f in steps])  # (4, N, C, H, W)
            y = outs[order[:, k], torch.arange(n, device=dev)]
    apply = (torch.rand(n, device=dev) < p).view(-1, 1, 1, 1)
    return torch.where(apply, y, x)
