"""RandAugment as RAR's code runs it, batched on the device (helper of strategies/rar.py).

RAR's code (YaqianZhang/RepeatedAugmentedRehearsal, ``utils/augmentations.py``, ``RandAugment``; applied per
image through PIL in ``utils/aug_agent.py``) draws ``n`` operations per image uniformly (with repetition)
from 16, each at the fixed value ``v = m / 30 * (max - min) + min``:

    AutoContrast, Equalize, Invert, Rotate (0-30 deg), Posterize (0-4 bits, int(v), at least 1),
    Solarize (threshold 0-256), SolarizeAdd (add 0-110, then solarize at 128), Color, Contrast,
    Brightness, Sharpness (factors 0.1-1.9), ShearX, ShearY (0-0.3), CutoutAbs (0-40 px, grey
    (125, 123, 114)), TranslateXabs, TranslateYabs (0-100 px)

Rotate, shears and translations take a random sign. At RAR's m = 14 on 32x32 images: rotate 14 deg,
1-bit posterize, solarize at 119.5, add 51.3, factors 0.94, shear 0.14, a 18.7 px cutout, and translations
of 46.7 px, which move a 32 px image entirely out of the frame (a black image, as the code gives).

Here every image of a batch gets its own draw; the geometric operations are one nearest-neighbour gather
(PIL's ``transform`` / ``rotate`` resample NEAREST with black fill), the pixel operations are computed for the
batch and selected per image. Values are kept on the uint8 grid (k / 255) like the PIL images.
Approximations: PIL's Equalize and AutoContrast per channel and its Sharpness kernel (3x3, centre 5, /13,
border kept) are reproduced; the cutout box spans pixels ``[x0, x0 + v]`` inclusive like PIL's rectangle.
No host synchronisation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = ("autocontrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "cutout", "translate_x", "translate_y")
RANGES = {"autocontrast": (0, 1), "equalize": (0, 1), "invert": (0, 1), "rotate": (0, 30), "posterize": (0, 4),
          "solarize": (0, 256), "solarize_add": (0, 110), "color": (0.1, 1.9), "contrast": (0.1, 1.9),
          "brightness": (0.1, 1.9), "sharpness": (0.1, 1.9), "shear_x": (0.0, 0.3), "shear_y": (0.0, 0.3),
          "cutout": (0, 40), "translate_x": (0.0, 100), "translate_y": (0.0, 100)}
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def value(op: str, m: int) -> float:
    lo, hi = RANGES[op]
    return float(m) / 30 * float(hi - lo) + lo


def _q(x):
    return (x * 255).round().clamp(0, 255)


def _gray(x):
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) if x.shape[1] == 3 else x.mean(1, keepdim=True)


def _blend(degenerate, x, f):
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def _equalize(u):
    """PIL's ImageOps.equalize per channel on uint8 values ``u`` (float tensor of integers 0..255)."""
    n, c, h, w = u.shape
    flat = u.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, device=u.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float))
    last = (hist > 0).float().cumsum(1).argmax(1)  # the last non-empty bin
    step = torch.div(hist.sum(1) - hist.gather(1, last[:, None]).squeeze(1), 255, rounding_mode="floor")
    cum = hist.cumsum(1) - hist  # pixels strictly below each value
    lut = torch.div(cum + torch.div(step, 2, rounding_mode="floor")[:, None], step.clamp_min(1)[:, None],
                    rounding_mode="floor").clamp(0, 255)
    out = lut.gather(1, flat).reshape(n, c, h, w)
    return torch.where((step > 0).view(n, c, 1, 1), out, u)


def _sharpness(x, f):
    c = x.shape[1]
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    k = (k / 13).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, k, padding=1, groups=c)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth[..., 1:-1, 1:-1]
    return _blend(_q(degenerate) / 255, x, f)


def _pixel_ops(x, u, m):
    """Every pixel operation applied to the whole batch: ``{op: (N, C, H, W)}``, values in [0, 1]."""
    n, c, h, w = x.shape
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    auto = torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)
    bits = max(1, int(value("posterize", m)))
    mask = 256 - 2 ** (8 - bits)
    thr = value("solarize", m)
    added = (u + value("solarize_add", m)).clamp(0, 255).floor()
    gray = _gray(x)
    mean = (_q(gray).mean((1, 2, 3), keepdim=True) + 0.5).floor() / 255  # PIL: int(mean + 0.5) of the L image
    return {
        "autocontrast": auto,
        "equalize": _equalize(u) / 255,
        "invert": 1 - x,
        "posterize": torch.bitwise_and(u.long(), mask).float() / 255,
        "solarize": torch.where(u >= thr, 255 - u, u) / 255,
        "solarize_add": torch.where(added >= 128, 255 - added, added) / 255,
        "color": _blend(_q(gray.expand_as(x)) / 255, x, value("color", m)),
        "contrast": _blend(mean.expand_as(x), x, value("contrast", m)),
        "brightness": _blend(torch.zeros_like(x), x, value("brightness", m)),
        "sharpness": _sharpness(x, value("sharpness", m)),
    }


def _geometric(x, op_idx, m):
    """Rotate / shear / translate the images whose op is geometric (nearest, black fill); others unchanged."""
    n, c, h, w = x.shape
    dev = x.device
    sign = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    a = torch.zeros(n, 2, 3, device=dev)  # input = A @ (x, y, 1) in pixel-centre coordinates
    a[:, 0, 0] = a[:, 1, 1] = 1.0
    names = torch.tensor([OPS.index(g) for g in GEOMETRIC], device=dev)
    rot = op_idx == names[0]
    th = sign * math.radians(value("rotate", m))
    cx, cy = w / 2, h / 2
    cos, sin = torch.cos(th), torch.sin(th)
    rot_m = torch.stack([torch.stack([cos, sin, cx - cos * cx - sin * cy], 1),
                         torch.stack([-sin, cos, cy + sin * cx - cos * cy], 1)], 1)
    a = torch.where(rot.view(n, 1, 1), rot_m, a)
    a[:, 0, 1] = torch.where(op_idx == names[1], sign * value("shear_x", m), a[:, 0, 1])
    a[:, 1, 0] = torch.where(op_idx == names[2], sign * value("shear_y", m), a[:, 1, 0])
    a[:, 0, 2] = torch.where(op_idx == names[3], sign * value("translate_x", m), a[:, 0, 2])
    a[:, 1, 2] = torch.where(op_idx == names[4], sign * value("translate_y", m), a[:, 1, 2])
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float) + 0.5,
                            torch.arange(w, device=dev, dtype=torch.float) + 0.5, indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, device=dev)])  # (3, HW)
    src = a @ pts  # (N, 2, HW)
    sx, sy = src[:, 0].floor().long(), src[:, 1].floor().long()
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    idx = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1))[:, None, :].expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, idx) * inside[:, None, :].to(x.dtype)
    return out.view(n, c, h, w)


def _cutout(x, m):
    n, c, h, w = x.shape
    dev = x.device
    v = value("cutout", m)
    x0 = (torch.rand(n, device=dev) * w - v / 2).clamp_min(0).floor()
    y0 = (torch.rand(n, device=dev) * h - v / 2).clamp_min(0).floor()
    x1, y1 = (x0 + v).clamp(max=w), (y0 + v).clamp(max=h)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    box = ((xs >= x0.view(n, 1, 1)) & (xs <= x1.view(n, 1, 1)) & (ys >= y0.view(n, 1, 1)) & (ys <= y1.view(n, 1, 1)))
    grey = torch.tensor([125, 123, 114][:c] if c == 3 else [125] * c, device=dev, dtype=x.dtype).view(1, c, 1, 1) / 255
    return torch.where(box[:, None], grey.expand(n, c, h, w), x)


class RandAugment:
    """``x -> augmented x`` on normalised float image batches (``mean``/``std`` undone and redone)."""

    def __init__(self, n: int = 1, m: int = 14, mean=None, std=None):
        self.n, self.m = int(n), int(m)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float).view(1, -1, 1, 1)

    def __repr__(self):
        return f"RandAugment(n={self.n}, m={self.m})"

    def apply_ops(self, x01: torch.Tensor, op_idx: torch.Tensor) -> torch.Tensor:
        """Apply operation ``OPS[op_idx[i]]`` to image i of ``x01`` (values in [0, 1])."""
        x = _q(x01) / 255
        u = _q(x)
        out = _geometric(x, op_idx, self.m)
        for name, y in _pixel_ops(x, u, self.m).items():
            out = torch.where((op_idx == OPS.index(name)).view(-1, 1, 1, 1), y, out)
        out = torch.where((op_idx == OPS.index("cutout")).view(-1, 1, 1, 1), _cutout(x, self.m), out)
        return _q(out) / 255

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dt, dev = x.dtype, x.device
        y = x.float()
        if self.mean is not None:
            y = y * self.std.to(dev) + self.mean.to(dev)
        y = y.clamp(0, 1)
        for _ in range(self.n):
            y = self.apply_ops(y, torch.randint(len(OPS), (y.shape[0],), device=dev))
        if self.mean is not None:
            y = (y - self.mean.to(dev)) / self.std.to(dev)
        return y.to(dt)
