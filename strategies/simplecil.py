"""SimpleCIL (Zhou et al., IJCV 2024, the baseline of "Revisiting Class-Incremental Learning with Pre-Trained
Models"; methods.md 7b): ``ncm`` with SimpleCIL's defaults, under its own name so that papers' tables map one
to one.

The frozen pretrained backbone's raw (unnormalised) features are averaged per class; a sample goes to the
class whose mean has the highest cosine similarity with its feature (LAMDA-PILOT ``models/simplecil.py``:
``replace_fc`` writes the class means of ``backbone(x)`` into a ``CosineLinear``; ``tuned_epoch=0``; the
weights in ``exps/simplecil.json`` are ``pretrained_vit_b16_224``, timm's IN-21k -> IN-1k ViT-B/16).
Defaults: ``metric=cosine``, ``normalize=false`` (``ncm``'s defaults are Janson et al.'s Euclidean distance
on normalised features).  Nothing else differs from ``ncm`` (strategies/ncm.py): incremental means, task-free,
any backbone.  Deviation: PILOT's ``CosineLinear`` multiplies the cosine by sigma = 1; the logits here are
the cosines (the same predictions).
"""
from __future__ import annotations

from dataclasses import dataclass

from cl.core.strategy import register
from strategies.ncm import NCM, NCMConfig


@dataclass
class SimpleCILConfig(NCMConfig):
    metric: str = "cosine"
    normalize: bool = False


@register("simplecil", SimpleCILConfig)
class SimpleCIL(NCM):
    """SimpleCIL: cosine classifier on the class means of raw frozen features (``ncm`` with its defaults)."""
