"""Tests written from the mutation run of strategies/_rar.py (issue 19): RAR's RandAugment against PIL, the
library its code applies per image (``PIL.ImageOps`` / ``ImageEnhance`` / ``Image.transform`` / ``ImageDraw``
with the code's values ``v = m / 30 * (max - min) + min``), on small non-square images at several
magnitudes; the enhance operations (which PIL computes in integer arithmetic) within one grey level, and
exactly on hand-made pixels; the operation values; the random sign; the normalisation undone and redone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies import _rar
from strategies._rar import OPS, RANGES, RandAugment, value

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw, ImageEnhance, ImageOps  # noqa: E402

H, W = 7, 9  # non-square: height and width are not interchangeable


def test_operation_values_are_the_codes_ranges():
    want = {"rotate": (0, 30), "posterize": (0, 4), "solarize": (0, 256), "solarize_add": (0, 110),
            "color": (0.1, 1.9), "contrast": (0.1, 1.9), "brightness": (0.1, 1.9), "sharpness": (0.1, 1.9),
            "shear_x": (0, 0.3), "shear_y": (0, 0.3), "cutout": (0, 40), "translate_x": (0, 100),
            "translate_y": (0, 100)}
    for op, (lo, hi) in want.items():
        for m in (0, 7, 14, 30):
            assert value(op, m) == pytest.approx(m / 30 * (hi - lo) + lo)
    assert value("rotate", 14) == pytest.approx(14.0) and value("cutout", 14) == pytest.approx(18.6667, abs=1e-4)
    assert len(OPS) == 16 and set(OPS) == set(RANGES)


def _img(seed, c=3):
    rs = np.random.RandomState(seed)
    return rs.randint(0, 256, (H, W, c)).astype(np.uint8)


def _tensor(arr):
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255


def _ours(arr, op, m, r=0.9):
    """Our op on the image; every torch.rand draw (the sign, the cutout corner) returns ``r``."""
    orig = torch.rand
    torch.rand = lambda *a, **kw: torch.full(a[0] if isinstance(a[0], tuple) else (a[0],), float(r))
    try:
        out = RandAugment(1, m).apply_ops(_tensor(arr), torch.tensor([OPS.index(op)]))
    finally:
        torch.rand = orig
    return (out[0].permute(1, 2, 0) * 255).round().numpy().astype(int)


def _pil(arr, op, m, sign):
    img, v = Image.fromarray(arr if arr.shape[2] == 3 else arr[..., 0]), value(op, m)
    out = {
        "equalize": lambda: ImageOps.equalize(img),
        "invert": lambda: ImageOps.invert(img),
        "autocontrast": lambda: ImageOps.autocontrast(img),
        "rotate": lambda: img.rotate(-sign * v),  # our sign +1 turns the other way: the draw is symmetric
        "posterize": lambda: ImageOps.posterize(img, max(1, int(v))),
        "solarize": lambda: ImageOps.solarize(img, v),
        "solarize_add": lambda: ImageOps.solarize(Image.fromarray(np.clip(arr.astype(int) + v, 0, 255).astype(np.uint8)), 128),
        "color": lambda: ImageEnhance.Color(img).enhance(v),
        "contrast": lambda: ImageEnhance.Contrast(img).enhance(v),
        "brightness": lambda: ImageEnhance.Brightness(img).enhance(v),
        "sharpness": lambda: ImageEnhance.Sharpness(img).enhance(v),
        "shear_x": lambda: img.transform(img.size, Image.AFFINE, (1, sign * v, 0, 0, 1, 0)),
        "shear_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, sign * v, 1, 0)),
        "translate_x": lambda: img.transform(img.size, Image.AFFINE, (1, 0, sign * v, 0, 1, 0)),
        "translate_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, sign * v)),
    }[op]()
    a = np.array(out).astype(int)
    return a if a.ndim == 3 else a[..., None]


EXACT = ("equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "shear_x", "shear_y",
         "translate_x", "translate_y")
GEOM_M = (1, 2, 4, 9, 14, 25, 30)  # rotate 1..30 deg, shears 0.01..0.3, translations 3.3..100 px


@pytest.mark.parametrize("op", EXACT)
def test_exact_operations_equal_pil(op):
    ms = GEOM_M if op in _rar.GEOMETRIC else (0, 5, 14, 22, 30)
    for seed in range(1):
        arr = _img(seed)
        for m in ms:
            for r, sign in ((0.0, -1), (0.9, 1)):
                assert np.array_equal(_ours(arr, op, m, r), _pil(arr, op, m, sign)), (op, m, sign, seed)


def test_equalize_equals_pil_on_images_of_enough_pixels():
    """PIL's equalize changes nothing below 256 pixels (its step is 0): images of 24 x 40 here."""
    rs = np.random.RandomState(3)
    for levels in (np.arange(256), np.arange(256) // 3, [0, 255], [3, 7, 7, 200], [10], [0, 1, 2, 3, 250]):
        arr = rs.choice(levels, size=(24, 40, 3)).astype(np.uint8)
        arr[..., 1] = np.sort(arr[..., 1], axis=None).reshape(24, 40)  # channels differ
        arr[..., 2] = rs.randint(0, 256, (24, 40)) // 8 * 8
        assert np.array_equal(_ours(arr, "equalize", 14), _pil(arr, "equalize", 14, 1)), levels
    assert not np.array_equal(_ours(arr, "equalize", 14), arr)


@pytest.mark.parametrize("c", [1, 3])
def test_every_operation_treats_each_image_of_a_batch_alone(c, monkeypatch):
    """Two different images (one bright, one dark), each under every operation, in one batch: each comes out
    as it does in a batch of copies of itself (the random draws fixed)."""
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.full(a[0] if isinstance(a[0], tuple) else (a[0],), 0.3))
    rs = np.random.RandomState(5)
    a = _tensor(rs.randint(0, 256, (H, W, c)).astype(np.uint8))
    b = _tensor((rs.randint(0, 256, (H, W, c)) // 4).astype(np.uint8))
    ops = torch.arange(len(OPS))
    ra = RandAugment(1, 14)
    mixed = ra.apply_ops(torch.cat([a, b]).repeat(len(OPS), 1, 1, 1), ops.repeat_interleave(2))
    for i, img in enumerate((a, b)):
        alone = ra.apply_ops(img.expand(len(OPS), -1, -1, -1).contiguous(), ops)
        for k, op in enumerate(OPS):
            assert torch.equal(mixed[2 * k + i], alone[k]), (op, i)


@pytest.mark.parametrize("op", ["autocontrast", "color", "contrast", "brightness", "sharpness"])
def test_enhance_operations_are_within_one_grey_level_of_pil(op):
    for seed in range(2):
        arr = _img(seed)
        for m in (0, 5, 14, 30):
            assert np.abs(_ours(arr, op, m) - _pil(arr, op, m, 1)).max() <= 1, (op, m)


def test_cutout_is_pils_rectangle_of_the_codes_corner():
    for m in (1, 3, 5, 14, 20):  # v = 1.33, 4, 6.67, 18.7, 26.7 px
        v = value("cutout", m)
        for r in (0.0, 0.3, 0.45, 0.55, 0.7, 0.99):
            arr = _img(1)
            img = Image.fromarray(arr).copy()
            x0, y0 = int(max(0, r * W - v / 2)), int(max(0, r * H - v / 2))
            ImageDraw.Draw(img).rectangle((x0, y0, min(W, x0 + v), min(H, y0 + v)), (125, 123, 114))
            assert np.array_equal(_ours(arr, "cutout", m, r), np.array(img).astype(int)), (m, r)
    for c in (1, 2, 4):  # other than 3 channels: grey 125 in each
        grey = _ours(np.zeros((H, W, c), np.uint8), "cutout", 30, 0.5)
        assert grey.shape == (H, W, c) and set(np.unique(grey).tolist()) == {125}


def _const(rgb):
    return np.tile(np.array(rgb, np.uint8), (H, W, 1))


def test_enhance_operations_on_hand_made_pixels():
    f = value("color", 14)  # 0.94
    # colour: the degenerate image is the L image, round(0.299 R + 0.587 G + 0.114 B)
    for rgb, gray in (((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29)):
        want = [round(gray + f * (c - gray)) for c in rgb]
        got = _ours(_const(rgb), "color", 14)
        assert got[0, 0].tolist() == want and (got == got[0, 0]).all(), rgb
    one = np.random.RandomState(0).randint(0, 256, (H, W, 1)).astype(np.uint8)
    assert np.array_equal(_ours(one, "color", 14), one.astype(int))  # a grey image has no colour to change
    # contrast: the degenerate image is the mean of the L image, int(mean + 0.5)
    arr = _const((100, 100, 100))
    arr[0, 0] = (200, 200, 200)  # mean 100 + 100/63 = 101.59 -> 102
    got = _ours(arr, "contrast", 14)
    assert got[0, 0, 0] == round(102 + f * 98) and got[1, 1, 0] == round(102 + f * -2)
    # brightness: a blend with black, quantised; 0 stays 0 and 255 becomes 240 (0.94 * 255 = 239.7)
    got = _ours(_const((0, 128, 255)), "brightness", 14)
    assert got[0, 0].tolist() == [0, round(0.94 * 128), 240]
    # sharpness: one bright pixel inside a black image; the 3x3 kernel (centre 5, /13); the border is kept
    arr = np.zeros((H, W, 3), np.uint8)
    arr[3, 4] = 255
    arr[0, 0] = 255
    arr[H - 1, W - 1] = 255
    got = _ours(arr, "sharpness", 14)[..., 0]
    centre, side = round(255 * 5 / 13), round(255 / 13)  # 98, 20 in the degenerate image
    assert got[H - 1, W - 1] == 255 and got[H - 1, W - 2] == 0 and got[H - 2, W - 2] == round(side - f * side)
    assert got[3, 4] == round(centre + f * (255 - centre)) and got[2, 4] == round(side - f * side)
    assert got[0, 0] == 255 and got[0, 1] == 0  # border pixels are kept
    assert got[1, 1] == round(side - f * side)  # an inner pixel is smoothed with its border neighbours
    # autocontrast: each channel stretched to [0, 255]; a constant channel is unchanged
    arr = _const((10, 50, 90))
    arr[0, 0] = (20, 50, 250)
    got = _ours(arr, "autocontrast", 14)
    assert got[0, 0].tolist() == [255, 50, 255] and got[1, 1].tolist() == [0, 50, 0]
    # posterize keeps one bit, solarize inverts from 119.47 up, solarize_add adds 51.3 then inverts from 128
    got = _ours(_const((0, 127, 128)), "posterize", 14)
    assert got[0, 0].tolist() == [0, 0, 128]
    assert _ours(_const((119, 120, 255)), "solarize", 14)[0, 0].tolist() == [119, 135, 0]
    assert _ours(_const((0, 76, 77)), "solarize_add", 14)[0, 0].tolist() == [51, 127, 127]
    assert _ours(_const((200, 100, 255)), "posterize", 0)[0, 0].tolist() == [128, 0, 128]  # at least one bit
    assert _ours(_const((127, 128, 129)), "solarize", 15)[0, 0].tolist() == [127, 127, 126]  # from 128 up
    assert _ours(_const((0, 0, 0)), "solarize", 0)[0, 0].tolist() == [255, 255, 255]  # everything >= 0
    assert _ours(_const((0, 127, 128)), "solarize_add", 0)[0, 0].tolist() == [0, 127, 127]


def test_geometric_sign_is_drawn_per_image_with_both_signs_equally_likely():
    arr = _img(0)
    plus, minus = _pil(arr, "shear_x", 14, 1), _pil(arr, "shear_x", 14, -1)
    x = _tensor(arr).expand(400, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = (RandAugment(1, 14).apply_ops(x, torch.full((400,), OPS.index("shear_x"))).permute(0, 2, 3, 1) * 255)
    out = out.round().numpy().astype(int)
    is_plus = np.array([np.array_equal(o, plus) for o in out])
    is_minus = np.array([np.array_equal(o, minus) for o in out])
    assert (is_plus | is_minus).all()
    assert abs(is_plus.mean() - 0.5) < 4 * 0.025  # 4 standard deviations of a fair coin over 400


def test_call_undoes_and_redoes_the_normalisation_and_keeps_the_dtype(monkeypatch):
    mean, std = (0.5, 0.25, 0.75), (0.5, 0.25, 0.25)
    ra = RandAugment(2, 14, mean, std)
    assert repr(ra) == "RandAugment(n=2, m=14)"
    raw = torch.tensor([0.0, 0.2, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    m_, s_ = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = ((raw - m_) / s_).double()
    draws = []
    monkeypatch.setattr(torch, "randint", lambda hi, size, device=None: draws.append((hi, size)) or
                        torch.full(size, OPS.index("invert")))
    y = ra(x)
    assert draws == [(16, (2,)), (16, (2,))] and y.dtype == torch.float64
    assert torch.allclose(y, x, atol=1e-6)  # inverted twice
    one = RandAugment(1, 14, mean, std)(x)
    want = ((1 - (raw * 255).round() / 255) - m_) / s_
    assert torch.allclose(one.float(), want, atol=1e-6)
    plain = RandAugment(1, 14)(torch.full((1, 3, 2, 2), 1.5))  # no normalisation: clamped to [0, 1] first
    assert torch.equal(plain, torch.zeros(1, 3, 2, 2))
    grad_in = torch.rand(2, 3, 4, 4, requires_grad=True)  # augmenting records no graph, whatever the input
    out = RandAugment(1, 14)(grad_in)
    assert not out.requires_grad and out.grad_fn is None
