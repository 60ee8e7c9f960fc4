"""Backbones by name. Each module here registers factories with
``@cl.registry.backbones.register(name, Config)``; a factory takes
``(cfg, input_shape)`` and returns an ``nn.Module`` with an ``out_dim`` attribute
(the feature size) mapping a preprocessed batch to features."""
from __future__ import annotations

from cl.core.registry import backbones


def build_backbone(name: str, cfg, input_shape):
    net = backbones.get(name).obj(cfg, tuple(input_shape))
    if not hasattr(net, "out_dim"):
        raise TypeError(f"backbone {name!r} has no out_dim attribute")
    return net


def backbone_spec(resolved: dict):
    """``(name, config)`` of a resolved run config's backbone; a family name such as ``timm:<model>``
    fills the config's ``model`` field when it is empty."""
    from cl.core.config import section_config

    name = resolved["backbone"]["name"]
    bcfg = section_config(resolved, "backbone")
    if ":" in name and hasattr(bcfg, "model") and not bcfg.model:
        bcfg.model = name.split(":", 1)[1]
    return name, bcfg
