"""Model pieces: backbones, heads, the classifier model, replay buffers, adapters and the feature cache.

Public API (stable import path ``cl.models``): ``Model``, ``build_head``, ``trainable_parameters``.
"""
from cl.models.model import Model, build_head, trainable_parameters

__all__ = ["Model", "build_head", "trainable_parameters"]
