"""Center-loss regularisation with fixed decision boundaries (Olpadkar & Gavas 2021; methods.md section 10a).

``L = CE(W h, y) + (lambda_c / 2) * mean_i ||h_i - c_{y_i}||^2`` on the incoming batch
(and on the replay batch when ``buffer_size > 0``: "with replay").  Centres are
buffers initialised at the mean feature of their class's first batch, then updated with the
standard center-loss rule (Wen et al. 2016)
``c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - h_i) / (1 + n_j)`` while their class is
being learned; the gradient of the penalty reaches only the features.

Freezing (the paper's details are [RECALL]): at the end of the first experience in
which a class appears, its centre and its classifier row (weight and bias) are
frozen, so later experiences pull new features to the old centres while the old
decision boundaries stay put.  In the domain-incremental setting of the paper
(all classes in task 1) this is exactly "centres and classifier frozen after task 1".
``freeze=False`` keeps learning both.  ``lambda_c = 0.1`` and ``alpha = 0.5`` are defaults of
this platform, not the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.strategy import register
from strategies._boundaries import require_boundaries
from strategies.er import ER, ERConfig


@dataclass
class CenterLossConfig(ERConfig):
    buffer_size: int = 0  # 0: center loss alone; > 0: with experience replay
    lambda_c: float = 0.1  # weight of the center loss
    alpha: float = 0.5  # centre learning rate
    freeze: bool = True  # freeze centres and classifier rows of a class after its first experience
    center_on_replay: bool = True  # also pull replayed features to their (frozen) centres


@register("center-loss", CenterLossConfig)
class CenterLoss(ER):
    """Center-loss regularisation with frozen centres and classifier rows (optionally with replay)."""

    transient_attrs = ("_h", "_y")  # the last batch's features and labels, set by loss() before use
    task_free = True  # freeze=false uses no boundary; freeze=true (freezing at a boundary) refuses task-free streams

    def setup(self):
        super().setup()
        if self.cfg.freeze:
            require_boundaries(self, "it freezes a class's centre and classifier row at the end of its experience",
                               "; or strategy.freeze=false")
        C, d = self.info.n_classes, self.model.backbone.out_dim
        self.centers = torch.zeros(C, d, device=self.device)
        self.frozen = torch.zeros(C, dtype=torch.bool, device=self.device)
        self.initialised = torch.zeros(C, dtype=torch.bool, device=self.device)
        self.active = torch.zeros(C, dtype=torch.bool, device=self.device)  # classes of the current experience
        self._snap = {n: p.detach().clone() for n, p in self.model.head.named_parameters()}

    def _terms(self, x, y):
        x = self.augmented(x)
        h = self.model.features(x)
        return F.cross_entropy(self.model.head(h).float(), y), h.float()

    def center_penalty(self, h, y):
        return 0.5 * self.cfg.lambda_c * (h - self.centers[y]).pow(2).sum(1).mean()

    def loss(self, x, y, t=None):
        ce, h = self._terms(x, y)
        self._h, self._y = h.detach(), y
        loss = ce + self.center_penalty(h, y)
        mem = self.buffer.sample(self.cfg.replay_batch_size)
        if mem:
            ce_r, h_r = self._terms(mem["x"], mem["y"])
            loss = loss + ce_r + (self.center_penalty(h_r, mem["y"]) if self.cfg.center_on_replay else 0.0)
        return loss

    @torch.no_grad()
    def _update_centers(self, h, y):
        C = self.info.n_classes
        diff = torch.zeros_like(self.centers).index_add_(0, y, self.centers[y] - h)
        n = torch.zeros(C, device=h.device).index_add_(0, y, torch.ones_like(y, dtype=torch.float))
        step = self.cfg.alpha * diff / (1 + n)[:, None]
        learn = ~self.frozen if self.cfg.freeze else torch.ones_like(self.frozen)
        self.centers -= step * learn[:, None]
        # a class's centre starts at the mean feature of its first batch (from zero, a large lambda_c
        # collapses every feature onto the origin)
        first = (n > 0) & ~self.initialised
        mean = torch.zeros_like(self.centers).index_add_(0, y, h) / n.clamp_min(1)[:, None]
        self.centers.copy_(torch.where(first[:, None], mean, self.centers))
        self.initialised |= n > 0

    @torch.no_grad()
    def _restore_frozen(self):
        for name, p in self.model.head.named_parameters():
            f = self.frozen.view(-1, *([1] * (p.dim() - 1)))
            p.copy_(torch.where(f, self._snap[name], p))

    def after_step(self, x, y, t=None):
        if self.cfg.freeze:
            self._restore_frozen()
        self._update_centers(self._h, self._y)
        self.active[y] = True
        super().after_step(x, y, t)

    @torch.no_grad()
    def after_experience(self, exp):
        if self.cfg.freeze:
            newly = self.active & ~self.frozen
            for name, p in self.model.head.named_parameters():
                f = newly.view(-1, *([1] * (p.dim() - 1)))
                self._snap[name] = torch.where(f, p.detach(), self._snap[name])
            self.frozen |= newly
        self.active.zero_()

    def extra_state(self):
        return {**super().extra_state(), "centers": self.centers.cpu(), "frozen": self.frozen.cpu(),
                "initialised": self.initialised.cpu(),
                "snap": {k: v.cpu() for k, v in self._snap.items()}}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        if "centers" in state:
            self.centers = state["centers"].to(self.device)
            self.frozen = state["frozen"].to(self.device)
            self.initialised = state["initialised"].to(self.device)
            self._snap = {k: v.to(self.device) for k, v in state["snap"].items()}
