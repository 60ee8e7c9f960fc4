"""Tiny ViTs (16 x 16 images, 8 px patches: 4 tokens and a class token, width 16) and a two-task fake stream for the
mutation tests of the prompt strategies (tests/test_mutation_{dualprompt,coda_prompt,hide_prompt,l2p,sprompts}.py)."""
from __future__ import annotations

import torch

from cl.core.registry import backbones
from cl.models.backbones import build_backbone

from test_strategies2_mechanism import fake_scenario

SHAPE = (3, 16, 16)


def vit(depth=2):
    torch.manual_seed(0)
    cfg = backbones.get("vit-tiny").config(depth=depth, embed_dim=16, num_heads=2, patch_size=8, img_size=16)
    return build_backbone("vit-tiny", cfg, SHAPE)


def scenario(n_tasks=2):
    return fake_scenario(n_tasks=n_tasks, n_classes=2 * n_tasks, shape=SHAPE)


def scaled(exp):
    return exp.train_x.float() / 127.5 - 1
