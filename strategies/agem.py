"""A-GEM: Averaged Gradient Episodic Memory (Chaudhry, Ranzato, Rohrbach, Elhoseiny; ICLR 2019).

After the backward pass on the incoming batch (gradient ``g``), a reference gradient ``g_ref`` is
computed on a batch drawn from the episodic memory of the past experiences; if ``g . g_ref < 0`` the
step uses ``g - (g . g_ref / g_ref . g_ref) g_ref`` instead (cl/models/projection.py). The projection
runs in the ``before_optimizer_step`` hook, so the default train_step is kept.

Choices (the paper's task-incremental protocol, mammoth ``models/agem.py`` for the rest):

* Episodic memory: ``buffer_size // n_experiences`` slots per experience (mammoth's
  ``samples_per_task``), filled during the first pass over the experience with GDumb's class-balanced
  greedy policy (one offer per stream sample; later epochs add nothing) and joined to the memory at the
  end of the experience, so the reference gradient only ever uses past experiences (A-GEM's constraint
  is on past tasks). Mammoth fills it at ``end_task`` from one loader batch; the paper's code uses a
  per-task ring buffer. Stored inputs are non-augmented; the reference batch is augmented.
* Reference batch: ``replay_batch_size`` (32, mammoth's ``minibatch_size``) distinct memory samples
  drawn uniformly; CE with the platform's masked head (seen classes). No projection before the second
  experience. lr 0.03: mammoth ``utils/best_args.py`` (d75fe5f) seq-CIFAR-10.
* Needs experience boundaries (the memory is per experience): a ConfigError otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.buffers import ClassBalancedBuffer
from cl.models.projection import agem_project, flat_grad, grads_of, set_flat_grad


@dataclass
class AGEMConfig(StrategyConfig):
    lr: float = 0.03
    buffer_size: int = 500  # total samples, split equally across experiences
    replay_batch_size: int = 32


class EpisodicMemory(Strategy):
    """A per-experience, class-balanced episodic memory of past experiences (A-GEM and GEM)."""

    def setup(self):
        if self.info.boundaries != "visible":
            raise ConfigError(f"strategy {self.name!r} needs experience boundaries, got scenario.boundaries="
                              f"{self.info.boundaries!r} (use a scenario with boundaries=visible)")
        if self.cfg.buffer_size < 0:
            raise ConfigError(f"strategy.buffer_size must be >= 0, got {self.cfg.buffer_size}")
        self.per_task = self.cfg.buffer_size // max(1, self.info.n_experiences)
        self.mem_x = self.mem_y = self.mem_t = None  # past experiences' samples (and experience index)
        self.pending = ClassBalancedBuffer(self.per_task, self.device)
        self.to_offer = 0
        self.exp_index = 0

    def params(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def before_experience(self, exp):
        self.pending = ClassBalancedBuffer(self.per_task, self.device)
        self.to_offer, self.exp_index = len(exp.train_y), exp.index

    def after_step(self, x, y, t=None):
        if self.to_offer > 0:
            r = min(self.to_offer, len(y))
            self.pending.add(x=x[:r], y=y[:r])
            self.to_offer -= r

    def after_experience(self, exp):
        items = self.pending.items()
        if not items:
            return
        tid = torch.full_like(items["y"], exp.index)
        if self.mem_x is None:
            self.mem_x, self.mem_y, self.mem_t = items["x"].clone(), items["y"].clone(), tid
        else:
            self.mem_x = torch.cat([self.mem_x, items["x"]])
            self.mem_y = torch.cat([self.mem_y, items["y"]])
            self.mem_t = torch.cat([self.mem_t, tid])

    def memory_loss(self, x, y):
        x = self.augment(x) if self.augment is not None else x
        return F.cross_entropy(self.model(x).float(), y)

    def extra_state(self):
        return {"mem": None if self.mem_x is None else {"x": self.mem_x.cpu(), "y": self.mem_y.cpu(),
                                                          "t": self.mem_t.cpu()},
                "pending": self.pending.state_dict()}

    def load_extra_state(self, state):
        mem = state.get("mem")
        if mem is not None:
            self.mem_x, self.mem_y, self.mem_t = (mem[k].to(self.device) for k in ("x", "y", "t"))
        if "pending" in state:
            self.pending.load_state_dict(state["pending"])


@register("agem", AGEMConfig)
class AGEM(EpisodicMemory):
    """A-GEM: project the gradient when it conflicts with the gradient on an episodic-memory batch."""

    name = "agem"

    def before_optimizer_step(self, x, y, t=None):
        if self.mem_x is None:
            return
        params = self.params()
        g = flat_grad(params)
        idx = torch.randperm(len(self.mem_y), device=self.mem_y.device)[: self.cfg.replay_batch_size]
        g_ref = grads_of(self.memory_loss(self.mem_x[idx], self.mem_y[idx]), params)
        set_flat_grad(params, agem_project(g, g_ref))
