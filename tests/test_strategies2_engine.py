"""Smoke runs of the issue-6 strategies through cl.train.engine.Run on tiny data: a small random ViT at 32 px,
MiniLM on a tiny text stream, and CoLoR with LoRA on EfficientNet-Lite0's convolutions."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cl.core.config import resolve
from cl.train.engine import Run
from cl.core.registry import scenarios
from cl.core.streams import class_incremental

VIT = {"name": "vit-tiny", "depth": 2, "embed_dim": 48, "num_heads": 3, "patch_size": 8, "img_size": 32}


@dataclass
class TinyImagesConfig:
    n_tasks: int = 2
    n_classes: int = 4
    per_class: int = 8
    setting: str = "class"


@scenarios.register("s2-tiny-images", TinyImagesConfig)
def tiny_images(cfg, seed):
    """Four colour-coded 16x16 classes (tests only)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (cfg.n_classes, 3, 16, 16), generator=g).float()

    def draw(n):
        y = torch.arange(cfg.n_classes).repeat_interleave(n)
        return (base[y] * 0.7 + torch.rand(len(y), 3, 16, 16, generator=g) * 76).to(torch.uint8), y

    (xtr, ytr), (xte, yte) = draw(cfg.per_class), draw(cfg.per_class // 2)
    return class_incremental("s2-tiny-images", xtr, ytr, xte, yte, n_tasks=cfg.n_tasks, seed=None)


TEXTS = {
    0: ["what is the weather today", "will it rain tomorrow", "is it sunny outside", "how hot is it"],
    1: ["play some jazz music", "put on a song", "play my playlist", "start the music"],
    2: ["book a table for two", "reserve a restaurant", "make a dinner reservation", "table for four tonight"],
    3: ["set an alarm for 7", "wake me up at six", "alarm at noon please", "set my alarm"],
}


@scenarios.register("s2-tiny-text")
def tiny_text(cfg, seed):
    """Four intents, two tasks, MiniLM token ids (tests only)."""
    from cl.models.text import tokenize

    texts = [t for c in range(4) for t in TEXTS[c]]
    y = torch.arange(4).repeat_interleave(4)
    ids = tokenize(texts, max_length=16)
    return class_incremental("s2-tiny-text", ids, y, ids, y, n_tasks=2, seed=None, modality="text")


def run(tmp_path, strategy, backbone=VIT, scenario="s2-tiny-images", **skw):
    raw = {"strategy": {"name": strategy, **skw}, "scenario": {"name": scenario}, "backbone": backbone,
           "protocol": {"name": "offline", "epochs": 1, "batch_size": 16, "checkpoint": False}, "wandb": "off"}
    r = Run(resolve(raw), progress=False, out_dir=tmp_path / strategy).execute()
    assert r["status"] == "finished", r.get("traceback") or r.get("error")
    assert len(r["R"]) == 2 and all(0.0 <= a <= 1.0 for a in r["R"][-1])
    return r


@pytest.mark.parametrize("strategy", ["color", "sprompts", "l2p", "l2l", "prd", "ssiat"])
def test_smoke_vit(tmp_path, strategy):
    r = run(tmp_path, strategy)
    m = r["metrics"]
    assert m["trainable_params"] > 0
    if strategy in ("color", "sprompts"):
        assert 0.0 <= m["task_id_acc"] <= 1.0 and len(m["task_id_acc_per_exp"]) == 2
        assert m["task_id_acc"] > 0.9  # colour-coded tasks are trivially separable by keys


def test_color_adapted_keys_variant(tmp_path):
    r = run(tmp_path, "color", keys="adapted")
    assert r["metrics"]["task_id_acc"] > 0.9


@pytest.mark.parametrize("strategy", ["color", "sprompts", "l2p", "ssiat", "prd"])
def test_smoke_minilm(tmp_path, strategy):
    kw = {"tune": "lora"} if strategy == "prd" else {}
    r = run(tmp_path, strategy, backbone={"name": "minilm"}, scenario="s2-tiny-text", **kw)
    assert r["metrics"]["trainable_params"] < 2_000_000  # PEFT: far below MiniLM's 22.7M


def test_finetune_lora_baseline(tmp_path):
    r = run(tmp_path, "finetune-lora")
    assert 0 < r["metrics"]["trainable_params"] < 20_000
