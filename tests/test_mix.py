"""CutMix (cl/data/mix.py) on constructed batches, and GDumb's retraining step with CutMix and gradient clipping
against a hand reproduction."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from cl.data.mix import box, cutmix
from cl.models.heads import IncrementalLinear
from cl.models.model import Model


def test_cutmix_pastes_one_box_of_the_shuffled_batch_and_lambda_is_the_area_left():
    x = torch.arange(4 * 2 * 8 * 8, dtype=torch.float32).reshape(4, 2, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(3)
    lam0 = float(torch.distributions.Beta(1.0, 1.0).sample())
    perm = torch.randperm(4)
    t, b, l, r = box(8, 8, lam0)
    torch.manual_seed(3)
    out, y2, lam = cutmix(x, y, 1.0)
    assert torch.equal(y2, y[perm]) and 0 < (b - t) * (r - l) < 64  # a real box at this seed
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[t:b, l:r] = True
    assert torch.equal(out[:, :, inside], x[perm][:, :, inside]) and torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    assert lam == pytest.approx(1 - inside.sum().item() / 64)
    assert torch.equal(x, torch.arange(4 * 2 * 8 * 8, dtype=torch.float32).reshape(4, 2, 8, 8))  # not in place
    with pytest.raises(ValueError, match="image batches"):
        cutmix(torch.zeros(4, 3), y)


def test_box_is_clipped_to_the_image_and_about_one_minus_lambda_of_it():
    torch.manual_seed(0)
    for lam in (0.0, 0.3, 0.9, 1.0):
        t, b, l, r = box(32, 32, lam)
        assert 0 <= t <= b <= 32 and 0 <= l <= r <= 32
        side = int(32 * (1 - lam) ** 0.5)
        assert b - t <= side and r - l <= side


def _gdumb(**cfg):
    from strategies.gdumb import GDumb, GDumbConfig

    torch.manual_seed(0)
    model = Model(nn.Flatten(), IncrementalLinear(2 * 4 * 4, 3))
    s = GDumb(GDumbConfig(**cfg), model, RunInfo(n_classes=3, input_shape=(2, 4, 4), device=torch.device("cpu"),
                                                 seed=0, n_experiences=1))
    s.setup()
    return s


def test_gdumb_retraining_with_cutmix_and_clipping_is_the_hand_computed_step():
    s = _gdumb(buffer_size=6, fit_epochs=1, fit_batch_size=6, cutmix_prob=1.0, fit_clip=0.01)
    torch.manual_seed(1)
    x, y = torch.randn(6, 2, 4, 4), torch.tensor([0, 1, 2] * 2)
    s.model.observe(y)
    s.buffer.add(x=x, y=y)
    ref = _gdumb(buffer_size=6)
    ref.model.observe(y)
    w0 = ref.model.head.fc.weight.detach().clone()
    torch.manual_seed(5)
    s.fit()
    # by hand: the shuffled memory order, the coin, the CutMix draws, the mixed loss, a clipped SGD step
    torch.manual_seed(5)
    perm = torch.randperm(6)
    xb, yb = s.buffer.items()["x"][perm], s.buffer.items()["y"][perm]
    assert float(torch.rand(())) < 1.0
    xm, y2, lam = cutmix(xb, yb, 1.0)
    out = ref.model(xm)
    loss = lam * F.cross_entropy(out, yb) + (1 - lam) * F.cross_entropy(out, y2)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in ref.model.parameters()])
    scale = min(1.0, 0.01 / (g.norm().item() + 1e-6))
    lr0 = 0.05 * 0.1  # the warm-up epoch
    want = w0 - lr0 * scale * ref.model.head.fc.weight.grad  # first step: momentum buffer = the gradient
    assert torch.allclose(s.model.head.fc.weight, want, atol=1e-7)
    assert not torch.allclose(s.model.head.fc.weight, w0 - lr0 * ref.model.head.fc.weight.grad, atol=1e-7)


def test_gdumb_cutmix_is_refused_on_feature_vectors_and_bad_values_are_named():
    from strategies.gdumb import GDumb, GDumbConfig

    model = Model(nn.Identity(), IncrementalLinear(3, 2))
    info = RunInfo(n_classes=2, input_shape=(3,), device=torch.device("cpu"), seed=0)
    with pytest.raises(ConfigError, match=r"cutmix_prob=0.5 mixes image boxes, but the inputs have shape \(3,\)"):
        GDumb(GDumbConfig(cutmix_prob=0.5), model, info).setup()
    with pytest.raises(ConfigError, match="0 <= strategy.cutmix_prob <= 1, cutmix_alpha > 0 and fit_clip > 0"):
        GDumb(GDumbConfig(fit_clip=0.0), model, info).setup()
