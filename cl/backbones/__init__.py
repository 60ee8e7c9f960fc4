"""Backbones by name. Each module here registers factories with
``@cl.registry.backbones.register(name, Config)``; a factory takes
``(cfg, input_shape)`` and returns an ``nn.Module`` with an ``out_dim`` attribute
(the feature size) mapping a preprocessed batch to features."""
from __future__ import annotations

from cl.registry import backbones


def build_backbone(name: str, cfg, input_shape):
    net = backbones.get(name).obj(cfg, tuple(input_shape))
    if not hasattr(net, "out_dim"):
        raise TypeError(f"backbone {name!r} has no out_dim attribute")
    return net
