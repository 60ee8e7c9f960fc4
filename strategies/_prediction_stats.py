"""Prediction-collapse report for strategies (issue 13, item 4).

A run whose model answers one class for (nearly) every test sample can still show an accuracy that looks
like plain forgetting (1.3 % on a 77-intent stream).  :class:`PredictionStats` counts the classes a
strategy predicts while the model is in eval mode (the engine's evaluation, and the online protocol's
test-then-train predictions); the counts restart at the first prediction after a training step, so at the
end of a run they are the predictions of the final evaluation.  ``prediction_stats()`` turns them into
``pred_top_class_share``, ``pred_classes_used`` and ``prediction_collapsed`` (see
:func:`cl.core.metrics.prediction_collapse`), which the strategies merge into ``extra_metrics()`` and the
engine into result.json; a collapsed run also emits a warning.

Counting is one ``bincount`` on the device per evaluated batch (no host read until the end).  Graph-safe
strategies (the ER family) do not use it: their prediction may be a replayed CUDA graph.  A version for
every strategy belongs in the engine's evaluate() (see the issue-13 report).
"""
from __future__ import annotations

import warnings

import torch

from cl.core.metrics import prediction_collapse


def _counting_predict(inner):
    def predict(self, x, t=None):
        if getattr(self, "_in_predict", False):  # a nested call (super().predict): count once, outside
            return inner(self, x, t)
        self._in_predict = True
        try:
            out = inner(self, x, t)
        finally:
            self._in_predict = False
        self._count_predictions(out)
        return out

    predict._counts_predictions = True
    predict.__doc__, predict.__name__ = inner.__doc__, inner.__name__
    return predict


def _marking_train_step(inner):
    def train_step(self, x, y, t=None):
        self._pred_fresh = True
        return inner(self, x, y, t)

    train_step._marks_fresh = True
    train_step.__doc__, train_step.__name__ = inner.__doc__, inner.__name__
    return train_step


class PredictionStats:
    """Mixin (put it before :class:`cl.core.strategy.Strategy`): counts eval-mode predictions.

    Subclasses that define their own ``predict`` / ``train_step`` (without calling ``super()``) are wrapped
    when the class is created, so their predictions are counted too."""

    _pred_counts: torch.Tensor | None = None
    _pred_fresh: bool = True
    #: counts of the evaluation after the last training step: rebuilt by that evaluation, not state
    transient_attrs = ("_in_predict", "_pred_counts", "_pred_fresh")

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        f = cls.__dict__.get("predict")
        if f is not None and not getattr(f, "_counts_predictions", False):
            cls.predict = _counting_predict(f)
        f = cls.__dict__.get("train_step")
        if f is not None and not getattr(f, "_marks_fresh", False):
            cls.train_step = _marking_train_step(f)

    @_marking_train_step
    def train_step(self, x, y, t=None):
        return super().train_step(x, y, t)

    @_counting_predict
    def predict(self, x, t=None):
        return super().predict(x, t)

    def _count_predictions(self, out):
        if self.model.training:
            return
        n = out.shape[-1]
        if self._pred_counts is None or self._pred_fresh or len(self._pred_counts) != n:
            self._pred_counts = torch.zeros(n, dtype=torch.long, device=out.device)
            self._pred_fresh = False
        self._pred_counts += torch.bincount(out.argmax(-1).flatten(), minlength=n)[:n]

    def _seen_classes(self) -> int | None:
        for owner in (getattr(self.model, "head", None), self.model):
            seen = getattr(owner, "seen", None)
            if isinstance(seen, torch.Tensor) and seen.dtype == torch.bool:
                return int(seen.sum())
        return None

    def prediction_stats(self) -> dict:
        if self._pred_counts is None:
            return {}
        out = prediction_collapse(self._pred_counts.cpu().numpy(), self._seen_classes())
        if out.get("prediction_collapsed"):
            warnings.warn(f"{type(self).__name__}: predictions collapsed: {out['pred_top_class_share']:.0%} of the "
                          f"final evaluation's test samples are predicted as one class "
                          f"({out['pred_classes_used']} classes predicted at all); check the learning rate",
                          RuntimeWarning, stacklevel=2)
        return out

    def extra_metrics(self) -> dict:
        parent = getattr(super(), "extra_metrics", None)
        out = dict(parent()) if parent is not None else {}
        out.update(self.prediction_stats())
        return out
