"""Task keys: k-means centroids of frozen features, one set per task (S-Prompts, CoLoR / S-LoRA).

After training task t, the features of t's training data from the *frozen* backbone
(no adapter, no prompt) are L2-normalised and clustered with k-means (k = 5 per task
by default); the centroids are stored as t's keys.  At test time a sample goes to the
task owning its nearest key (methods.md sections 5 and 6b):

    t_hat(x) = argmin_t min_j dist(normalize(phi_0(x)), c_{t,j})

``metric="l2"`` (default, the CoLoR description) or ``"l1"`` (the S-Prompts code sums
absolute differences).  Keys are plain tensors: ``state_dict()`` / ``load_state_dict()``
make them resumable.

Helpers used by the PEFT strategies:

* :func:`kmeans` -- seeded k-means++ initialisation and Lloyd iterations in torch.
* :func:`batched` -- apply a function to a tensor in chunks (feature extraction).
* :func:`grouped_apply` -- run each group of a batch (grouped by predicted task) with its
  own function and scatter the outputs back in batch order.
* :func:`identification_accuracy` -- fraction of correctly identified tasks.
* :func:`remember_preprocess` / :func:`model_preprocess` -- a strategy that builds its own model keeps
  the engine's batch transform (uint8 -> normalised float, resize; identity for token ids) so that it can
  featurise whole experiences itself (task keys, prototype statistics) exactly as the engine does.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cl.models.model import attach_preprocess, model_preprocess  # noqa: F401 (model_preprocess: re-exported)


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0, tol: float = 1e-6) -> torch.Tensor:
    """Centroids (min(k, n), d) of ``x`` (n, d): k-means++ init from a seeded generator, then Lloyd.

    Empty clusters are re-seeded with the point farthest from its centroid.  Runs on x's device
    in float32; deterministic for a given seed.
    """
    x = x.detach().float()
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means on an empty set of features")
    k = max(1, min(int(k), n))
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    first = int(torch.randint(n, (1,), generator=g))
    cent = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2.clamp_min(0).cpu()
        if float(p.sum()) <= 0:  # all remaining points coincide with centroids
            i = int(torch.randint(n, (1,), generator=g))
        else:
            i = int(torch.multinomial(p / p.sum(), 1, generator=g))
        cent.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = torch.stack(cent)
    for _ in range(iters):
        dist = torch.cdist(x, c)
        assign = dist.argmin(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        new = new / counts.clamp_min(1).unsqueeze(1)
        if bool(empty.any()):
            far = dist.gather(1, assign[:, None]).squeeze(1).argsort(descending=True)
            new[empty] = x[far[: int(empty.sum())]]
        shift = (new - c).norm(dim=1).max()
        c = new
        if float(shift) <= tol:
            break
    return c


class TaskKeys:
    """k-means keys per task on L2-normalised frozen features; nearest key gives the task."""

    def __init__(self, k: int = 5, metric: str = "l2", seed: int = 0, iters: int = 50):
        if metric not in ("l2", "l1", "cosine"):
            raise ValueError(f"task-key metric {metric!r}: choose l2, l1 or cosine")
        self.k, self.metric, self.seed, self.iters = k, metric, seed, iters
        self.keys: torch.Tensor | None = None  # (K, d)
        self.owner: torch.Tensor | None = None  # (K,) task id of each key

    @property
    def n_tasks(self) -> int:
        return 0 if self.owner is None else int(self.owner.max()) + 1

    def task_ids(self) -> list[int]:
        return [] if self.owner is None else sorted(set(self.owner.tolist()))

    @staticmethod
    def normalize(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.detach().float().flatten(1), dim=1)

    def add(self, task: int, feats: torch.Tensor) -> torch.Tensor:
        """Cluster task ``task``'s frozen features and store the centroids (replacing older keys of it)."""
        c = kmeans(self.normalize(feats), self.k, self.iters, seed=self.seed + 7919 * int(task))
        own = torch.full((len(c),), int(task), dtype=torch.long, device=c.device)
        if self.keys is None:
            self.keys, self.owner = c, own
        else:
            keep = self.owner != int(task)
            self.keys = torch.cat([self.keys[keep], c.to(self.keys.device)])
            self.owner = torch.cat([self.owner[keep], own.to(self.owner.device)])
        return c

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, K) distance of each normalised feature to each key."""
        q = self.normalize(feats).to(self.keys.device)
        if self.metric == "l2":
            return torch.cdist(q, self.keys)
        if self.metric == "l1":
            return torch.cdist(q, self.keys, p=1)
        return 1 - q @ F.normalize(self.keys, dim=1).t()

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        """Task id (n,) of the nearest key; requires at least one task's keys."""
        if self.keys is None:
            raise RuntimeError("no task keys yet: call add() after the first task")
        return self.owner[self.distances(feats).argmin(1)]

    def state_dict(self) -> dict:
        return {"keys": self.keys, "owner": self.owner}

    def load_state_dict(self, state: dict) -> None:
        self.keys, self.owner = state.get("keys"), state.get("owner")


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256,
            preprocess: Callable | None = None) -> torch.Tensor:
    """``torch.cat([fn(preprocess(x[i:i+bs])) ...])`` under no_grad."""
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        outs.append(fn(preprocess(xb) if preprocess is not None else xb))
    return torch.cat(outs) if outs else torch.empty(0)


def grouped_apply(x: torch.Tensor, groups: torch.Tensor, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``fn(g, x[groups == g])`` for each distinct group and put the outputs back in batch order.

    Used at test time to run each predicted task's samples with that task's adapter or prompt
    (one host read for the distinct groups; evaluation only)."""
    out = None
    for g in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == g).flatten()
        o = fn(int(g), x[idx])
        if out is None:
            out = o.new_full((len(x),) + tuple(o.shape[1:]), float("-inf") if o.is_floating_point() else 0)
        out[idx] = o.to(out.dtype)
    return out


def identification_accuracy(pred: torch.Tensor, true: torch.Tensor) -> float:
    return float((pred.to(true.device) == true).float().mean()) if len(true) else float("nan")


def remember_preprocess(model, scenario) -> None:
    """Store the scenario's batch-transform factory on ``model`` (call from ``build_model``).

    The engine attaches the model's preprocessing itself (:func:`cl.models.model.attach_preprocess`)
    after ``build_model``; this keeps models built outside the engine (tests, notebooks) working."""
    attach_preprocess(model, lambda device, _f=scenario.preprocess_fn: _f(device))


def _is_tokens(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 2 and x.dtype in (torch.long, torch.int32, torch.int64)


def trim_padding(x: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Token ids: drop the trailing columns that are padding in every row (one host read); others pass through.

    Text datasets pad to their longest text; a batch of short utterances then pays for the longest
    one.  Trimming leaves the encoder's output unchanged (padding is masked) and saves most of the work."""
    if not _is_tokens(x) or x.shape[1] <= 1:
        return x
    nz = (x != pad_id).any(0).nonzero()
    n = int(nz.max()) + 1 if len(nz) else 1
    return x[:, :n] if n < x.shape[1] else x


def by_length(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int = 128,
              pad_id: int = 0) -> torch.Tensor:
    """``fn(x)``, but token-id batches run in chunks of similar length, each trimmed of its padding, and
    the outputs come back in the original order.  Non-token inputs go straight to ``fn``."""
    if not _is_tokens(x):
        return fn(x)
    if len(x) <= chunk:
        return fn(trim_padding(x, pad_id))
    order = (x != pad_id).sum(1).argsort()
    outs = [fn(trim_padding(x[order[i:i + chunk]], pad_id)) for i in range(0, len(x), chunk)]
    out = torch.cat(outs)
    res = torch.empty_like(out)
    res[order] = out
    return res


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode (call after ``model.train()``).

    A frozen pretrained CNN under PEFT must not update its running statistics while training: they are
    buffers shared by every task's adapter and by the frozen task keys, so letting them drift would
    silently change old tasks' features (catastrophic forgetting through the back door)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
            m.eval()
