"""cl.data.colour: the HSV conversions, each library's four jitter steps on constructed cases, the order in which
``jitter`` applies them, and the SCR / PCR configs that choose them."""
import colorsys
import itertools

import pytest
import torch
import torchvision.transforms.functional as TF

from cl.core.registry import ConfigError
from cl.data import colour
from cl.data.colour import hsv_to_rgb, jitter, kornia_steps, rgb_to_hsv, torchvision_steps
from cl.models.contrastive import ViewAugment
from strategies.pcr import PCRConfig
from strategies.scr import SCRConfig


def test_hsv_matches_colorsys_and_round_trips():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 5, 5, generator=g)
    x[0, :, 0, 0] = 0.5  # a gray pixel: hue and saturation 0
    hsv = rgb_to_hsv(x)
    ref = torch.tensor([colorsys.rgb_to_hsv(*x[i, :, a, b].tolist())
                        for i in range(3) for a in range(5) for b in range(5)])
    assert torch.allclose(hsv.permute(0, 2, 3, 1).reshape(-1, 3), ref, atol=1e-6)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-6)


def factors(n, g):
    return [torch.rand(n, generator=g) * 0.8 + 0.6 for _ in range(3)] + [torch.rand(n, generator=g) * 0.2 - 0.1]


def test_torchvision_steps_match_torchvision_itself():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 6, 6, generator=g)
    f = factors(4, g)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for step, op, fk in zip(torchvision_steps(*f), ops, f):
        ref = torch.stack([op(x[i], fk[i].item()) for i in range(4)])
        assert torch.allclose(step(x), ref, atol=1e-4), op.__name__


def test_kornia_steps_are_kornia_0_4_1s():
    x = torch.tensor([[0.2, 0.5, 0.9]]).view(1, 3, 1, 1).repeat(2, 1, 1, 1)
    b, c, s, h = torch.tensor([1.3, 0.7]), torch.tensor([1.2, 0.6]), torch.tensor([1.4, 0.5]), torch.tensor([0.1, -0.05])
    bright, contrast, sat, hue = kornia_steps(b, c, s, h)
    # brightness adds b - 1 (no multiplication), contrast multiplies (no mean), both clamp
    assert torch.allclose(bright(x)[:, :, 0, 0], torch.tensor([[0.5, 0.8, 1.0], [0.0, 0.2, 0.6]]), atol=1e-6)
    assert torch.allclose(contrast(x)[:, :, 0, 0], torch.tensor([[0.24, 0.6, 1.0], [0.12, 0.3, 0.54]]), atol=1e-6)
    for i in range(2):
        hh, ss, vv = colorsys.rgb_to_hsv(0.2, 0.5, 0.9)
        want_s = colorsys.hsv_to_rgb(hh, min(ss * s[i].item(), 1.0), vv)
        assert torch.allclose(sat(x)[i, :, 0, 0], torch.tensor(want_s), atol=1e-6)
        want_h = colorsys.hsv_to_rgb((hh + h[i].item()) % 1, ss, vv)
        assert torch.allclose(hue(x)[i, :, 0, 0], torch.tensor(want_h), atol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(colour.shift_hue(red, torch.tensor([1 / 3])), torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1),
                          atol=1e-6)


def compositions(steps, x):
    out = []
    for perm in itertools.permutations(range(4)):
        y = x
        for i in perm:
            y = steps[i](y)
        out.append(y)
    return out


@pytest.mark.parametrize("library,steps_of", [("kornia", kornia_steps), ("torchvision", torchvision_steps)])
def test_jitter_order_is_one_per_batch_in_kornia_and_one_per_sample_in_torchvision(monkeypatch, library, steps_of):
    g = torch.Generator().manual_seed(2)
    n = 64
    x = torch.rand(n, 3, 4, 4, generator=g) * 0.6 + 0.2
    f = factors(n, g)
    monkeypatch.setattr(colour, "_factors", lambda *a: f)
    torch.manual_seed(3)
    y = jitter(x, library, p=1.0)
    comps = compositions(steps_of(*f), x)
    which = []
    for i in range(n):
        hits = [k for k, c in enumerate(comps) if torch.allclose(c[i], y[i], atol=1e-5)]
        assert hits, f"sample {i} is no composition of the four steps"
        which.append(set(hits))
    common = set.intersection(*which)
    if library == "kornia":
        assert common  # one order serves every sample
    else:
        assert not common  # 64 samples, 24 orders: no single order explains them all


def test_jitter_probability_and_bad_library():
    x = torch.rand(200, 3, 2, 2) * 0.5 + 0.25
    torch.manual_seed(0)
    assert torch.equal(jitter(x, "kornia", p=0.0), x)
    changed = (jitter(x, "torchvision", p=0.8) != x).flatten(1).any(1).float().mean().item()
    assert 0.7 < changed < 0.9
    with pytest.raises(ValueError, match="kornia, torchvision"):
        jitter(x, "pil")


def test_view_jitter_is_a_checked_config_field_with_each_codes_default():
    assert SCRConfig().view_jitter == "kornia" and PCRConfig().view_jitter == "torchvision"
    for cfg in (SCRConfig, PCRConfig):
        cfg(view_jitter="plain").validate()
        with pytest.raises(ConfigError, match="strategy.view_jitter"):
            cfg(view_jitter="pil").validate()
    with pytest.raises(ConfigError, match="plain"):
        ViewAugment("scr", jitter="pil")
    torch.manual_seed(0)
    x = torch.rand(8, 3, 8, 8)
    views = {j: ViewAugment("scr", jitter=j) for j in ("kornia", "torchvision", "plain")}
    outs = {}
    for j, v in views.items():
        torch.manual_seed(5)
        outs[j] = v(x)
    assert not torch.allclose(outs["kornia"], outs["plain"]) and not torch.allclose(outs["torchvision"], outs["plain"])


def test_factor_ranges_are_the_codes_and_clip_at_zero():
    b, c, s, h = colour._factors(20000, "cpu", torch.float32, 0.4, 0.4, 0.4, 0.1)
    for f in (b, c, s):
        assert 0.6 <= float(f.min()) < 0.61 and 1.39 < float(f.max()) <= 1.4
    assert -0.1 <= float(h.min()) < -0.099 and 0.099 < float(h.max()) <= 0.1
    b, c, s, _ = colour._factors(20000, "cpu", torch.float32, 1.5, 1.5, 1.5, 0.0)
    for f in (b, c, s):  # max(0, 1 - 1.5): no negative factor
        assert 0.0 <= float(f.min()) < 0.01 and 2.49 < float(f.max()) <= 2.5
    import inspect
    d = {k: v.default for k, v in inspect.signature(jitter).parameters.items() if k not in ("x", "library")}
    assert d == {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8}


@pytest.mark.parametrize("library", ["kornia", "torchvision"])
@pytest.mark.parametrize("channels", [1, 4])
def test_non_rgb_images_skip_the_colour_steps(library, channels):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, channels, 5, 5, generator=g) * 0.5 + 0.25
    f = factors(6, g)
    steps = (kornia_steps if library == "kornia" else torchvision_steps)(*f)
    assert torch.equal(steps[2](x), x) and torch.equal(steps[3](x), x)  # saturation and hue: unchanged
    if library == "torchvision" and channels == 1:  # contrast against the mean of the image, as torchvision
        ref = torch.stack([TF.adjust_contrast(x[i], f[1][i].item()) for i in range(6)])
        assert torch.allclose(steps[1](x), ref, atol=1e-5)
    assert jitter(x, library, p=1.0).shape == x.shape
