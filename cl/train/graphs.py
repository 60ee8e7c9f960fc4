"""CUDA-graph capture of the online step (protocol option ``graphs``).

At batch size 10 the online step is bound by kernel launches and Python, not
arithmetic.  Where shapes are static, the whole training step (sample from the
device buffer, forward, backward, optimiser step, reservoir update) and the
test-then-train prediction are captured once as ``torch.cuda.CUDAGraph`` s
with static input tensors and replayed for every later batch of the same
shape, following PyTorch's whole-network capture recipe:

* a few eager warm-up steps on a side stream (lazy optimiser state, cuDNN
  autotuning), then capture; ``zero_grad(set_to_none=True)`` inside the step
  makes the captured backward write fresh gradients on every replay;
* random draws (reservoir slots, replay indices) come from the default CUDA
  generator, whose offsets advance on every replay; the buffer keeps a
  device-side counter so a captured ``add``/``sample`` stays correct while it
  fills (:class:`cl.buffers.ReservoirBuffer`); host counters are advanced
  after each replay;
* autocast is re-entered with ``cache_enabled=False`` for the capture;
* optimisers with a ``capturable`` flag (Adam, AdamW) get it set before their first step.

A batch of another shape (the last, partial batch of an experience) or another
task id runs eagerly (graphs are kept per (shape, task id), up to
``MAX_GRAPHS``).  Anything that fails during capture falls back to the eager
step with a warning.  Off CUDA, and for a strategy that is not known to be
graph-safe, :func:`train_step_fn` / :func:`predict_fn` return the eager
functions unchanged: on CPU the option is exactly the eager path.

A strategy is graph-safe when its step has no data-dependent host control flow
and no Python-side state that changes per step: :attr:`cl.core.strategy.Strategy.graph_safe`
(True for the base hooks; a subclass that overrides a step hook must declare it again,
as ER does).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from cl.models.buffers import ReservoirBuffer
from cl.core.strategy import Strategy

MAX_GRAPHS = 4
WARMUP = 3


def is_graph_safe(strategy: Strategy) -> bool:
    """The strategy's declared ``graph_safe`` (its class's, or the instance's where a setting such as ER's
    ``exclude_current`` turns it off), and an augmentation (if any) that is graph-safe too."""
    aug = getattr(strategy, "augment", None)  # None on a strategy built without __init__ (tests)
    return bool(strategy.graph_safe) and (aug is None or getattr(aug, "graph_safe", False))


def _capture_autocast():
    if torch.is_autocast_enabled("cuda"):
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
    return contextlib.nullcontext()


def _buffers(strategy) -> list[ReservoirBuffer]:
    return [v for v in vars(strategy).values() if isinstance(v, ReservoirBuffer)]


class _Captured:
    __slots__ = ("graph", "x", "y", "out")


class _CaptureBackend:
    """The CUDA calls, kept in a few methods so that the bookkeeping around them can be tested off
    CUDA (tests/test_online.py replaces them with an emulation that runs the step at replay)."""

    def _device_ok(self, x) -> bool:
        return x.is_cuda

    def _new_graph(self):
        return torch.cuda.CUDAGraph()

    def _record(self, graph, fn):
        """Capture ``fn()`` into ``graph`` (its kernels do not run now) and return its static output."""
        with torch.cuda.graph(graph), _capture_autocast():  # a private memory pool per graph
            return fn()

    def _sync(self):
        torch.cuda.synchronize()


class GraphedTrainStep(_CaptureBackend):
    """``strategy.train_step`` replayed from CUDA graphs; same signature and return value
    (the returned loss is a static tensor: copy it before the next call)."""

    def __init__(self, strategy, warmup: int = WARMUP):
        self.s, self.warmup = strategy, warmup
        self.graphs: dict = {}
        self.failed = False
        self.warm = 0
        self.replays = 0
        self.buffers = _buffers(strategy)
        self.side = None
        opt = getattr(strategy, "optimizer", None)
        if opt is not None and not opt.state:  # Adam/AdamW keep their step count on the device when capturable
            for group in opt.param_groups:
                if "capturable" in group:
                    group["capturable"] = True

    def _eager_side(self, x, y, t):
        if self.side is None:
            self.side = torch.cuda.Stream(device=self.s.device)
        cur = torch.cuda.current_stream()
        self.side.wait_stream(cur)
        with torch.cuda.stream(self.side):
            loss = self.s.train_step(x, y, t)
        cur.wait_stream(self.side)
        return loss

    def _capture(self, key, x, y, t):
        c = _Captured()
        c.x, c.y = x.clone(), y.clone()
        hosts = [b.n_seen for b in self.buffers]
        c.graph = self._new_graph()
        for b in self.buffers:
            if b.generator is not None:
                if not hasattr(c.graph, "register_generator_state"):
                    raise RuntimeError("this torch cannot capture a buffer's own generator")
                c.graph.register_generator_state(b.generator)
        try:
            c.out = self._record(c.graph, lambda: self.s.train_step(c.x, c.y, t))
        finally:
            for b, h in zip(self.buffers, hosts):  # capture ran the Python side once but no kernels
                b.n_seen = h
        self.graphs[key] = c
        return c

    def __call__(self, x, y, t=None):
        key = (tuple(x.shape), x.dtype, tuple(y.shape), t)
        c = self.graphs.get(key)
        if c is None:
            if self.failed or len(self.graphs) >= MAX_GRAPHS or not self._device_ok(x):
                return self.s.train_step(x, y, t)
            if self.warm < self.warmup or any(len(b) == 0 for b in self.buffers):
                self.warm += 1
                return self._eager_side(x, y, t)
            try:
                c = self._capture(key, x, y, t)
            except Exception as e:  # capture unsupported by this strategy/model: stay eager
                warnings.warn(f"CUDA-graph capture of the train step failed, running eagerly: {type(e).__name__}: {e}")
                self.failed = True
                self._sync()
                return self.s.train_step(x, y, t)
        c.x.copy_(x)
        c.y.copy_(y)
        c.graph.replay()
        for b in self.buffers:
            b.advance_host(len(y))
        self.replays += 1
        return c.out


class GraphedPredict(_CaptureBackend):
    """Arg-max prediction of ``strategy.predict`` in eval mode, replayed from CUDA graphs."""

    def __init__(self, strategy, warmup: int = 1):
        self.s, self.warmup = strategy, warmup
        self.graphs: dict = {}
        self.failed = False
        self.warm = 0

    def _eager(self, x, t):
        m = self.s.model
        m.eval()
        with torch.no_grad():
            pred = self.s.predict(x, t).argmax(1)
        m.train()
        return pred

    def __call__(self, x, t=None):
        key = (tuple(x.shape), x.dtype, t)
        c = self.graphs.get(key)
        if c is None:
            if self.failed or len(self.graphs) >= MAX_GRAPHS or not self._device_ok(x) or self.warm < self.warmup:
                self.warm += 1
                return self._eager(x, t)
            c = _Captured()
            c.x = x.clone()
            c.graph = self._new_graph()
            m = self.s.model
            try:
                m.eval()
                with torch.no_grad():
                    c.out = self._record(c.graph, lambda: self.s.predict(c.x, t).argmax(1))
            except Exception as e:
                warnings.warn(f"CUDA-graph capture of predict failed, running eagerly: {type(e).__name__}: {e}")
                self.failed = True
                self._sync()
                return self._eager(x, t)
            finally:
                m.train()
            self.graphs[key] = c
        c.x.copy_(x)
        c.graph.replay()
        return c.out


def train_step_fn(strategy, enabled: bool):
    """The function the online loop calls for a training step: a :class:`GraphedTrainStep` when
    graphs are enabled, the device is CUDA and the strategy is graph-safe; else ``strategy.train_step``."""
    if enabled and strategy.device.type == "cuda" and torch.cuda.is_available():
        if is_graph_safe(strategy):
            return GraphedTrainStep(strategy)
        warnings.warn(f"protocol.graphs: strategy {type(strategy).__name__} is not marked graph_safe; "
                      "running its step eagerly")
    return strategy.train_step


def predict_fn(strategy, enabled: bool):
    """Arg-max prediction in eval mode (graphed under the same conditions as :func:`train_step_fn`)."""
    if enabled and strategy.device.type == "cuda" and torch.cuda.is_available() and is_graph_safe(strategy):
        return GraphedPredict(strategy)

    def predict(x, t=None):
        m = strategy.model
        m.eval()
        with torch.no_grad():
            pred = strategy.predict(x, t).argmax(1)
        m.train()
        return pred

    return predict
