"""Compatibility of learned representations across model updates (CL2R, Biondi et al., ACM TOMM 2023,
arXiv 2211.09032; "Stationary Representations", Biondi et al. 2024).

A run that keeps, at each boundary ``i``, the features ``F_i`` of model ``i`` on one fixed evaluation
set gives the **compatibility matrix** (logged like ``R``: row ``i`` after experience ``i``):

    C[i][j] = retrieval accuracy with query features from model i and gallery features from model j,
              for j <= i (None above the diagonal);  C[i][i] is the self-test.

* **Empirical compatibility criterion**: model ``i`` is compatible with ``j < i`` iff ``C[i][j] >= C[j][j]``
  (querying the old gallery with the new model is no worse than the old model alone).
* **AC** (average compatibility) = fraction of the ``T(T-1)/2`` pairs ``j < i`` that meet the criterion
  (1 when T = 1), as in the authors' ``metrics.py::average_compatibility``.
* **AM** (average multi-model accuracy) = mean of the lower triangle including the diagonal,
  ``2/(T(T+1)) sum_{i>=j} C[i][j]``.
* **BC** = ``1/(T-1) sum_{i<T} (C[T][i] - C[i][i])`` and **FC** = ``1/(T-1) sum_{i>=2} (C[i][i-1] - C[i][i])``
  (the authors' backward / forward compatibility; 0 when T = 1).

Retrieval accuracy here (a choice: the authors' code uses pair verification with a tuned distance
threshold on a face-verification-style pair list): top-1 nearest neighbour by cosine similarity over one
labelled set used as query and as gallery, each query's own gallery entry left out; a hit when the
neighbour's label is the query's.  Pure functions on tensors and nested lists; nothing here syncs more
than once per call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def retrieval_accuracy(query: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor,
                       exclude_self: bool = True, chunk: int = 1024) -> float:
    """Top-1 cosine nearest-neighbour accuracy of ``query`` rows against ``gallery`` rows (same samples,
    same order, so row ``k`` of each is sample ``k``; with ``exclude_self`` sample ``k`` is not its own
    neighbour)."""
    if len(query) != len(gallery) or len(query) != len(labels):
        raise ValueError("query, gallery and labels must describe the same samples")
    q, g = F.normalize(query.float(), dim=1), F.normalize(gallery.float(), dim=1)
    hits = torch.zeros((), dtype=torch.long, device=q.device)
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ g.t()
        if exclude_self:
            r = torch.arange(s, min(s + chunk, len(q)), device=q.device)
            sim[r - s, r] = float("-inf")
        hits += (labels[sim.argmax(1)] == labels[s:s + chunk]).sum()
    return hits.item() / max(1, len(q))


def compatibility_row(features: list[torch.Tensor], labels: torch.Tensor) -> list[float]:
    """Row ``i = len(features) - 1`` of C: the newest model's query features against every model's gallery."""
    q = features[-1]
    return [retrieval_accuracy(q, g, labels) for g in features]


def compatibility_matrix(features: list[torch.Tensor], labels: torch.Tensor) -> list[list]:
    """The full T x T matrix from the features of models 0..T-1 (None above the diagonal)."""
    T = len(features)
    return [compatibility_row(features[:i + 1], labels) + [None] * (T - i - 1) for i in range(T)]


def square(rows: list[list]) -> list[list]:
    """Rows of growing length (as logged, row i has i+1 entries) padded with None to a square matrix."""
    T = len(rows)
    return [list(r[:i + 1]) + [None] * (T - i - 1) for i, r in enumerate(rows)]


def empirical_compatibility(C: list[list]) -> list[list]:
    """``ok[i][j] = C[i][j] >= C[j][j]`` for j < i, None elsewhere."""
    T = len(C)
    return [[(C[i][j] >= C[j][j]) if j < i else None for j in range(T)] for i in range(T)]


def average_compatibility(C: list[list]) -> float:
    T = len(C)
    pairs = T * (T - 1) // 2
    if pairs == 0:
        return 1.0
    return sum(C[i][j] >= C[j][j] for i in range(T) for j in range(i)) / pairs


def average_multimodel_accuracy(C: list[list]) -> float:
    T = len(C)
    return sum(C[i][j] for i in range(T) for j in range(i + 1)) / (T * (T + 1) / 2) if T else 0.0


def backward_compatibility(C: list[list]) -> float:
    T = len(C)
    return sum(C[T - 1][i] - C[i][i] for i in range(T - 1)) / (T - 1) if T > 1 else 0.0


def forward_compatibility(C: list[list]) -> float:
    T = len(C)
    return sum(C[i][i - 1] - C[i][i] for i in range(1, T)) / (T - 1) if T > 1 else 0.0


def compatibility_metrics(rows: list[list]) -> dict:
    """Everything a result records: ``compatibility`` (the square matrix C), ``compatible`` (the
    criterion per pair), ``ac``, ``am``, ``bc``, ``fc``."""
    C = square(rows)
    return {"compatibility": C, "compatible": empirical_compatibility(C), "ac": average_compatibility(C),
            "am": average_multimodel_accuracy(C), "bc": backward_compatibility(C), "fc": forward_compatibility(C)}
