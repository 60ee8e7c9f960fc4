"""Experience replay with a reservoir buffer on the device (Chaudhry et al. 2019; methods.md section 1).

Loss variant (b) of the online-CL code bases: CE_mean(incoming) + CE_mean(replay).
The buffer stores the raw (non-augmented) samples and is updated after the step.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from cl.buffers import ReservoirBuffer
from cl.strategy import Strategy, StrategyConfig, register


@dataclass
class ERConfig(StrategyConfig):
    buffer_size: int = 500  # total samples (not per class)
    replay_batch_size: int = 10


@register("er", ERConfig)
class ER(Strategy):
    """Experience replay, reservoir buffer, replay batch drawn uniformly."""

    graph_safe = True  # no per-step host branch or Python state: the step can be a CUDA graph (cl/graphs.py)

    def setup(self):
        self.buffer = ReservoirBuffer(self.cfg.buffer_size, self.device)

    def loss(self, x, y, t=None):
        loss = super().loss(x, y, t)
        mem = self.buffer.sample(self.cfg.replay_batch_size)
        if mem:
            loss = loss + super().loss(mem["x"], mem["y"], t)
        return loss

    def after_step(self, x, y, t=None):
        self.buffer.add(x=x, y=y)

    def extra_state(self):
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state):
        self.buffer.load_state_dict(state["buffer"])
