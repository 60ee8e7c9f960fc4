"""Parameter-efficient modules for frozen pretrained backbones (timm ViTs, HF BERT encoders such as MiniLM)."""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F


class ParallelAdapter(nn.Module):
    """AdaptFormer branch, attached to a block by hooks: one captures the branch input, the other adds
    the branch output.  The hooks are bound methods, so a deep copy of the model stays consistent."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.drop = nn.Dropout(dropout)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._x = None

    def branch(self, x):
        return self.scale * self.up(self.drop(F.relu(self.down(x))))

    def capture(self, module, args):  # forward pre-hook
        self._x = args[0]

    def add(self, module, args, out):  # forward hook
        x, self._x = self._x, None
        return out + self.branch(x).to(out.dtype)


def attach_adaptformer(backbone: nn.Module, bottleneck: int, scale: float, dropout: float) -> nn.ModuleList:
    """Attach one ParallelAdapter per transformer block (timm ViT ``Block`` or HF ``BertLayer``)."""
    adapters = nn.ModuleList()
    for name, m in backbone.named_modules():
        if hasattr(m, "norm2") and hasattr(m, "mlp") and hasattr(m, "attn"):  # timm ViT block
            dim = m.norm2.normalized_shape[0]
            a = ParallelAdapter(dim, bottleneck, scale, dropout)
            m.norm2.register_forward_pre_hook(a.capture)  # input of LN2 = residual stream after attention
            m.mlp.register_forward_hook(a.add)
        elif hasattr(m, "intermediate") and hasattr(m, "output") and hasattr(m.output, "dense"):  # BERT layer
            dim = m.output.dense.out_features
            a = ParallelAdapter(dim, bottleneck, scale, dropout)
            m.intermediate.register_forward_pre_hook(a.capture)  # attention output
            m.output.dense.register_forward_hook(a.add)  # added before the FFN's residual LayerNorm
        else:
            continue
        adapters.append(a)
    if not adapters:
        raise ValueError(f"no transformer block found in {type(backbone).__name__} for an AdaptFormer adapter; "
                         f"use adapter=lora")
    return adapters
