"""Domain- and data-incremental scenarios: generated domains (rotated or permuted images), a dataset's own domains,
and disjoint stratified shards of one dataset."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from cl.core.registry import ConfigError, unknown
from cl.core.streams import Experience, Scenario


DOMAIN_SHIFTS = ("rotate", "permute")


def _renumber(order: Sequence[int], *ys: torch.Tensor):
    remap = torch.full((max(order) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(list(order))] = torch.arange(len(order))
    return [remap[y.long()] for y in ys]


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate uint8 ``(N, C, H, W)`` images by ``degrees`` (bilinear, zero fill), returning uint8."""
    if degrees % 360 == 0:
        return x.clone()
    import torch.nn.functional as F

    th = math.radians(degrees)
    A = torch.tensor([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0]])
    out = torch.empty_like(x)
    for i in range(0, len(x), 4096):
        xb = x[i:i + 4096].float()
        grid = F.affine_grid(A.expand(len(xb), 2, 3), list(xb.shape), align_corners=False)
        out[i:i + 4096] = F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False).round_().clamp_(0, 255).to(x.dtype)
    return out


def permute_pixels(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Apply one fixed pixel permutation (over H x W, shared by the channels)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


def generated_domains(name: str, xtr, ytr, xte, yte, n_tasks: int, shift: str, order: Sequence[int],
                      seed: int = 0, max_angle: float = 180.0) -> Scenario:
    """Domain-incremental by a generated input shift: every task has all classes (all images),
    task ``t`` rotated by ``t * max_angle / n_tasks`` degrees, or pixel-permuted (task 0 unpermuted)."""
    if shift not in DOMAIN_SHIFTS:
        raise unknown("domain_shift", shift, DOMAIN_SHIFTS)
    if xtr.dim() != 4:
        raise ConfigError(f"{name}: domain_shift={shift} needs images (N, C, H, W), got shape {tuple(xtr.shape)}")
    ytr_r, yte_r = _renumber(order, ytr, yte)
    g = torch.Generator().manual_seed(seed)
    exps, params = [], []
    hw = xtr.shape[2] * xtr.shape[3]
    for t in range(n_tasks):
        if shift == "rotate":
            ang = t * max_angle / n_tasks
            f = lambda x, a=ang: rotate_images(x, a)  # noqa: E731
            params.append(ang)
        else:
            perm = torch.arange(hw) if t == 0 else torch.randperm(hw, generator=g)
            f = lambda x, p=perm: permute_pixels(x, p)  # noqa: E731
            params.append(t)
        exps.append(Experience(f(xtr), ytr_r.clone(), f(xte), yte_r.clone(), list(range(len(order))), None, index=t,
                               train_t=torch.full((len(ytr),), t, dtype=torch.long),
                               test_t=torch.full((len(yte),), t, dtype=torch.long)))
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(xtr.shape[1:]),
                    class_order=list(order), setting="domain", meta={"domain_shift": shift, "domain_params": params})


def domain_incremental(name: str, domains: Sequence[tuple], domain_names: Sequence[str] | None = None,
                       class_names=None, order: Sequence[int] | None = None, **kw) -> Scenario:
    """Domain-incremental from a dataset's own domains: ``domains[t] = (xtr, ytr, xte, yte)`` with a shared
    label space; task ``t`` is domain ``t``."""
    present = sorted(set().union(*[set(torch.unique(d[1]).tolist()) for d in domains]))
    order = list(order) if order is not None else present
    exps = []
    for t, (xtr, ytr, xte, yte) in enumerate(domains):
        ytr_r, yte_r = _renumber(order, ytr, yte)
        exps.append(Experience(xtr, ytr_r, xte, yte_r, sorted(torch.unique(ytr_r).tolist()), None, index=t,
                               train_t=torch.full((len(ytr),), t, dtype=torch.long),
                               test_t=torch.full((len(yte),), t, dtype=torch.long)))
    names = [class_names[c] for c in order] if class_names is not None else None
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(domains[0][0].shape[1:]),
                    class_order=order, class_names=names, setting="domain",
                    meta={"domains": list(domain_names) if domain_names else None}, **kw)


def _shards(y: torch.Tensor, n: int, g: torch.Generator) -> list[torch.Tensor]:
    """Stratified random split of the indices of ``y`` into ``n`` near-equal shards."""
    parts = [[] for _ in range(n)]
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for k, chunk in enumerate(torch.tensor_split(idx, n)):
            parts[k].append(chunk)
    return [torch.cat(p).sort().values for p in parts]


def data_incremental(name: str, xtr, ytr, xte, yte, n_tasks: int, order: Sequence[int], seed: int = 0) -> Scenario:
    """Data-incremental: every task has all classes and new instances (disjoint stratified shards of the
    training set); the test set is split the same way, so the mean over tasks is the full test accuracy."""
    smallest = int(torch.bincount(ytr)[torch.unique(ytr)].min())
    if n_tasks > smallest:
        raise ConfigError(f"{name}: n_tasks={n_tasks} exceeds the {smallest} training samples of the "
                              f"smallest class (data-incremental shards need one per class)")
    ytr_r, yte_r = _renumber(order, ytr, yte)
    g = torch.Generator().manual_seed(seed)
    tr, te = _shards(ytr_r, n_tasks, g), _shards(yte_r, n_tasks, g)
    exps = [Experience(xtr[a], ytr_r[a], xte[b], yte_r[b], sorted(torch.unique(ytr_r[a]).tolist()), None, index=t)
            for t, (a, b) in enumerate(zip(tr, te))]
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(xtr.shape[1:]),
                    class_order=list(order), setting="data")
