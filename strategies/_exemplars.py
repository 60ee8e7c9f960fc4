"""Class-wise exemplar memory with herding selection, shared by iCaRL, LUCIR and BiC.

The memory holds raw samples (as the stream stores them, e.g. uint8 images) and labels, grouped by class
in herding priority order. ``per_class`` is either fixed (LUCIR: 20 per class) or K // n_classes_seen
(iCaRL's fixed total budget K). ``reduce(m)`` keeps the first m of each class (iCaRL's ReduceExemplarSet);
``add(x, y, feats, m)`` runs herding on each new class's features. State is plain tensors.
"""
from __future__ import annotations

import torch

from cl.models.herding import herding


class ExemplarMemory:
    def __init__(self, device):
        self.device = device
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.rank: torch.Tensor | None = None  # position in its class's herding order

    def __len__(self):
        return 0 if self.y is None else len(self.y)

    def classes(self) -> list[int]:
        return [] if self.y is None else sorted(self.y.unique().tolist())

    def reduce(self, m: int) -> None:
        if self.y is None:
            return
        keep = self.rank < m
        self.x, self.y, self.rank = self.x[keep], self.y[keep], self.rank[keep]

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, feats: torch.Tensor, m: int) -> None:
        xs, ys, rs = [], [], []
        for c in y.unique().tolist():
            idx = (y == c).nonzero().flatten()
            order = idx[herding(feats[idx], m)]
            xs.append(x[order])
            ys.append(y[order])
            rs.append(torch.arange(len(order), device=y.device))
        if self.y is not None:
            xs.insert(0, self.x)
            ys.insert(0, self.y)
            rs.insert(0, self.rank)
        self.x, self.y, self.rank = torch.cat(xs), torch.cat(ys), torch.cat(rs)

    def state_dict(self) -> dict:
        if self.y is None:
            return {"x": None, "y": None, "rank": None}
        return {"x": self.x.cpu(), "y": self.y.cpu(), "rank": self.rank.cpu()}

    def load_state_dict(self, s: dict) -> None:
        mv = lambda v: None if v is None else v.to(self.device)
        self.x, self.y, self.rank = mv(s["x"]), mv(s["y"]), mv(s["rank"])
