"""Scores for online replay retrieval and selection: interference under a virtual step (MIR), KNN-Shapley
values (ASER), class-balanced subsampling of a buffer's slots.

* :func:`virtual_step` / :func:`loss_increase` -- MIR (Aljundi et al., NeurIPS 2019): the parameters after
  one plain SGD step ``theta' = theta - lr * g`` along the gradients already in ``p.grad``, and each
  sample's cross-entropy after that step minus before it, both with the model in its current mode. The
  forward passes use copies of the model's buffers (BatchNorm running statistics, the head's seen-class
  mask), so scoring leaves the model exactly as it was.
* :func:`knn_shapley` -- the exact Shapley value of every candidate (training) point for the utility of a
  K-nearest-neighbour classifier on each evaluation point (Jia et al., "Efficient task-specific data
  valuation for nearest neighbor algorithms", VLDB 2019, Theorem 1): with the candidates sorted by distance
  to the evaluation point (nearest first, ``a_1 .. a_N``) and ``m_i = 1[y_{a_i} = y_eval]``,
  ``s_{a_N} = m_N * min(K, N) / (N K)`` and ``s_{a_i} = s_{a_{i+1}} + (m_i - m_{i+1}) min(K, i) / (i K)``.
  The utility is ``v(S) = (1/K) sum over the min(K, |S|) nearest points of S of m``. For ``N >= K`` the
  last term is Jia's ``m_N / N``; the ``min(K, N)`` keeps it exact for ``N < K`` too (Mai et al.'s
  ``aser_utils.py`` writes ``m_N / N``, exact only for ``N >= K``). Distances are Euclidean.
* :func:`group_grads` -- the flat gradient of the mean cross-entropy of each of ``S`` equal-sized groups of
  samples (GSS's per-sample and per-subset gradients), in one vectorised pass (``torch.func.vmap`` of
  ``grad`` over the groups, the model's buffers copied), or one backward pass per group (same values; the
  fallback for a model ``vmap`` cannot trace, and the faster path on a CPU).
* :func:`class_balanced_index` -- up to ``n`` uniformly drawn slots of every class present (Mai et al.'s
  ``ClassBalancedRandomSampling.sample``), optionally excluding some slots.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def virtual_step(model: nn.Module, lr: float) -> dict[str, torch.Tensor]:
    """``{name: p - lr * p.grad}`` for every trainable parameter with a gradient (others unchanged)."""
    out = {}
    for name, p in model.named_parameters():
        out[name] = (p - lr * p.grad if p.grad is not None else p).detach()
    return out


@torch.no_grad()
def per_sample_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict | None = None,
                  copy_buffers: bool = True) -> torch.Tensor:
    """Cross-entropy of every sample under ``params`` (default: the model's own), the model's buffers copied.
    ``copy_buffers=False`` (the model's own parameters only) is a plain forward of the live model: in training
    mode its BatchNorm running statistics move."""
    if not copy_buffers:
        if params is not None:
            raise ValueError("per_sample_ce: copy_buffers=False runs the live model, so params must be None")
        logits = model(x)
    else:
        ps = params if params is not None else {n: p.detach() for n, p in model.named_parameters()}
        bufs = {n: b.clone() for n, b in model.named_buffers()}
        logits = functional_call(model, (ps, bufs), (x,))
    return F.cross_entropy(logits.float(), y, reduction="none")


def loss_increase(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params_after: dict,
                  pre_moves_buffers: bool = False) -> torch.Tensor:
    """Per-sample loss under ``params_after`` minus the loss under the current parameters (MIR's score).
    The pass under ``params_after`` runs on copies of the buffers (the codes' deep-copied model);
    ``pre_moves_buffers`` runs the pass under the current parameters on the live model, whose BatchNorm
    running statistics then move with ``x`` (both MIR codes' ``model(bx)``), and first, as in the codes (the
    order matters only for a model that draws random numbers in its forward pass, such as dropout)."""
    if pre_moves_buffers:
        pre = per_sample_ce(model, x, y, copy_buffers=False)
        return per_sample_ce(model, x, y, params_after) - pre
    return per_sample_ce(model, x, y, params_after) - per_sample_ce(model, x, y)


def knn_shapley(eval_feat: torch.Tensor, eval_y: torch.Tensor, cand_feat: torch.Tensor, cand_y: torch.Tensor,
                k: int) -> torch.Tensor:
    """KNN-Shapley value of each candidate for each evaluation point: an ``(n_eval, n_cand)`` matrix."""
    n_eval, n = eval_feat.shape[0], cand_feat.shape[0]
    if n == 0 or n_eval == 0:
        return torch.zeros(n_eval, n, device=eval_feat.device)
    d = torch.cdist(eval_feat.float(), cand_feat.float())
    order = d.argsort(dim=1)  # nearest first
    m = (cand_y[order] == eval_y[:, None]).float()
    nxt = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)
    i = torch.arange(1, n + 1, device=m.device, dtype=torch.float)
    factor = torch.minimum(i, torch.full_like(i, k)) / (i * k)
    factor[-1] = min(k, n) / (n * k)  # the farthest point: m_N min(K, N) / (N K)
    s_sorted = ((m - nxt) * factor).flip(1).cumsum(1).flip(1)
    return torch.zeros_like(s_sorted).scatter_(1, order, s_sorted)


def class_balanced_index(y: torch.Tensor, n_per_class: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Slots (indices into ``y``) of up to ``n_per_class`` uniformly drawn samples of every class, classes in
    increasing order; slots where ``exclude`` is True are never drawn. Uses the global torch RNG."""
    idx = torch.arange(len(y), device=y.device)
    if exclude is not None:
        idx = idx[~exclude]
    if len(idx) == 0 or n_per_class <= 0:
        return idx[:0]
    idx = idx[torch.randperm(len(idx), device=y.device)]
    idx = idx[torch.sort(y[idx], stable=True).indices]  # grouped by class, random within a class
    _, counts = torch.unique_consecutive(y[idx], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(idx), device=y.device) - starts.repeat_interleave(counts)
    return idx[rank < n_per_class]


_NO_VMAP = weakref.WeakSet()  # models vmap failed on: they use the loop


def _loop_group_grads(model, names, xs, ys):
    params = [dict(model.named_parameters())[n] for n in names]
    rows = []
    for x, y in zip(xs, ys):
        with torch.enable_grad():
            loss = F.cross_entropy(model(x).float(), y)
            gs = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params)]))
    return torch.stack(rows)


def group_grads(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, vectorize: bool = True) -> torch.Tensor:
    """``(S, P)``: row s is the gradient of ``CE_mean(model(xs[s]), ys[s])`` w.r.t. the trainable parameters
    (in ``named_parameters`` order, as ``projection.grads_of``); ``xs`` is ``(S, B, ...)``, ``ys`` ``(S, B)``.
    The model's mode is used as it is (GSS: eval); ``p.grad`` and the model's buffers are not touched.
    ``vectorize=False``: one backward pass per group (on a CPU about as fast; vmap pays off on GPUs)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if vectorize and model not in _NO_VMAP:
        frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        bufs = {n: b.clone() for n, b in model.named_buffers()}

        def loss(ps, x, y):
            out = functional_call(model, ({**ps, **frozen}, bufs), (x,))
            return F.cross_entropy(out.float(), y)

        try:
            with torch.enable_grad():
                gs = vmap(grad(loss), in_dims=(None, 0, 0))({n: dict(model.named_parameters())[n].detach()
                                                             for n in names}, xs, ys)
            return torch.cat([gs[n].reshape(len(xs), -1) for n in names], dim=1)
        except Exception:  # noqa: BLE001 - an op vmap cannot batch (in-place on inputs, data-dependent flow)
            _NO_VMAP.add(model)
    return _loop_group_grads(model, names, xs, ys)
