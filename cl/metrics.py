"""Continual-learning metrics as pure functions (methods.md section 11).

``R`` is the accuracy matrix: ``R[i][j]`` is the test accuracy on experience j
after training on experiences 0..i (T x T; rows may be partial for a run that
stopped early).  Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _R(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D, got shape {R.shape}")
    return R


def average_accuracy(R, i: int | None = None) -> float:
    """A_i = mean_j<=i R[i, j] (Chaudhry et al.); i defaults to the last row.
    For a square matrix and the last row this is the mean of the final row."""
    R = _R(R)
    i = R.shape[0] - 1 if i is None else i
    return float(R[i, : i + 1].mean())


def average_incremental_accuracy(R, sizes: Sequence[int] | None = None) -> float:
    """mean over t of the accuracy on all experiences seen up to t, after t (iCaRL's A_avg).
    With ``sizes`` (test-set sizes per experience) the accuracy on the seen experiences is
    the sample-weighted one (accuracy on the union); otherwise the plain mean."""
    R = _R(R)
    vals = []
    for t in range(R.shape[0]):
        row = R[t, : t + 1]
        if sizes is None:
            vals.append(row.mean())
        else:
            w = np.asarray(sizes[: t + 1], dtype=float)
            vals.append(float((row * w).sum() / w.sum()))
    return float(np.mean(vals))


def forgetting_per_task(R, k: int | None = None) -> list[float]:
    """f_j^k = max_{l<k} R[l, j] - R[k, j] for j < k (Chaudhry et al. 2018), k defaults to the last row."""
    R = _R(R)
    k = R.shape[0] - 1 if k is None else k
    return [float(R[:k, j].max() - R[k, j]) for j in range(k)]


def average_forgetting(R, k: int | None = None) -> float:
    """F_k = mean_j<k f_j^k; 0.0 after the first experience."""
    f = forgetting_per_task(R, k)
    return float(np.mean(f)) if f else 0.0


def bwt(R) -> float:
    """Backward transfer (GEM): mean_{i<T} (R[T,i] - R[i,i]); negative means forgetting."""
    R = _R(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, i] - R[i, i] for i in range(T - 1)]))


def fwt(R, b: Sequence[float]) -> float:
    """Forward transfer (GEM): mean_{i>=1} (R[i-1,i] - b_i), with b the accuracy of the
    random-init model on each experience."""
    R = _R(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[i - 1, i] - b[i] for i in range(1, T)]))


def intransigence(R, joint_diag: Sequence[float]) -> list[float]:
    """I_k = a*_k - R[k,k], with a*_k the joint reference's accuracy on task k."""
    R = _R(R)
    return [float(joint_diag[k] - R[k, k]) for k in range(R.shape[0])]


def online_accuracy(correct: Sequence[float] | np.ndarray, counts: Sequence[int] | None = None) -> float:
    """Prequential accuracy: total correct over total predicted (per-batch correct counts and sizes,
    or per-sample 0/1 values when counts is None)."""
    c = np.asarray(correct, dtype=float)
    n = np.ones_like(c) if counts is None else np.asarray(counts, dtype=float)
    return float(c.sum() / n.sum()) if n.sum() else 0.0


def windowed_online_accuracy(per_sample_correct, window: int) -> np.ndarray:
    """Online accuracy over the last ``window`` samples, at every sample (shorter at the start)."""
    c = np.asarray(per_sample_correct, dtype=float)
    cs = np.concatenate([[0.0], np.cumsum(c)])
    idx = np.arange(1, len(c) + 1)
    lo = np.maximum(0, idx - window)
    return (cs[idx] - cs[lo]) / (idx - lo)


def anytime_auc(accuracies: Sequence[float]) -> float:
    """A_auc (Koh et al. 2022): mean of the anytime accuracies taken every k samples."""
    a = np.asarray(accuracies, dtype=float)
    return float(a.mean()) if a.size else 0.0


def summary(R, sizes=None, random_init=None) -> dict:
    """Every task-based metric of a (possibly partial) accuracy matrix."""
    R = _R(R)
    out = {
        "avg_acc": average_accuracy(R),
        "avg_inc_acc": average_incremental_accuracy(R, sizes),
        "forgetting": average_forgetting(R),
        "forgetting_per_task": forgetting_per_task(R),
        "bwt": bwt(R),
    }
    if random_init is not None:
        out["fwt"] = fwt(R, random_init)
    return out
