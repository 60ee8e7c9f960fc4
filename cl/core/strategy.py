"""The strategy plugin protocol.

A strategy is a class registered with ``@register("name")`` and a typed config
(a dataclass of hyperparameters with defaults, ``Config``).  The engine calls a
small set of hooks; the defaults implement plain fine-tuning, so a strategy
overrides only what differs::

    setup()                      once, after model and optimiser exist
    before_experience(exp)       at each experience boundary (on a task-free stream: a HiddenBoundary)
    train_data(exp)              (x, y) the engine iterates for this experience
    train_step(x, y, t)          one optimisation step; returns the loss tensor (no .item())
    loss(x, y, t)                the objective of the default train_step; the loss tensor, or
                                 (loss, outputs dict) to hand what the step computed to after_step
    before_optimizer_step(x, y, t)  after backward, before the step: gradients in p.grad
    after_step(x, y, t)          after the optimiser step (buffer updates go here); receives
                                 outputs= when loss() returned them and after_step accepts it
    after_experience(exp)
    predict(x, t)                logits used for evaluation and online accuracy
    state_dict() / load_state_dict()   everything needed to resume
    extra_state() / load_extra_state()  the strategy's own state inside state_dict
    build_model(cfg, backbone, scenario)   (classmethod) the network; default backbone + head
    extra_metrics()              strategy-specific metrics for the result file

and reads three class flags: ``frozen_features`` (train on cached features of a frozen
backbone), ``graph_safe`` (the online step may be captured as a CUDA graph) and ``task_free``
(the strategy runs on a stream whose boundaries are hidden, blurry or gradual).  Every
hook and flag is declared below with its default; the engine never probes for others.

Shared pieces (buffers, heads, adapters) are plain objects from ``cl/`` that a
strategy holds.  Nothing here synchronises with the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import strategies, unknown


@dataclass
class StrategyConfig:
    """Optimiser settings every strategy has."""

    lr: float = 0.1
    optimizer: str = "sgd"  # sgd | adam | adamw
    momentum: float = 0.0
    weight_decay: float = 0.0
    head: str = "linear"  # linear | cosine
    head_tau: float | None = None  # the cosine head's temperature (logits cos / tau); None: its default 0.09
    mask_unseen: bool = True  # False: every class is scored from the start, in training and at test (a fixed head)
    frozen_backbone: bool = False  # train on cached features of the frozen backbone (any strategy)


def uses_frozen_features(strategy_cls, cfg) -> bool:
    """Does this run train on cached features of a frozen backbone? Strategies built for it say so
    (``frozen_features = True``); any other strategy can be run that way with ``frozen_backbone=True``."""
    return bool(strategy_cls.frozen_features or getattr(cfg, "frozen_backbone", False))


def register(name: str, config=None, description: str | None = None, override: bool = False):
    """Register a strategy class under ``name`` (usable from user files too). A name that exists already
    (a built-in's, say) is an error unless ``override=True``."""
    return strategies.register(name, config, description, override)


OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(params, cfg: StrategyConfig, betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    """The run's optimiser (``cfg.optimizer``: sgd | adam | adamw, with ``cfg.lr`` / momentum / weight decay) over
    ``params``: parameters, or param groups (dicts with their own ``lr`` and other keys, kept as given); only
    parameters that require grad, and a group left empty is dropped.  ``betas``: Adam's / AdamW's (a method's
    own, e.g. OCM's (0.9, 0.99)); torch's default when None; unused by SGD."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in groups if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(cfg.optimizer)
    if adam is not None:
        return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **({"betas": betas} if betas else {}))
    raise unknown("optimizer", cfg.optimizer, OPTIMIZERS)


def split_loss(out):
    """``loss()`` returns the loss tensor, or ``(loss, outputs)`` where ``outputs`` is a dict of what the
    step computed (e.g. ``{"logits": ...}``) for ``after_step`` to reuse (DER stores the logits)."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


_ACCEPTS: dict = {}


def accepts_outputs(fn) -> bool:
    """Does this (bound) ``after_step`` take an ``outputs=`` keyword? Cached per function."""
    f = getattr(fn, "__func__", fn)
    if f not in _ACCEPTS:
        import inspect

        ps = inspect.signature(f).parameters
        _ACCEPTS[f] = "outputs" in ps or any(p.kind == p.VAR_KEYWORD for p in ps.values())
    return _ACCEPTS[f]


@dataclass
class RunInfo:
    """What a strategy may know about the run."""

    n_classes: int
    input_shape: tuple
    device: torch.device
    seed: int
    setting: str = "class"
    boundaries: str = "visible"
    protocol: str = "offline"
    n_experiences: int = 1
    epochs: int = 1  # passes over each experience's data (offline ``protocol.epochs``; 1 online)


#: hooks whose override makes a subclass not graph-safe unless it declares ``graph_safe`` itself
GRAPH_HOOKS = ("train_step", "loss", "after_step", "predict")
#: hooks that see an experience boundary (and, on a visible one, the experience's data and classes)
BOUNDARY_HOOKS = ("before_experience", "train_data", "after_experience")


class Strategy:
    """Fine-tuning with cross-entropy: the base every strategy extends."""

    Config = StrategyConfig
    #: the backbone stays frozen: the engine runs it once (feature cache) and feeds its features, not images
    frozen_features: bool = False
    #: the online step has no data-dependent host control flow and no Python state that changes per step,
    #: so it can be captured as a CUDA graph (cl/train/graphs.py).  True for the base hooks; a subclass that
    #: overrides one of GRAPH_HOOKS without declaring ``graph_safe`` in its own body is not graph-safe
    #: (a subclass of ER that changes ``loss`` does not inherit ER's declaration).
    graph_safe: bool = True
    #: runs on task-free streams (``scenario.boundaries`` hidden, blurry or gradual).  ``None``: inferred, true
    #: when the class overrides none of BOUNDARY_HOOKS.  There the engine still calls ``before_experience`` /
    #: ``after_experience`` at the evaluation points, but with a ``HiddenBoundary`` (its index only); a strategy
    #: that overrides a boundary hook and learns nothing from it declares ``task_free = True``.  The engine
    #: refuses every other strategy on a task-free stream (a ConfigError naming ``scenario.boundaries``).
    #: A declaration covers the hooks of the class that makes it: a subclass that overrides a boundary hook
    #: again is not task-free unless it declares so itself (as with ``graph_safe``).
    task_free: bool | None = None

    @classmethod
    def runs_task_free(cls) -> bool:
        """The nearest class in the MRO that declares ``task_free`` or overrides a boundary hook decides: its
        declaration, else false (it overrides a hook undeclared); true when no class below Strategy does either."""
        mro = cls.__mro__
        for i, k in enumerate(mro):
            if k is Strategy:
                break
            if k.__dict__.get("task_free") is not None:
                return bool(k.__dict__["task_free"])
            for h in BOUNDARY_HOOKS:  # a hook set to the very function it inherits (a patch undone) is no override
                inherited = next((b.__dict__[h] for b in mro[i + 1:] if h in b.__dict__), None)
                if h in k.__dict__ and k.__dict__[h] is not inherited:
                    return False
        return True

    @classmethod
    def boundary_hooks(cls) -> list[str]:
        """The boundary hooks this class (or a base of it other than Strategy) overrides."""
        return [h for h in BOUNDARY_HOOKS if getattr(cls, h) is not getattr(Strategy, h)]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "graph_safe" not in cls.__dict__ and any(h in cls.__dict__ for h in GRAPH_HOOKS):
            cls.graph_safe = False

    def __init__(self, cfg: StrategyConfig, model: nn.Module, info: RunInfo):
        self.cfg, self.model, self.info = cfg, model, info
        self.device = info.device
        self.augment = None  # optional on-device augmentation callable, set by the engine
        self.optimizer = self.make_optimizer()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg, backbone: nn.Module, scenario) -> nn.Module:
        """The network this strategy trains, built before the strategy: backbone + ``cfg.head`` over all classes."""
        from cl.models.model import Model, head_of

        return Model(backbone, head_of(cfg, backbone.out_dim, scenario.n_classes))

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the trainable parameters (``cfg.optimizer``, ``lr``, ``momentum``, ``weight_decay``)."""
        return make_optimizer(self.model.parameters(), self.cfg)

    def setup(self) -> None:
        """Once, after model and optimiser exist (allocate buffers, frozen copies...)."""

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through the run's on-device augmentation, if there is one (training inputs only)."""
        return self.augment(x) if self.augment is not None else x

    # -- hooks -------------------------------------------------------------------------------
    def before_experience(self, exp) -> None:
        """At each visible experience boundary, before its training data is read."""

    def train_data(self, exp):
        """The (x, y) tensors the engine iterates for this experience (default: its training data)."""
        return exp.train_x, exp.train_y

    def loss(self, x, y, t=None) -> torch.Tensor:
        """The objective of the default ``train_step``: cross-entropy on the augmented batch."""
        return F.cross_entropy(self.model(self.augmented(x)).float(), y)

    def train_step(self, x, y, t=None) -> torch.Tensor:
        """One optimisation step on a batch; returns the detached loss tensor (never ``.item()``)."""
        self.model.observe(y)
        self.optimizer.zero_grad(set_to_none=True)
        loss, outputs = split_loss(self.loss(x, y, t))
        loss.backward()
        self.before_optimizer_step(x, y, t)
        self.optimizer.step()
        if outputs is not None and accepts_outputs(self.after_step):
            self.after_step(x, y, t, outputs=outputs)
        else:
            self.after_step(x, y, t)
        return loss.detach()

    def after_step(self, x, y, t=None) -> None:
        """After the optimiser step, with the raw (non-augmented) batch: buffer updates go here."""

    def before_optimizer_step(self, x, y, t=None) -> None:
        """After backward, before the optimiser step: gradients are in ``p.grad`` (projection, importance)."""

    def after_experience(self, exp) -> None:
        """After an experience's training, before its evaluation."""

    def predict(self, x, t=None) -> torch.Tensor:
        """Logits for evaluation and online accuracy (eval mode, no grad; ``t`` is the task id or None)."""
        return self.model(x)

    def extra_metrics(self) -> dict:
        """Strategy-specific metrics added to the result's metrics at the end (e.g. task-id accuracy)."""
        return {}

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue: model, optimiser and ``extra_state()`` (tensors and plain values)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state.get("extra", {}))

    #: the strategy's state beyond model and optimiser, by attribute name: tensors, plain values (dict, list,
    #: tuple, int, float, str, bool, None), nn.Modules (saved as their state_dict), objects with
    #: state_dict()/load_state_dict() (buffers, task keys, optimisers) and torch.Generators (by get_state()).
    #: ``extra_state`` / ``load_extra_state`` save and restore them; a strategy with more to do overrides
    #: those and calls super(). A checkpoint holds nothing else (docs/reliability.md).
    state_attrs: tuple = ()
    #: attributes that are recomputed before they are read (per-batch caches): not state, not checked;
    #: collected over the class hierarchy, so a mixin and a subclass can each declare their own
    transient_attrs: tuple = ()

    def extra_state(self) -> dict:
        """The strategy's own state (buffers, frozen copies, generator states) as tensors and plain values:
        by default the attributes named in ``state_attrs``."""
        return {name: to_state(getattr(self, name)) for name in self.state_attrs}

    def load_extra_state(self, state: dict) -> None:
        """Restore what ``extra_state`` returned."""
        for name in self.state_attrs:
            if name in state:
                setattr(self, name, from_state(getattr(self, name, None), state[name], f"{type(self).__name__}.{name}"))


_MOD, _SD, _GEN = "__module_state__", "__state_dict__", "__generator_state__"


def to_state(v):
    """A declared attribute as tensors and plain values (see ``Strategy.state_attrs``)."""
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, nn.Module):
        return {_MOD: v.state_dict()}
    if isinstance(v, torch.Generator):
        return {_GEN: v.get_state()}
    if hasattr(v, "state_dict") and hasattr(v, "load_state_dict") and not isinstance(v, type):
        return {_SD: v.state_dict()}
    if isinstance(v, dict):
        return {k: to_state(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(to_state(x) for x in v)
    return v


def from_state(cur, saved, where: str = "state"):
    """Restore one declared attribute: modules, buffers and generators in place, tensors on the device of
    the current value, containers element by element."""
    if isinstance(saved, dict) and len(saved) == 1 and next(iter(saved)) in (_MOD, _SD, _GEN):
        kind, val = next(iter(saved.items()))
        if cur is None:
            raise ValueError(f"{where}: cannot restore a {kind.strip('_')} into None; create the object in "
                             f"__init__/setup() (or override load_extra_state)")
        if kind == _GEN:
            cur.set_state(val.cpu())
        else:
            cur.load_state_dict(val)
        return cur
    if isinstance(saved, torch.Tensor):
        return saved.to(cur.device) if isinstance(cur, torch.Tensor) else saved
    if isinstance(saved, dict):
        c = cur if isinstance(cur, dict) else {}
        return {k: from_state(c.get(k), v, f"{where}.{k}") for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        c = list(cur) if isinstance(cur, (list, tuple)) and len(cur) == len(saved) else [None] * len(saved)
        return type(saved)(from_state(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(c, saved)))
    return saved
