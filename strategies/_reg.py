"""Helpers shared by the regularisation and distillation strategies (EWC, SI, MAS, RWalk, LwF, iCaRL, ...).

* ``build_model``: backbone + the configured head (as the engine builds it), remembering the scenario's
  batch transform so that a strategy can featurise raw stored samples at a boundary (``model_preprocess``).
* ``in_eval(model)``: a context that puts the model in eval mode and restores its mode after.
* ``batched_apply``: a function over a tensor in batches, under no_grad, after the batch transform.
* ``per_sample_grads``: per-sample gradients of a scalar loss of the logits, with ``torch.func`` (vmap of
  grad over ``functional_call``), chunk by chunk; the model is in eval mode (BatchNorm uses running stats,
  which is also what makes the samples independent).
* ``finite_logits``: logits with the head's -inf (unseen classes) replaced by 0, for losses on raw outputs.
"""
from __future__ import annotations

import contextlib

import torch

from cl.core.strategy import Strategy
from cl.models.model import Model, head_of
from cl.models.task_keys import remember_preprocess


def build_model(cfg, backbone, scenario):
    model = Model(backbone, head_of(cfg, backbone.out_dim, scenario.n_classes))
    remember_preprocess(model, scenario)
    return model


@contextlib.contextmanager
def in_eval(model):
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@torch.no_grad()
def batched_apply(fn, x, preprocess, batch_size=256):
    outs = [fn(preprocess(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def finite_logits(logits):
    return logits.masked_fill(~torch.isfinite(logits), 0.0)


def per_sample_grads(model, x, y, loss_fn, preprocess, chunk=64):
    """Yield, chunk by chunk, {name: [b, *p.shape]} gradients of ``loss_fn(logits[1, C], y[1])`` per sample."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in trainable(model).items()}
    buffers = dict(model.named_buffers())

    def f(ps, xi, yi):
        out = functional_call(model, (ps, buffers), (xi[None],))
        return loss_fn(out.float(), yi[None])

    g = vmap(grad(f), in_dims=(None, 0, 0), randomness="same")
    with in_eval(model):
        for i in range(0, len(y), chunk):
            yield g(params, preprocess(x[i:i + chunk]), y[i:i + chunk])


def quad_penalty(params: dict, weight: dict, anchor: dict):
    """sum_n sum weight_n * (p_n - anchor_n)^2: the quadratic penalty of EWC, SI, MAS and RWalk."""
    return sum((weight[n] * (p - anchor[n]).pow(2)).sum() for n, p in params.items())


@torch.no_grad()
def task_gradients(params: dict, coef: float, weight: dict | None, anchor: dict) -> dict:
    """p.grad minus the closed-form gradient of ``coef * quad_penalty`` (2 coef weight (p - anchor)): the task
    loss's own gradient, for path integrals (SI, RWalk). ``weight=None``: no penalty yet, p.grad as is."""
    out = {}
    for n, p in params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if weight is not None:
            g = g - 2 * coef * weight[n] * (p - anchor[n])
        out[n] = g.clone()
    return out


def warn_if_stiff(name: str, lr: float, curvature: float) -> None:
    """Plain SGD on a quadratic penalty with curvature k along a coordinate diverges when lr * k > 2. Warn at the
    boundary (one host read) when the penalty's largest curvature crosses that bound."""
    if lr * curvature > 2:
        import warnings

        warnings.warn(f"{name}: lr * max penalty curvature = {lr * curvature:.3g} > 2: SGD on the penalty diverges "
                      f"along its stiffest parameters; lower the penalty weight or the learning rate", stacklevel=2)


class PathPenalty(Strategy):
    """Base of the path-integral strategies (SI, RWalk): loss = task_loss + coef * quad_penalty(weight, anchor) once
    ``has_penalty``; ``record_step_start`` (call from ``before_optimizer_step``) keeps the task gradient and the
    weights before the step in ``_g`` / ``_before``. Subclasses define ``penalty_coef()`` and ``penalty_weight()``."""

    build_model = classmethod(lambda cls, cfg, backbone, scenario: build_model(cfg, backbone, scenario))

    def task_loss(self, x, y, t=None):
        return Strategy.loss(self, x, y, t)

    def loss(self, x, y, t=None):
        loss = self.task_loss(x, y, t)
        if not self.has_penalty:
            return loss
        return loss + self.penalty_coef() * quad_penalty(trainable(self.model), self.penalty_weight(), self.anchor)

    def record_step_start(self) -> dict:
        ps = trainable(self.model)
        self._g = task_gradients(ps, self.penalty_coef(), self.penalty_weight() if self.has_penalty else None, self.anchor)
        self._before = {n: p.detach().clone() for n, p in ps.items()}
        return ps
