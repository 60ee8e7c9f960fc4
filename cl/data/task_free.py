"""Task-free online streams made from a scenario: hidden boundaries, blurry boundaries (i-Blurry, Si-Blurry) and
gradual boundaries (see :mod:`cl.data.settings` for the definitions)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from cl.core.registry import ConfigError
from cl.core.streams import Experience, Scenario



def hide_boundaries(sc: Scenario) -> Scenario:
    """Task-free: no task ids anywhere; experiences stay as evaluation points."""
    for e in sc.experiences:
        e.task_id, e.train_t, e.test_t = None, None, None
    sc.boundaries = "hidden"
    if sc.setting == "task":
        sc.setting = "class"
    return sc


def stochastic_task_sizes(n_classes: int, n_tasks: int, seed: int | None) -> list[int]:
    """Si-Blurry: a random partition of the classes into ``n_tasks`` non-empty tasks."""
    if n_tasks > n_classes:
        raise ConfigError(f"n_tasks={n_tasks} exceeds the {n_classes} classes")
    g = np.random.RandomState(0 if seed is None else seed)
    cuts = sorted(g.choice(np.arange(1, n_classes), n_tasks - 1, replace=False).tolist()) if n_tasks > 1 else []
    edges = [0] + cuts + [n_classes]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def blurry(sc: Scenario, disjoint_share: float, blurry_share: float, seed: int | None = 0) -> Scenario:
    """i-Blurry-N-M over a class-split scenario (N = 100 x disjoint_share, M = 100 x blurry_share).

    A class is *disjoint* (all its samples in its home task) or *blurry* (``blurry_share`` of its training
    samples, drawn at random, move to the other tasks, spread uniformly).  Test data stays with the home task.
    ``train_t`` holds each sample's home task; ``meta["blurry_classes"]`` the blurry labels.
    """
    T = len(sc)
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    labels = list(range(sc.n_classes))
    home = torch.full((sc.n_classes,), -1, dtype=torch.long)
    for t, e in enumerate(sc.experiences):
        home[torch.tensor(e.classes, dtype=torch.long)] = t
    n_disjoint = int(round(disjoint_share * len(labels)))
    perm = torch.randperm(len(labels), generator=g).tolist()
    blurry_cls = sorted(labels[i] for i in perm[n_disjoint:])
    xs = [[e.train_x] for e in sc.experiences]
    ys = [[e.train_y] for e in sc.experiences]
    keep = [torch.ones(len(e.train_y), dtype=torch.bool) for e in sc.experiences]
    if T > 1:
        for c in blurry_cls:
            t = int(home[c])
            e = sc.experiences[t]
            idx = torch.nonzero(e.train_y == c).flatten()
            k = int(round(blurry_share * len(idx)))
            if k == 0:
                continue
            moved = idx[torch.randperm(len(idx), generator=g)[:k]]
            keep[t][moved] = False
            others = [u for u in range(T) if u != t]
            dest = torch.tensor(others)[torch.randint(len(others), (k,), generator=g)]
            for u in others:
                sel = moved[dest == u]
                if len(sel):
                    xs[u].append(e.train_x[sel])
                    ys[u].append(e.train_y[sel])
    new = []
    for t, e in enumerate(sc.experiences):
        xs[t][0], ys[t][0] = e.train_x[keep[t]], e.train_y[keep[t]]
        x, y = torch.cat(xs[t]), torch.cat(ys[t])
        p = torch.randperm(len(y), generator=g)
        x, y = x[p], y[p]
        new.append(Experience(x, y, e.test_x, e.test_y, sorted(torch.unique(y).tolist()), None, index=t,
                              train_t=home[y], test_t=home[e.test_y]))
    sc.experiences = new
    sc.boundaries = "blurry"
    sc.setting = "class"  # task ids are not given to the learner in a blurry stream
    sc.meta.update(blurry_classes=blurry_cls, disjoint_share=disjoint_share, blurry_share=blurry_share,
                   home_classes=[[c for c in range(sc.n_classes) if int(home[c]) == t] for t in range(T)])
    return sc


def _gradual_windows(lengths: Sequence[int], width: float) -> tuple[np.ndarray, np.ndarray]:
    total = int(sum(lengths))
    w = np.zeros(total)
    win = np.full(total, -1, dtype=np.int64)
    edges = np.cumsum(lengths)
    for t in range(len(lengths) - 1):
        b = edges[t]
        W = width * min(lengths[t], lengths[t + 1])
        if W <= 0:
            continue
        lo, hi = b - W / 2, b + W / 2
        pos = np.arange(max(0, int(math.ceil(lo - 0.5))), min(total, int(math.floor(hi - 0.5)) + 1))
        w[pos] = np.clip((pos + 0.5 - lo) / W, 0, 1)
        win[pos] = t
    return w, win


def gradual_weights(lengths: Sequence[int], width: float) -> np.ndarray:
    """Expected weight of the *next* task at each stream position: 0 outside the windows, rising linearly
    from 0 to 1 across a window of ``width`` x (the shorter neighbour's length) centred on each boundary."""
    return _gradual_windows(lengths, width)[0]


def gradual(sc: Scenario, width: float, seed: int | None = 0) -> Scenario:
    """Gradual boundaries: linear mixing of consecutive tasks around each boundary (see module doc)."""
    T = len(sc)
    rs = np.random.RandomState(0 if seed is None else int(seed))
    lengths = [len(e) for e in sc.experiences]
    total = sum(lengths)
    edges = np.concatenate([[0], np.cumsum(lengths)])
    seg_of = np.repeat(np.arange(T), lengths)
    queues = [rs.permutation(n) for n in lengths]
    heads = [0] * T
    weights, win = _gradual_windows(lengths, width)
    draws = rs.rand(total)
    src_task = np.empty(total, dtype=np.int64)
    src_idx = np.empty(total, dtype=np.int64)
    low = 0  # the earliest task with samples left
    for p in range(total):
        a = int(win[p])
        if a >= 0:
            t = a + 1 if draws[p] < weights[p] else a
        else:
            t = int(seg_of[p])
        while low < T and heads[low] >= lengths[low]:
            low += 1
        if low < t and (a < 0 or low < a):
            t = low  # leftovers of an earlier task come first
        if heads[t] >= lengths[t]:
            u = t + 1
            while u < T and heads[u] >= lengths[u]:
                u += 1
            t = u if u < T else low
        src_task[p], src_idx[p] = t, queues[t][heads[t]]
        heads[t] += 1
    new = []
    for t, e in enumerate(sc.experiences):
        pos = np.arange(edges[t], edges[t + 1])
        tx = torch.from_numpy(src_task[pos])
        ix = torch.from_numpy(src_idx[pos])
        xs = torch.empty((len(pos),) + tuple(e.train_x.shape[1:]), dtype=e.train_x.dtype)
        ys = torch.empty(len(pos), dtype=e.train_y.dtype)
        for u in torch.unique(tx).tolist():
            m = tx == u
            xs[m] = sc.experiences[u].train_x[ix[m]]
            ys[m] = sc.experiences[u].train_y[ix[m]]
        new.append(Experience(xs, ys, e.test_x, e.test_y, sorted(torch.unique(ys).tolist()), None, index=t,
                              train_t=tx.clone(), test_t=None,
                              train_time=torch.from_numpy(pos.astype(np.float64))))
    sc.experiences = new
    sc.boundaries = "gradual"
    if sc.setting == "task":  # no task ids in a task-free stream; domain / data settings stay what they are
        sc.setting = "class"
    sc.meta.update(mixing=weights.tolist() if total <= 200_000 else None, gradual_width=width, ordered=True)
    return sc
