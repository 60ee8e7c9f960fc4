"""GDumb: Greedy sampler and Dumb learner (Prabhu, Torr, Dokania; ECCV 2020).

The stream only fills a class-balanced memory (GDumb's greedy sampler: cl/models/buffers.py,
``ClassBalancedBuffer``); no gradient step is taken on it. Before every evaluation (here: at the end of
every experience, the engine evaluates after each) the model is reset to its initialisation and trained
from scratch on the memory alone.

Choices, from mammoth ``models/gdumb.py`` (``fit_buffer``) and its seq-CIFAR best args
(``utils/best_args.py`` d75fe5f):

* Retraining: SGD, momentum 0.9, weight decay 1e-6, ``fit_epochs`` epochs (256, mammoth's default;
  the paper trains 256 epochs too) over shuffled memory batches of ``fit_batch_size`` (32, mammoth's
  run batch size); learning rate: one warm-up epoch at ``0.1 * max_lr``, then ``max_lr`` (0.05), then
  cosine annealing with warm restarts (T_0 = 1, T_mult = 2) down to ``min_lr`` (5e-4), stepped per epoch.
  Memory inputs are stored non-augmented and augmented at every retraining step.
* "From scratch" = the model's parameters and buffers as built at setup (saved then), except the head's
  seen-class mask, which keeps the classes seen so far. The paper re-initialises at each evaluation;
  mammoth retrains only after the last task (its intermediate accuracies are those of an untrained
  model); here, by default (``retrain: every``), every boundary retrains, so every row of R is GDumb's.
* ``retrain``: ``every`` (the default) retrains at every evaluation point, so every row of R is GDumb's;
  ``last`` retrains only after the last experience, as mammoth does: the final row (final average accuracy,
  the number the paper's tables report) has the same distribution, since the memory depends on the stream
  alone and every retraining starts from the same initial weights, at 1/T of the retraining cost; the earlier
  rows are then those of the untrained model, so forgetting and average incremental accuracy mean nothing.
* Each stream sample is offered to the memory once: later epochs over an experience add nothing.
* CutMix and gradient clipping, from GDumb's own code (drimpossible/GDumb ``src/main.py`` and ``opts.py``, read
  2026-12-02; its CIFAR-10 runs pass ``--regularization cutmix``): each retraining batch is cut-mixed with
  probability ``cutmix_prob`` (the code's 0.5; default 0 here, mammoth's plain runs) with lambda ~
  Beta(``cutmix_alpha``, same) (cl/data/mix.py), and the gradient norm is clipped at ``fit_clip`` (the code's 10;
  default none) before each step. Images only: CutMix on feature vectors is a ConfigError.

Online protocol (``protocol=online``): the single pass offers every stream sample once, so no experience
length is read; task-free streams (``scenario.boundaries`` hidden, blurry, gradual) are allowed: GDumb uses
no boundary, only the evaluation points, where it retrains (the engine evaluates R at the end of every
experience in every kind of stream). Between two retrainings the model does not change: the online
(test-then-train) accuracy and the anytime evaluations (``protocol.eval_every``) use the model of the last
retraining (the untrained initial model before the first), since retraining for every prediction would cost
``fit_epochs`` epochs per stream batch. Report GDumb's final accuracy, not its online accuracy.

The stream optimiser's settings (``strategy.lr``, ``optimizer``, ``momentum``, ``weight_decay``) are not used;
set away from their defaults (a sweep's base for every strategy, say), they draw a one-line warning naming
them and the retraining fields that apply.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.data.mix import cutmix
from cl.models.buffers import ClassBalancedBuffer


RETRAIN = ("every", "last")


def unused_optimiser_fields(c) -> list[str]:
    """The stream optimiser's fields (``lr``, ``optimizer``, ``momentum``, ``weight_decay``) set away from their
    defaults: GDumb never uses them (a sweep's base may set them for every strategy, so this warns, not errs)."""
    base = StrategyConfig()
    return [f"{k}={getattr(c, k)!r}" for k in ("lr", "optimizer", "momentum", "weight_decay")
            if getattr(c, k) != getattr(base, k)]


@dataclass
class GDumbConfig(StrategyConfig):
    buffer_size: int = 500
    fit_epochs: int = 256
    fit_batch_size: int = 32
    max_lr: float = 0.05
    min_lr: float = 5e-4
    fit_momentum: float = 0.9
    fit_weight_decay: float = 1e-6
    cutmix_prob: float = 0.0  # GDumb's code: 0.5 (with --regularization cutmix)
    cutmix_alpha: float = 1.0
    fit_clip: float | None = None  # max gradient norm in retraining; GDumb's code: 10 (--clip)
    retrain: str = "every"  # every | last: retrain at every evaluation point, or only after the last experience


@register("gdumb", GDumbConfig)
class GDumb(Strategy):
    """Greedy class-balanced memory; the model is retrained from scratch on it before each evaluation."""

    task_free = True  # the stream only fills the memory; it retrains at each evaluation point

    def setup(self):
        c = self.cfg
        if c.buffer_size < 1 or c.fit_epochs < 0 or c.fit_batch_size < 1:
            raise ConfigError(f"gdumb needs strategy.buffer_size >= 1, fit_epochs >= 0, fit_batch_size >= 1; got "
                              f"{c.buffer_size}, {c.fit_epochs}, {c.fit_batch_size}")
        if not 0.0 <= c.cutmix_prob <= 1.0 or c.cutmix_alpha <= 0 or (c.fit_clip is not None and c.fit_clip <= 0):
            raise ConfigError(f"gdumb needs 0 <= strategy.cutmix_prob <= 1, cutmix_alpha > 0 and fit_clip > 0 (or unset); "
                              f"got {c.cutmix_prob}, {c.cutmix_alpha}, {c.fit_clip}")
        if c.cutmix_prob > 0 and len(self.info.input_shape) != 3:
            raise ConfigError(f"gdumb: strategy.cutmix_prob={c.cutmix_prob} mixes image boxes, but the inputs have shape "
                              f"{tuple(self.info.input_shape)} (not C x H x W): set cutmix_prob=0")
        if c.retrain not in RETRAIN:
            raise unknown("strategy.retrain", c.retrain, RETRAIN)
        unused = unused_optimiser_fields(c)
        if unused:
            warnings.warn(f"gdumb: strategy.{', strategy.'.join(unused)} not used: GDumb takes no step on the stream "
                          f"and retrains with its own SGD (strategy.max_lr, min_lr, fit_momentum, fit_weight_decay)",
                          RuntimeWarning, stacklevel=2)
        self.buffer = ClassBalancedBuffer(c.buffer_size, self.device)
        self.init_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                           if not k.endswith("seen")}
        self.to_offer = float("inf")  # set per experience when boundaries are visible

    def before_experience(self, exp):
        # online: one pass, each sample is offered once anyway; task-free: the experience's size is hidden
        if self.info.protocol != "online" and self.info.boundaries == "visible":
            self.to_offer = len(exp.train_y)

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        if self.to_offer > 0:
            r = int(min(self.to_offer, len(y)))
            self.buffer.add(x=x[:r], y=y[:r])
            self.to_offer -= r
        return torch.zeros((), device=self.device)

    def reset_model(self):
        self.model.load_state_dict(self.init_state, strict=False)

    def fit(self):
        c, mem = self.cfg, self.buffer.items()
        if not mem:
            return
        self.reset_model()
        was_training = self.model.training
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=c.max_lr, momentum=c.fit_momentum, weight_decay=c.fit_weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=c.min_lr)
        n = len(mem["y"])
        for epoch in range(c.fit_epochs):
            if epoch <= 1:
                for group in opt.param_groups:
                    group["lr"] = c.max_lr * (0.1 if epoch == 0 else 1.0)
            else:
                sched.step()
            perm = torch.randperm(n, device=mem["y"].device)
            for i in range(0, n, c.fit_batch_size):
                idx = perm[i:i + c.fit_batch_size]
                x = mem["x"][idx]
                x = self.augmented(x)
                y = mem["y"][idx]
                opt.zero_grad(set_to_none=True)
                if c.cutmix_prob > 0 and float(torch.rand(())) < c.cutmix_prob:
                    x, y2, lam = cutmix(x, y, c.cutmix_alpha)
                    out = self.model(x).float()
                    loss = lam * F.cross_entropy(out, y) + (1.0 - lam) * F.cross_entropy(out, y2)
                else:
                    loss = F.cross_entropy(self.model(x).float(), y)
                loss.backward()
                if c.fit_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, c.fit_clip)
                opt.step()
        self.model.train(was_training)

    def after_experience(self, exp):
        if self.cfg.retrain == "every" or exp.index == self.info.n_experiences - 1:
            self.fit()

    def extra_state(self):
        return {"buffer": self.buffer.state_dict(), "init": {k: v.cpu() for k, v in self.init_state.items()},
                "to_offer": self.to_offer}

    def load_extra_state(self, state):
        self.buffer.load_state_dict(state["buffer"])
        self.init_state = {k: v.to(self.device) for k, v in state["init"].items()}
        self.to_offer = state["to_offer"]
