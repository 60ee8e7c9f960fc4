"""GEM: Gradient Episodic Memory (Lopez-Paz & Ranzato, NeurIPS 2017).

For every past experience k, the gradient ``g_k`` of the loss on all of k's episodic memory is computed
at the current parameters; if the incoming gradient ``g`` has ``g . g_k < 0`` for some k, the step uses
the gradient closest to ``g`` that satisfies every constraint ``g~ . g_k >= 0`` (a QP, solved in the
dual: cl/models/projection.py::gem_project). Runs in the ``before_optimizer_step`` hook.

Choices (GEM's code and mammoth ``models/gem.py``):

* Memory as A-GEM's (strategies/agem.py): ``buffer_size // n_experiences`` class-balanced slots per
  experience, filled in its first pass, used from the next experience on.
* ``margin`` 0.5 (GEM's "memory_strength", mammoth's ``gamma``) and ``eps`` 1e-3 on the dual's diagonal,
  as both codes pass to quadprog; the solver here is an exact NNLS reformulation of the same dual
  (quadprog is not installed; scipy is). Projection only when some constraint is violated.
* Memory losses use the platform's masked head (CE over seen classes), the memory inputs augmented.
  lr 0.03: mammoth ``utils/best_args.py`` (d75fe5f) seq-CIFAR-10.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.strategy import register
from cl.models.projection import flat_grad, gem_project, grads_of, set_flat_grad
from strategies.agem import EpisodicConfig, EpisodicMemory


@dataclass
class GEMConfig(EpisodicConfig):
    margin: float = 0.5  # memory strength: the dual variables are >= margin
    eps: float = 1e-3  # added to the dual's diagonal


@register("gem", GEMConfig)
class GEM(EpisodicMemory):
    """GEM: QP projection of the gradient onto the constraints of every past experience's memory."""

    name = "gem"

    def before_optimizer_step(self, x, y, t=None):
        if self.mem_x is None:
            return
        params = self.params()
        g = flat_grad(params)
        G = torch.stack([grads_of(self.memory_loss(self.mem_x[self.mem_t == k], self.mem_y[self.mem_t == k]), params)
                         for k in self.mem_t.unique().tolist()])
        if bool((G @ g < 0).any()):
            set_flat_grad(params, gem_project(g, G, self.cfg.margin, self.cfg.eps))
