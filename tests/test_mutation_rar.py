"""Tests written from the mutation run of strategies/rar.py (issue 19): RAR's defaults (its code's
``mem_iters`` 10, RandAugment N 1, M 14), the validation bounds, which augmenter each ``augment`` kind
builds (and on which inputs), the scenario's normalisation handed to it, and the returned loss (the mean
over the iterations) on constructed cases."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from cl.core.config import resolve
from cl.core.registry import ConfigError
from cl.data.augment import Augment
from strategies._rar import RandAugment
from strategies.rar import AUGMENTS, RAR, RARConfig

from conftest import tiny
from test_ocl1 import make


def make_rar(**kw):
    return make(RAR, RARConfig, **kw)


def test_defaults_are_the_codes():
    c = RARConfig()
    assert (c.iterations, c.augment, c.randaug_n, c.randaug_m) == (10, "randaug", 1, 14)
    assert (c.buffer_size, c.replay_batch_size) == (500, 10)  # ER's
    assert AUGMENTS == ("randaug", "none", "crop_flip", "crop_flip_jitter", "pcr")


def _image_model():
    bb = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    bb.out_dim = 4
    return bb


@pytest.mark.parametrize("kind", ["none", "randaug", "crop_flip", "crop_flip_jitter", "pcr"])
def test_each_kind_builds_its_augmenter_with_the_scenarios_normalisation(kind):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    cfg = RARConfig(augment=kind, randaug_n=2, randaug_m=7)
    model = RAR.build_model(cfg, _image_model(), SimpleNamespace(n_classes=2, mean=mean, std=std))
    s = make_rar(model=model, input_shape=(3, 4, 4), augment=kind, randaug_n=2, randaug_m=7)
    if kind == "none":
        assert s.augment is None
        return
    if kind == "randaug":
        assert isinstance(s.augment, RandAugment) and (s.augment.n, s.augment.m) == (2, 7)
    else:
        assert isinstance(s.augment, Augment) and s.augment.kind == kind
    assert s.augment.mean.flatten().tolist() == pytest.approx(mean)
    assert s.augment.std.flatten().tolist() == pytest.approx(std)
    # a scenario without normalisation: none to undo
    model = RAR.build_model(cfg, _image_model(), SimpleNamespace(n_classes=2))
    s = make_rar(model=model, input_shape=(3, 4, 4), augment=kind)
    assert s.augment.mean is None and s.augment.std is None


@pytest.mark.parametrize("shape", [(8,), (4, 8), (1, 3, 4, 4)])
def test_augmentation_needs_chw_images_but_none_runs_anywhere(shape):
    with pytest.raises(ConfigError, match=r"augment='crop_flip' needs image inputs.*valid for this scenario: none"):
        make_rar(input_shape=shape, augment="crop_flip")
    assert make_rar(input_shape=shape, augment="none").augment is None


def test_train_step_returns_the_mean_of_the_iterations_losses():
    s = make_rar(augment="none", iterations=3, buffer_size=10)
    w = s.model.head.fc.weight
    vals = iter([1.0, 2.0, 6.0])
    calls = []
    s.loss = lambda x, y, t=None: calls.append(len(y)) or (w.sum() * 0 + next(vals))
    added = []
    s.after_step = lambda x, y, t=None: added.append(len(y))
    loss = s.train_step(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    assert float(loss) == pytest.approx(3.0) and not loss.requires_grad
    assert calls == [4, 4, 4] and added == [4]



@pytest.mark.parametrize("key,ok,bad,valid", [("iterations", [1, 2], [0], ">= 1"), ("randaug_n", [1, 3], [0], ">= 1"),
                                              ("randaug_m", [0, 30], [-1, 31], ">= 0, <= 30")])
def test_validation_bounds(key, ok, bad, valid):
    for v in ok:
        assert resolve(tiny({"name": "rar", key: v}))["strategy"][key] == v
    for v in bad:  # the message states the bounds (randaug_n's default, 1, is its bound: only the message shows it)
        with pytest.raises(ConfigError, match=f"{key}={v} is out of range: valid values are {valid}$"):
            resolve(tiny({"name": "rar", key: v}))
    for kind in AUGMENTS:  # every listed kind is accepted
        assert resolve(tiny({"name": "rar", "augment": kind}))["strategy"]["augment"] == kind
