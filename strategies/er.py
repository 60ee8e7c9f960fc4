"""Experience replay with a reservoir buffer on the device (Chaudhry et al. 2019; methods.md section 1).

Loss variant (b) of the online-CL code bases: CE_mean(incoming) + CE_mean(replay).
The buffer stores the raw (non-augmented) samples and is updated after the step.
By default the incoming and replayed samples go through the model in one forward pass (half the kernel
launches of two passes: what matters at batch 10); with BatchNorm this normalises them together, as
mammoth and Avalanche do. ``single_forward=false`` runs two passes.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.models.buffers import ReservoirBuffer
from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class ERConfig(StrategyConfig):
    buffer_size: int = 500  # total samples (not per class)
    replay_batch_size: int = 10
    single_forward: bool = True  # one forward pass over [incoming; replay]


@register("er", ERConfig)
class ER(Strategy):
    """Experience replay, reservoir buffer, replay batch drawn uniformly."""

    graph_safe = True  # no per-step host branch or Python state: the step can be a CUDA graph (cl/graphs.py)

    def setup(self):
        self.buffer = ReservoirBuffer(self.cfg.buffer_size, self.device)

    def loss(self, x, y, t=None):
        mem = self.buffer.sample(self.cfg.replay_batch_size)
        if not mem:
            return super().loss(x, y, t)
        if not self.cfg.single_forward:
            return super().loss(x, y, t) + super().loss(mem["x"], mem["y"], t)
        both = torch.cat([x, mem["x"]])
        logits = self.model(self.augment(both) if self.augment is not None else both).float()
        b = len(y)
        return F.cross_entropy(logits[:b], y) + F.cross_entropy(logits[b:], mem["y"])

    def after_step(self, x, y, t=None):
        self.buffer.add(x=x, y=y)

    def extra_state(self):
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state):
        self.buffer.load_state_dict(state["buffer"])
