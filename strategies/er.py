"""Experience replay with a reservoir buffer on the device (Chaudhry et al. 2019; methods.md section 1).

Loss variant (b) of the online-CL code bases: CE_mean(incoming) + CE_mean(replay).
The buffer stores the raw (non-augmented) samples and is updated after the step.
By default the incoming and replayed samples go through the model in one forward pass (half the kernel
launches of two passes: what matters at batch 10); with BatchNorm this normalises them together, as
mammoth and Avalanche do. ``single_forward=false`` runs two passes.

``exclude_current=true`` is the ER of MIR's official code (optimass/Maximally_Interfered_Retrieval,
``mir.py``: ``buffer.sample(args.buffer_batch_size, exclude_task=task)``, ``rehearse=task > 0``): the replay
batch is ``replay_batch_size`` distinct samples of past experiences only (all of them when fewer), so the
first experience trains on its incoming batches alone. It needs visible boundaries (a ConfigError
otherwise) and is not graph-safe (a host-sized draw). The buffer then also stores each sample's experience
index (``e``); MIR's candidates use the same draw.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.models.buffers import ReservoirBuffer
from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class ERConfig(StrategyConfig):
    buffer_size: int = 500  # total samples (not per class)
    replay_batch_size: int = 10
    single_forward: bool = True  # one forward pass over [incoming; replay]
    exclude_current: bool = False  # replay past experiences' samples only (MIR's code; needs boundaries)


@register("er", ERConfig)
class ER(Strategy):
    """Experience replay, reservoir buffer, replay batch drawn uniformly."""

    graph_safe = True  # no per-step host branch or Python state: the step can be a CUDA graph (cl/graphs.py)
    task_free = True  # the boundary index is read only by exclude_current, which needs visible boundaries

    #: this class's replay goes through ``draw``, so it honours ``exclude_current``; a subclass that draws
    #: otherwise does not inherit this (it is read from the class's own body) and refuses the setting
    honours_exclude_current = True

    def setup(self):
        if self.cfg.exclude_current and not type(self).__dict__.get("honours_exclude_current", False):
            raise ConfigError(f"strategy.exclude_current=true is not supported by {type(self).__name__} (it draws "
                              f"its replay batch otherwise); valid: strategies er, mir, or "
                              f"strategy.exclude_current=false")
        if self.cfg.exclude_current and self.info.boundaries != "visible":
            raise ConfigError(f"strategy.exclude_current=true needs experience boundaries, got "
                              f"scenario.boundaries={self.info.boundaries!r} (valid: visible; or set "
                              f"strategy.exclude_current=false)")
        if self.cfg.exclude_current:
            self.graph_safe = False  # the past-only draw is host-sized
        self.buffer = ReservoirBuffer(self.cfg.buffer_size, self.device)
        self.exp_index = 0  # the current experience (saved: extra_state)

    def before_experience(self, exp):
        self.exp_index = int(exp.index)

    def draw(self, n: int, replace: bool = True) -> dict:
        """``n`` stored samples drawn uniformly; with ``exclude_current``, ``min(n, k)`` distinct ones of the
        ``k`` stored from past experiences ({} when there are none)."""
        if not self.cfg.exclude_current:
            return self.buffer.sample(n, replace=replace)
        if len(self.buffer) == 0:
            return {}
        items = self.buffer.items()
        keep = (items["e"] != self.exp_index).nonzero().squeeze(1)
        if len(keep) == 0:
            return {}
        pick = keep[torch.randperm(len(keep), device=keep.device)[:n]]
        return {k: v[pick] for k, v in items.items()}

    def loss(self, x, y, t=None):
        mem = self.draw(self.cfg.replay_batch_size)
        if not mem:
            return super().loss(x, y, t)
        if not self.cfg.single_forward:
            return super().loss(x, y, t) + super().loss(mem["x"], mem["y"], t)
        both = torch.cat([x, mem["x"]])
        logits = self.model(self.augmented(both)).float()
        b = len(y)
        return F.cross_entropy(logits[:b], y) + F.cross_entropy(logits[b:], mem["y"])

    def after_step(self, x, y, t=None):
        if self.cfg.exclude_current:
            self.buffer.add(x=x, y=y, e=torch.full_like(y, self.exp_index))
        else:
            self.buffer.add(x=x, y=y)

    def extra_state(self):
        return {"buffer": self.buffer.state_dict(), "exp_index": self.exp_index}

    def load_extra_state(self, state):
        self.buffer.load_state_dict(state["buffer"])
        self.exp_index = int(state.get("exp_index", 0))  # a checkpoint from before the index was saved: 0
