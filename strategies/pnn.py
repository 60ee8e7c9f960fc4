"""Progressive Neural Networks (Rusu et al. 2016, arXiv 1606.04671), task-incremental.

One column per task, each a copy of the configured sequential backbone (``mlp`` or ``cnn``; the first
column keeps the backbone's initialisation, later ones are re-initialised) with its own head.  When
task ``k`` is learnt, columns ``0..k-1`` are frozen: they run without gradient and in eval mode (their
BatchNorm statistics stay fixed), so their parameters and outputs never change.  Column ``k``'s stage
``i`` receives, besides its own previous stage, lateral connections from stage ``i-1`` of every earlier
column: ``h_i^(k) = post(W_i^(k) h_{i-1}^(k) + sum_{j<k} U_i^(k:j) h_{i-1}^(j))`` (eq. 1 of the paper).

Choices the paper leaves open or that differ from it:
* Laterals are linear maps ``U`` (``Linear`` without bias, or a 1x1 ``Conv2d`` with the main layer's
  stride) added before the stage's normalisation/activation; the paper's non-linear adapters (a learned
  scalar, a dimensionality-reducing projection and a non-linearity, eq. 2) are left out.
* All columns are allocated up front (``n_experiences`` of them, shapes static); column ``k`` and its
  laterals are only used from task ``k`` on.  Training restricts logits to the task's classes
  (multi-head); a fresh optimiser is built at every boundary.
* Needs task ids (``setting=task``) at training and test time: the task id selects the column.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from cl.core.strategy import StrategyConfig, register
from cl.models.multihead import split_stages
from strategies._task_il import TaskILStrategy


class Stage(nn.Module):
    def __init__(self, main: nn.Module, post: nn.Module):
        super().__init__()
        self.main, self.post = main, post


def _reset(module: nn.Module) -> None:
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _lateral(main: nn.Module, src: nn.Module) -> nn.Module:
    """U from the output of stage i-1 (whose main layer is ``src``) into stage i (main layer ``main``)."""
    if isinstance(main, nn.Conv2d):
        return nn.Conv2d(src.out_channels, main.out_channels, 1, stride=main.stride, bias=False)
    return nn.Linear(src.out_features, main.out_features, bias=False)


class PNNModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_tasks: int, n_classes: int):
        super().__init__()
        self.pre, stages = split_stages(backbone, "pnn")
        template = nn.ModuleList(Stage(m, p) for m, p in stages)
        cols = [template]
        for _ in range(1, n_tasks):
            c = copy.deepcopy(template)
            _reset(c)
            cols.append(c)
        self.columns = nn.ModuleList(cols)
        mains = [m for m, _ in stages]
        self.laterals = nn.ModuleList(
            nn.ModuleList(nn.ModuleList(_lateral(mains[i], mains[i - 1]) for _ in range(k))
                          for i in range(1, len(mains)))
            for k in range(n_tasks))
        self.heads = nn.ModuleList(nn.Linear(backbone.out_dim, n_classes) for _ in range(n_tasks))

    def observe(self, y):  # no seen-class mask: the engine masks to the task's classes
        pass

    def column(self, k: int, h: torch.Tensor, prev: list) -> list:
        """Stage outputs of column ``k`` given the stage outputs ``prev`` of columns ``0..k-1``."""
        outs = []
        for i, st in enumerate(self.columns[k]):
            z = st.main(h)
            if i > 0:
                for j, a in enumerate(prev):
                    z = z + self.laterals[k][i - 1][j](a[i - 1])
            h = st.post(z)
            outs.append(h)
        return outs

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        h0, prev = self.pre(x), []
        for k in range(t + 1):
            if k < t:  # frozen columns: no gradient, eval-mode BatchNorm
                was = self.columns[k].training
                self.columns[k].eval()
                with torch.no_grad():
                    prev.append(self.column(k, h0, prev))
                self.columns[k].train(was)
            else:
                prev.append(self.column(k, h0, prev))
        return self.heads[t](prev[t][-1])


@register("pnn", StrategyConfig)
class PNN(TaskILStrategy):
    """Progressive networks: a new column per task with lateral connections from the frozen earlier ones."""

    name = "pnn"

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        return PNNModel(backbone, len(scenario), scenario.n_classes)

    def logits(self, x, t):
        return self.model(x, t)
