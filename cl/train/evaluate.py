"""Evaluation: accuracy of the current model on experiences' test data, with one host read at the end.

Text (token-id) test sets are evaluated in length buckets, each batch trimmed of the padding columns that
all its rows share (``by_length=True``, set by the engine for ``modality="text"``; :func:`length_batches`).
A dataset pads every utterance to its longest one, so a batch of 512 short utterances would otherwise pay
for the longest; the padding is masked, so each sample's logits are those of the untrimmed batch up to
float rounding.  The lengths are read once per experience (one host read), not per batch.  Only the samples' grouping
into batches changes, which matters only to a ``predict`` that looks across the batch (L2P's optional
``batchwise_prompt`` majority vote).
"""
from __future__ import annotations

import torch

from cl.models.text import PAD_ID


#: the fixed cost of one batch, in padded tokens: CPU kernels cost by the token, a GPU call mostly by the launch
CALL_COST_TOKENS = {"cpu": 16, "cuda": 4096}


def length_batches(x: torch.Tensor, batch_size: int, call_cost: int | None = None):
    """(order, [(start, stop, width)]) for token ids ``x``: the samples sorted by width (last non-padding
    column + 1, stable) and cut into batches of at most ``batch_size``, each trimmed to its widest sample.

    The cut minimises padded tokens + ``call_cost`` per batch exactly, by dynamic programming over the
    distinct widths (at most the dataset's padded length).  Host ints from one host read."""
    cols = torch.arange(1, x.shape[1] + 1, device=x.device)
    last = torch.where(x != PAD_ID, cols, 0).amax(1).clamp_min(1)
    order = torch.argsort(last, stable=True)
    widths, counts = torch.unique_consecutive(last[order], return_counts=True)
    widths, counts = widths.cpu().tolist(), counts.cpu().tolist()
    cost = CALL_COST_TOKENS.get(x.device.type, 16) if call_cost is None else call_cost
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    best, cut = [0.0] + [float("inf")] * len(widths), [0] * (len(widths) + 1)
    for k in range(1, len(widths) + 1):  # groups j..k-1 in one bucket of width widths[k-1]
        for j in range(k):
            n = starts[k] - starts[j]
            c = best[j] + -(-n // batch_size) * cost + n * widths[k - 1]
            if c < best[k]:
                best[k], cut[k] = c, j
    bounds, k = [], len(widths)
    while k > 0:
        bounds.append((cut[k], k))
        k = cut[k]
    batches = []
    for j, k in reversed(bounds):
        for i in range(starts[j], starts[k], batch_size):
            batches.append((i, min(i + batch_size, starts[k]), widths[k - 1]))
    return order, batches


@torch.no_grad()
def evaluate(strategy, exps, preprocess, batch_size: int, task_aware: bool, device, class_masks=None,
             by_length: bool = False, cpu_bf16: bool = False, pred_counts: torch.Tensor | None = None) -> list[float]:
    """Accuracy on each experience's test data; one host read at the end (and one per experience for
    the lengths of text test sets, ``by_length``).  ``cpu_bf16``: bf16 autocast on a CPU device
    (``protocol.eval_amp``; CUDA evaluation runs under the run's ``amp`` autocast already).
    ``pred_counts`` (int64, one entry per class, on the device): incremented by the predicted classes
    (the prediction-collapse report, :func:`cl.core.metrics.prediction_collapse`)."""
    model = strategy.model
    was_training = model.training
    model.eval()
    correct = []
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(cpu_bf16 and torch.device(device).type == "cpu"))
    with amp:
        for j, exp in enumerate(exps):
            correct.append(_correct(strategy, exp, j, preprocess, batch_size, task_aware, device, class_masks,
                                    by_length, pred_counts))
    model.train(was_training)
    counts = torch.stack(correct).cpu().tolist() if correct else []
    return [c / max(1, len(e.test_y)) for c, e in zip(counts, exps)]


def _correct(strategy, exp, j, preprocess, batch_size, task_aware, device, class_masks, by_length, pred_counts):
    """Number of correct predictions on one experience's test data (a device tensor)."""
    c = torch.zeros((), dtype=torch.long, device=device)
    x_all, y_all = exp.test_x, exp.test_y
    if by_length and x_all.dim() == 2 and len(y_all) and not x_all.is_floating_point():
        order, batches = length_batches(x_all, batch_size)
        x_all, y_all = x_all[order], y_all[order.to(y_all.device)]
    else:
        batches = [(i, i + batch_size, None) for i in range(0, len(y_all), batch_size)]
    for i, stop, width in batches:
        xb = x_all[i:stop] if width is None else x_all[i:stop, :width]
        x = preprocess(xb)
        y = y_all[i:stop]
        logits = strategy.predict(x, exp.task_id)
        if task_aware and class_masks is not None:
            logits = logits.masked_fill(~class_masks[j], float("-inf"))
        pred = logits.argmax(1)
        c += (pred == y).sum()
        if pred_counts is not None:
            pred_counts += torch.bincount(pred, minlength=len(pred_counts))[:len(pred_counts)]
    return c


def class_masks(scenario, device) -> list[torch.Tensor]:
    """Per experience, the boolean mask of its classes (task-aware evaluation masks the other logits)."""
    masks = []
    for e in scenario.experiences:
        m = torch.zeros(scenario.n_classes, dtype=torch.bool, device=device)
        m[e.classes] = True
        masks.append(m)
    return masks
