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

Task-free variant, ``memory=reservoir``: the online-CL form of Mai et al.'s code (RaptorMai/
online-continual-learning ``agents/agem.py``, the A-GEM rows of the SCR/ASER online tables): one reservoir
buffer (``cl.models.buffers.ReservoirBuffer``) updated with every incoming batch after the step, the
reference batch drawn from it without replacement (their ``random`` retrieval; their ``eps_mem_batch`` is
10). No boundary is used, so it runs with ``scenario.boundaries`` hidden, blurry or gradual. That code
projects only once the first task is over (``if self.task_seen > 0``, a boundary): ``project_from=
second_experience`` does the same (it needs visible boundaries; a ConfigError otherwise). The default
``project_from=first_step`` is task-free and projects as soon as the buffer holds a sample (so the reference
batch may hold samples of the current task): the deviation from that code that the task-free form needs.
The episodic memory holds past experiences only, so it never projects before the second experience
(``project_from=first_step`` with it is a ConfigError).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.buffers import ClassBalancedBuffer, ReservoirBuffer
from cl.models.projection import agem_project, flat_grad, grads_of, set_flat_grad
from strategies._boundaries import require_boundaries


@dataclass
class EpisodicConfig(StrategyConfig):
    lr: float = 0.03
    buffer_size: int = 500  # total samples, split equally across experiences
    replay_batch_size: int = 32


MEMORIES = ("episodic", "reservoir")
PROJECT_FROM = ("first_step", "second_experience")


@dataclass
class AGEMConfig(EpisodicConfig):
    memory: str = "episodic"  # episodic: per experience, past experiences only (paper) | reservoir: task-free (Mai et al.)
    project_from: str | None = None  # first_step | second_experience; None: the memory's own (reservoir:
    #                                  first_step, episodic: second_experience). Mai et al.'s code: second_experience


class EpisodicMemory(Strategy):
    """A per-experience, class-balanced episodic memory of past experiences (A-GEM and GEM)."""

    #: what the ConfigError on a task-free stream suggests instead
    task_free_hint = ""

    def setup(self):
        require_boundaries(self, "its episodic memory is kept per experience", self.task_free_hint)
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
        x = self.augmented(x)
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

    task_free = True  # memory=reservoir uses no boundary; memory=episodic refuses task-free streams in setup

    name = "agem"
    task_free_hint = ", or strategy.memory=reservoir (task-free A-GEM)"

    def setup(self):
        if self.cfg.memory not in MEMORIES:
            raise unknown("strategy.memory", self.cfg.memory, MEMORIES)
        if self.cfg.project_from is not None and self.cfg.project_from not in PROJECT_FROM:
            raise unknown("strategy.project_from", self.cfg.project_from, PROJECT_FROM)
        if self.cfg.memory == "episodic":
            if self.cfg.project_from == "first_step":
                raise ConfigError("strategy.project_from=first_step needs strategy.memory=reservoir (the episodic "
                                  "memory holds past experiences only, so it projects from the second experience); "
                                  "valid: strategy.project_from=second_experience, or leave it unset")
            return super().setup()
        if self.cfg.project_from == "second_experience":
            require_boundaries(self, "project_from=second_experience waits for the end of the first experience",
                               ", or strategy.project_from=first_step")
        if self.cfg.buffer_size < 0 or self.cfg.replay_batch_size < 1:
            raise ConfigError(f"strategy.buffer_size must be >= 0 and strategy.replay_batch_size >= 1, got "
                              f"{self.cfg.buffer_size} and {self.cfg.replay_batch_size}")
        self.buffer = ReservoirBuffer(self.cfg.buffer_size, self.device)
        self.exp_index = 0  # the current experience (EpisodicMemory keeps its own in the episodic mode)

    @property
    def reservoir(self) -> bool:
        return self.cfg.memory == "reservoir"

    def before_experience(self, exp):
        if self.reservoir:
            self.exp_index = int(exp.index)
        else:
            super().before_experience(exp)

    def after_experience(self, exp):
        if not self.reservoir:
            super().after_experience(exp)

    def after_step(self, x, y, t=None):
        if self.reservoir:
            self.buffer.add(x=x, y=y)
        else:
            super().after_step(x, y, t)

    def reference_batch(self):
        """A memory batch for the reference gradient, or None while the memory is empty."""
        if self.reservoir:
            if len(self.buffer) == 0 or (self.cfg.project_from == "second_experience" and self.exp_index == 0):
                return None
            mem = self.buffer.sample(self.cfg.replay_batch_size, replace=False)
            return mem["x"], mem["y"]
        if self.mem_x is None:
            return None
        idx = torch.randperm(len(self.mem_y), device=self.mem_y.device)[: self.cfg.replay_batch_size]
        return self.mem_x[idx], self.mem_y[idx]

    def before_optimizer_step(self, x, y, t=None):
        ref = self.reference_batch()
        if ref is None:
            return
        params = self.params()
        g = flat_grad(params)
        g_ref = grads_of(self.memory_loss(*ref), params)
        set_flat_grad(params, agem_project(g, g_ref))

    def extra_state(self):
        return {"buffer": self.buffer.state_dict(), "exp_index": self.exp_index} if self.reservoir \
            else super().extra_state()

    def load_extra_state(self, state):
        if self.reservoir:
            self.buffer.load_state_dict(state["buffer"])
            self.exp_index = int(state.get("exp_index", 0))  # a checkpoint from before the index was saved: 0
        else:
            super().load_extra_state(state)
