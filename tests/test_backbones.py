"""Backbones by name: offline pretrained EfficientNet-Lite0 beats its random init on real CIFAR-10;
timm names, local weight files and the offline hub give clear errors."""
import time

import pytest
import torch

from cl.models.backbones.timm_models import (EffNetLite0Config, TimmConfig, create_timm, efficientnet_lite0,
                                      SmallViTConfig, vit_tiny)
from cl.core.registry import ConfigError
from conftest import needs_shared


def ncm_accuracy(ftr, ytr, fte, yte):
    classes = sorted(set(ytr.tolist()))
    mu = torch.stack([ftr[ytr == c].mean(0) for c in classes])
    pred = torch.tensor(classes)[torch.cdist(fte, mu).argmin(1)]
    return (pred == yte).float().mean().item()


def _subset(x, y, k):
    idx = torch.cat([torch.nonzero(y == c).flatten()[:k] for c in range(10)])
    return x[idx], y[idx]


@needs_shared("cifar10-jpeg.tar.gz")
def test_efficientnet_lite0_pretrained_beats_random_on_cifar10():
    from scenarios.cifar import load_cifar10

    xtr, ytr, xte, yte, _ = load_cifar10()
    xtr, ytr = _subset(xtr, ytr, 10)
    xte, yte = _subset(xte, yte, 10)
    accs = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        b = efficientnet_lite0(EffNetLite0Config(pretrained=pretrained, input_size=64), (3, 32, 32)).eval()
        assert b.out_dim == 1280 and b.preprocessing["mean"] == (0.5, 0.5, 0.5)
        pp = b.make_preprocess(None, "cpu")
        assert pp(xtr[:2]).shape == (2, 3, 64, 64)
        with torch.inference_mode():
            accs[pretrained] = ncm_accuracy(b(pp(xtr)), ytr, b(pp(xte)), yte)
    assert accs[True] > accs[False] + 0.1, accs
    assert accs[True] > 0.3, accs


def test_timm_by_name_reports_preprocessing_and_small_vit():
    b = create_timm("vit_tiny_patch16_224", TimmConfig(img_size=32, patch_size=4, depth=1))
    assert b.out_dim == 192 and b.family == "vit" and b.prompt_dim == 192
    assert b.preprocessing["input_size"] == (3, 32, 32)
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    v = vit_tiny(SmallViTConfig(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2), (3, 16, 16))
    assert v(torch.randn(1, 3, 16, 16)).shape == (1, 32)


def test_unknown_timm_name_suggests_close_matches():
    with pytest.raises(ConfigError) as e:
        create_timm("vit_tiny_patch16_2244", TimmConfig())
    assert "vit_tiny_patch16_224" in str(e.value)


def test_local_weights_file_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = create_timm("resnet10t", TimmConfig())
    sd = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    good = tmp_path / "r10t.safetensors"
    save_file(sd, str(good))
    torch.manual_seed(1)
    loaded = create_timm("resnet10t", TimmConfig(weights=str(good)))
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in sd.items())
    bad = dict(sd)
    bad["conv1.0.weight"] = torch.zeros(5, 3, 3, 3)
    del bad["layer1.0.conv1.weight"]
    badf = tmp_path / "bad.pth"
    torch.save(bad, badf)
    with pytest.raises(ConfigError) as e:
        create_timm("resnet10t", TimmConfig(weights=str(badf)))
    msg = str(e.value)
    assert "does not match" in msg and "conv1.0.weight" in msg and "(5, 3, 3, 3)" in msg
    assert "layer1.0.conv1.weight" in msg
    with pytest.raises(ConfigError, match="does not exist"):
        create_timm("resnet10t", TimmConfig(weights=str(tmp_path / "nope.pth")))


def test_hub_weights_offline_fail_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        create_timm("resnet10t", TimmConfig(pretrained=True))
    assert time.perf_counter() - t < 5
    assert "offline" in str(e.value) and "backbone.weights=" in str(e.value)
