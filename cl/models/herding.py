"""Herding selection of exemplars (Rebuffi et al., iCaRL, CVPR 2017, Algorithm 4) and the nearest-mean-of-
exemplars classifier (Algorithm 1), as pure functions.

``herding(features, m)``: features are L2-normalised first (``normalize=True``, as in the authors' code and
Mammoth's ``fill_buffer(normalize_features=True)``); mu = their mean; step k picks the not-yet-chosen sample
p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||. Selection is without replacement (the authors'
Theano code may revisit a sample and keeps going until m distinct ones; Mammoth and PyCIL exclude chosen
samples, which is what we do). The returned order is the priority order: the first m' indices are the
exemplar set for a smaller budget m' (iCaRL's ReduceExemplarSet keeps a prefix).

``class_means(features, labels, classes)``: per class, the mean of the L2-normalised features, renormalised
(the authors' code renormalises mu_y; no flipped copies are averaged in here).
``nme_logits(features, means)``: minus the squared Euclidean distance of the normalised features to each
mean, so argmax is the nearest mean; classes without a mean (rows of NaN) get -inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def herding(features: torch.Tensor, m: int, normalize: bool = True) -> torch.Tensor:
    f = features.float()
    if normalize:
        f = F.normalize(f, dim=1)
    n = len(f)
    m = min(int(m), n)
    mu = f.mean(0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=f.device)
    order = []
    for k in range(1, m + 1):
        cost = (mu[None] - (running[None] + f) / k).norm(dim=1)
        cost = cost.masked_fill(taken, float("inf"))
        i = int(cost.argmin())
        order.append(i)
        taken[i] = True
        running += f[i]
    return torch.tensor(order, dtype=torch.long, device=features.device)


@torch.no_grad()
def class_means(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[n_classes, d]: normalised mean of normalised features per class; NaN rows for absent classes."""
    f = F.normalize(features.float(), dim=1)
    means = torch.full((n_classes, f.shape[1]), float("nan"), device=f.device)
    for c in labels.unique().tolist():
        means[c] = F.normalize(f[labels == c].mean(0), dim=0)
    return means


def nme_logits(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    f = F.normalize(features.float(), dim=1)
    d = (f[:, None, :] - means[None]).pow(2).sum(2)
    return (-d).nan_to_num(nan=float("-inf"))
