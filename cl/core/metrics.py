"""Continual-learning metrics as pure functions (methods.md section 11).

``R`` is the accuracy matrix: ``R[i][j]`` is the test accuracy on experience j
after training on experiences 0..i (T x T; rows may be partial for a run that
stopped early).  Accuracies are fractions in [0, 1].  Entries above the diagonal (j > i: experiences not
trained yet) are None (read as NaN) unless the run evaluated them (``protocol.eval_future`` or ``fwt``); the metrics
here read the diagonal and below only, except FWT, which needs R[i-1][i].

Convention (issue 13): ``avg_acc`` and ``avg_inc_acc`` are both means **over experiences** (every
experience counts once, whatever its test-set size), the literature's convention (Chaudhry et al.;
iCaRL's average incremental accuracy as SSIAT / APER compute it per task).  The sample-weighted versions,
the accuracy on the union of the seen test sets, are ``avg_acc_weighted`` and ``avg_inc_acc_weighted``
(given the test-set sizes).  Before issue 13 ``avg_inc_acc`` was the weighted one and ``avg_acc`` not.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _R(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D, got shape {R.shape}")
    return R


def average_accuracy(R, i: int | None = None, sizes: Sequence[int] | None = None) -> float:
    """A_i = mean_j<=i R[i, j] (Chaudhry et al.); i defaults to the last row.
    For a square matrix and the last row this is the mean of the final row.  With ``sizes`` (test-set
    sizes per experience): the sample-weighted mean, i.e. the accuracy on the union of the test sets."""
    R = _R(R)
    i = R.shape[0] - 1 if i is None else i
    row = R[i, : i + 1]
    if sizes is None:
        return float(row.mean())
    w = np.asarray(sizes[: i + 1], dtype=float)
    return float((row * w).sum() / w.sum()) if w.sum() else float(row.mean())


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
    return [float(np.nanmax(R[:k, j]) - R[k, j]) for j in range(k)]  # NaN: not evaluated (l < j)


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
    """Every task-based metric of a (possibly partial) accuracy matrix.  ``avg_acc`` and ``avg_inc_acc``
    are means over experiences; with ``sizes`` the sample-weighted ones are added as ``*_weighted``."""
    R = _R(R)
    out = {
        "avg_acc": average_accuracy(R),
        "avg_inc_acc": average_incremental_accuracy(R),
        "forgetting": average_forgetting(R),
        "forgetting_per_task": forgetting_per_task(R),
        "bwt": bwt(R),
    }
    if sizes is not None:
        out["avg_acc_weighted"] = average_accuracy(R, sizes=sizes)
        out["avg_inc_acc_weighted"] = average_incremental_accuracy(R, sizes)
    if random_init is not None:
        out["fwt"] = fwt(R, random_init)
    return out


# -- prediction collapse (issue 13) --------------------------------------------------------------

def prediction_collapse(counts, seen: int | None = None, threshold: float = 0.8) -> dict:
    """Summary of a histogram of predicted classes (``counts[c]`` = test samples predicted as c).

    Returns ``pred_top_class_share`` (share of the predictions that go to the most predicted class),
    ``pred_classes_used`` (classes predicted at least once) and ``prediction_collapsed``: True when one
    class takes at least ``threshold`` of the predictions while at least three classes have been seen
    (``seen``, default: the length of ``counts``) -- a model that answers one class for (nearly)
    everything, whatever its accuracy says.  The threshold is 0.8, not 0.5: a class-incremental model that
    forgot everything but its last two-class task spreads its answers over those two classes (about half
    each), which is forgetting, not collapse.  Empty counts give {}."""
    c = np.asarray(counts, dtype=float).ravel()
    total = c.sum()
    if total <= 0:
        return {}
    n_seen = len(c) if seen is None else int(seen)
    share = float(c.max() / total)
    return {"pred_top_class_share": share, "pred_classes_used": int((c > 0).sum()),
            "prediction_collapsed": bool(n_seen >= 3 and share >= threshold)}


# -- online-stream metrics (methods.md section 11b) ---------------------------------------------

def online_accuracy_curve(per_sample_correct, every: int, window: int | None = None) -> list[tuple[int, float]]:
    """Prequential accuracy after every ``every`` samples: [(samples seen, accuracy)], the
    cumulative accuracy, or with ``window`` the accuracy over the last ``window`` samples."""
    c = np.asarray(per_sample_correct, dtype=float)
    if every <= 0 or c.size == 0:
        return []
    cs = np.concatenate([[0.0], np.cumsum(c)])
    out = []
    for m in range(every, len(c) + 1, every):
        lo = 0 if window is None else max(0, m - window)
        out.append((m, float((cs[m] - cs[lo]) / (m - lo))))
    return out


def anytime_auc_samples(samples: Sequence[float], accuracies: Sequence[float]) -> float:
    """Area under the anytime accuracy-vs-samples curve divided by its length (Koh et al. 2022),
    for evaluation points that need not be evenly spaced: sum_k acc_k (s_k - s_{k-1}) / s_K with
    s_0 = 0 (each accuracy holds for the samples since the previous point).  With points every
    Delta-n samples this equals :func:`anytime_auc`, the mean of the accuracies."""
    s = np.asarray(samples, dtype=float)
    a = np.asarray(accuracies, dtype=float)
    if s.size == 0:
        return 0.0
    if s.size != a.size:
        raise ValueError(f"{s.size} sample counts for {a.size} accuracies")
    widths = np.diff(np.concatenate([[0.0], s]))
    if (widths < 0).any():
        raise ValueError("sample counts must be non-decreasing")
    return float((a * widths).sum() / s[-1]) if s[-1] > 0 else float(a.mean())


def _anytime_matrix(A) -> np.ndarray:
    """Rows: evaluation points; columns: tasks; None/NaN where a task has no seen test data yet."""
    rows = [[np.nan if v is None else float(v) for v in r] for r in A]
    if not rows:
        return np.zeros((0, 0))
    width = max(len(r) for r in rows)
    return np.array([r + [np.nan] * (width - len(r)) for r in rows], dtype=float)


def anytime_forgetting_per_task(A, k: int | None = None) -> list[float | None]:
    """Forgetting over the stream from the anytime accuracy matrix ``A`` (row = evaluation point,
    column = task): f_j = max over earlier points of A[l, j] minus A[k, j] (Chaudhry et al.'s
    definition with evaluation points in place of task ends).  None for a task evaluated at
    fewer than two points up to k.  ``k`` defaults to the last point."""
    A = _anytime_matrix(A)
    if A.size == 0:
        return []
    k = A.shape[0] - 1 if k is None else k
    out = []
    for j in range(A.shape[1]):
        prev = A[:k, j][~np.isnan(A[:k, j])]
        if prev.size == 0 or np.isnan(A[k, j]):
            out.append(None)
        else:
            out.append(float(prev.max() - A[k, j]))
    return out


def anytime_forgetting(A, k: int | None = None) -> float:
    """Mean of :func:`anytime_forgetting_per_task` over the tasks where it is defined (0.0 if none)."""
    f = [v for v in anytime_forgetting_per_task(A, k) if v is not None]
    return float(np.mean(f)) if f else 0.0


def anytime_forgetting_curve(A) -> list[float]:
    """Average forgetting at every evaluation point of the anytime matrix (forgetting over the stream)."""
    n = len(A)
    return [anytime_forgetting(A, k) for k in range(n)]


def near_future_pairs(n_batches: int, shift: int) -> list[tuple[int, int]]:
    """The near-future schedule (CLOC / Hammoud et al. 2023): at step s the model that has learned
    batches 0..s-1 predicts batch s + shift, then learns batch s.  Returns [(s, s + shift)] for the
    targets inside the stream; with shift >= 1 a target is never a batch already learned."""
    if shift < 0:
        raise ValueError(f"near-future shift must be >= 0, got {shift}")
    return [(s, s + shift) for s in range(max(0, n_batches - shift))]


def realtime_schedule(n_batches: int, cost: float, start: float = 0.0) -> list[bool]:
    """Real-time accounting (Ghunaim et al. 2023): batch g arrives at time g; a learner whose step
    costs ``cost`` stream intervals trains on a batch only if it is free when the batch arrives,
    then is busy until g + cost.  Batches arriving while it is busy are never trained on (they are
    still predicted).  cost <= 1 trains on every batch; an integer k trains on every k-th batch.
    ``start`` is the time the learner becomes free (to continue a schedule)."""
    free, out = start, []
    for g in range(n_batches):
        ok = g >= free - 1e-9
        out.append(ok)
        if ok:
            free = g + max(float(cost), 1.0)
    return out
