"""Task-conditioned hypernetworks: ``hnet`` (von Oswald, Henning, Grewe & Sacramento, "Continual learning
with hypernetworks", ICLR 2020, arXiv 1906.00695) and ``hnet-rnn`` (Chandra, Varshney, Srijith & Gupta,
"Continual Learning with Dependency Preserving Hypernetworks", WACV 2023), task-incremental.

A hypernetwork maps a learned task embedding ``e_t`` to all parameters of the target network (the
configured backbone + a linear head over all classes); the target's own parameters are never trained.
Learning task ``t`` trains the hypernetwork's parameters ``Theta`` and ``e_t`` only, with the **output
regulariser** of the paper (eq. 2):

    loss = CE(target(x; h(e_t, Theta))) + beta / t * sum_{t' < t} || h(e_t', Theta) - h(e_t', Theta*) ||^2

``Theta*`` the hypernetwork before task ``t`` (the targets ``h(e_t', Theta*)`` are computed once at the
boundary; the earlier embeddings are fixed), as ``calc_fix_target_reg`` in the authors' code
(chrhenning/hypercl, ``utils/hnet_regularizer.py``: squared error summed over all outputs, averaged over
earlier tasks).  Test time for task ``k`` runs the target with ``h(e_k, Theta)``.

``hnet`` is the **chunked** hypernetwork: ``h(e_t, c_j)`` for learned chunk embeddings ``c_j`` gives chunk
``j`` of ``chunk_size`` outputs; the chunks are independent of each other.  Defaults follow the authors'
ResNet/CIFAR configuration (``cifar/train_args.py``): chunks of 7000, task and chunk embeddings of 32, no
hidden layer (``hnet_arch=''``), beta 0.05, Adam at lr 0.001.

``hnet-rnn`` generates the weights **layer by layer** with a recurrent hypernetwork: an LSTM whose input at
every step is ``[e_t; c_j]`` and whose hidden state is carried from chunk to chunk in the target's layer
order; a linear read-out turns each step's state into one chunk.  Chunks never straddle two layers (each
layer is cut into its own chunks, the last one truncated), so each layer's weights depend on the weights
generated for the layers before it -- the dependency the paper preserves.  The paper's additional
regularisation and network-growth techniques are not implemented (only the output regulariser above).

Choices: generated values are scaled per target tensor by a fixed factor so that at initialisation they
have the spread of that tensor's default PyTorch initialisation (in the spirit of the hyperfan
initialisation that the authors' code offers; without it a default-initialised hypernetwork generates
weights of std ~0.6 and the target's activations explode).  BatchNorm running statistics are kept per
task (the authors checkpoint them per task; BatchNorm affine parameters are generated like the others).
The head is multi-head by restriction (logits of the task's classes; the regulariser covers the whole
generated vector, as with ``inds_of_out_heads=None``).  Needs task ids (``setting=task``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, make_optimizer, register
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
from strategies._task_il import TaskILStrategy


@dataclass
class HNETConfig(StrategyConfig):
    lr: float = 0.001
    optimizer: str = "adam"
    beta: float = 0.05
    chunk_size: int = 7000
    task_emb_dim: int = 32
    chunk_emb_dim: int = 32
    hnet_hidden: str = ""  # comma-separated hidden widths of the chunked hypernetwork ("" = none)


@dataclass
class HNETRNNConfig(HNETConfig):
    chunk_size: int = 2000
    rnn_hidden: int = 128


def _widths(s: str) -> list[int]:
    try:
        return [int(w) for w in s.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"strategy.hnet_hidden={s!r}: expected comma-separated integers, e.g. '100,150'") from None


class ChunkedHNet(nn.Module):
    """h(e_t, c_j) -> chunk j, every chunk independent (an MLP over [task emb; chunk emb])."""

    def __init__(self, n_tasks, n_out, cfg):
        super().__init__()
        self.n_out, self.n_chunks = n_out, math.ceil(n_out / cfg.chunk_size)
        self.task_emb = nn.ParameterList(nn.Parameter(torch.randn(cfg.task_emb_dim)) for _ in range(n_tasks))
        self.chunk_emb = nn.Parameter(torch.randn(self.n_chunks, cfg.chunk_emb_dim))
        d, layers = cfg.task_emb_dim + cfg.chunk_emb_dim, []
        for w in _widths(cfg.hnet_hidden):
            layers += [nn.Linear(d, w), nn.ReLU()]
            d = w
        self.net = nn.Sequential(*layers, nn.Linear(d, cfg.chunk_size))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([emb.expand(self.n_chunks, -1), self.chunk_emb], 1)
        return self.net(inp).flatten()[:self.n_out]


class RecurrentHNet(nn.Module):
    """An LSTM over the chunks in layer order; step j's input is [e_t; c_j], its state carries over."""

    def __init__(self, n_tasks, sizes: list[int], cfg):
        super().__init__()
        self.sizes, self.chunk = sizes, cfg.chunk_size
        self.steps = [math.ceil(n / cfg.chunk_size) for n in sizes]  # chunks of each layer
        n_steps = sum(self.steps)
        self.task_emb = nn.ParameterList(nn.Parameter(torch.randn(cfg.task_emb_dim)) for _ in range(n_tasks))
        self.chunk_emb = nn.Parameter(torch.randn(n_steps, cfg.chunk_emb_dim))
        self.rnn = nn.LSTM(cfg.task_emb_dim + cfg.chunk_emb_dim, cfg.rnn_hidden)
        self.readout = nn.Linear(cfg.rnn_hidden, cfg.chunk_size)

    def layers(self, emb: torch.Tensor, chunk_emb: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The generated weights of every target tensor, in layer order (each from its own steps)."""
        c = self.chunk_emb if chunk_emb is None else chunk_emb
        inp = torch.cat([emb.expand(len(c), -1), c], 1)
        out, _ = self.rnn(inp)  # (steps, hidden): the recurrence runs through the layers in order
        chunks, outs, s = self.readout(out), [], 0
        for n, k in zip(self.sizes, self.steps):
            outs.append(chunks[s:s + k].flatten()[:n])
            s += k
        return outs

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.layers(emb))


class HNETModel(nn.Module):
    """Target network (parameters generated, never trained) + hypernetwork + per-task BatchNorm statistics."""

    def __init__(self, backbone, n_tasks, n_classes, cfg, recurrent: bool):
        super().__init__()
        self.target = Model(backbone, IncrementalLinear(backbone.out_dim, n_classes))
        self.names = [n for n, _ in self.target.named_parameters()]
        self.shapes = [p.shape for _, p in self.target.named_parameters()]
        sizes = [p.numel() for _, p in self.target.named_parameters()]
        scale = torch.cat([torch.full((p.numel(),), float(p.detach().std()) if p.numel() > 1 and p.std() > 0 else 1.0)
                           for _, p in self.target.named_parameters()])
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.hnet = RecurrentHNet(n_tasks, sizes, cfg) if recurrent else ChunkedHNet(n_tasks, sum(sizes), cfg)
        with torch.no_grad():
            raw_std = float(self.hnet(self.hnet.task_emb[0]).std())
        self.register_buffer("scale", scale / max(raw_std, 1e-8))
        self.bn_names = [f"{n}.{b}" for n, m in self.target.named_modules()
                         if isinstance(m, nn.modules.batchnorm._BatchNorm) for b, _ in m.named_buffers()]
        own = dict(self.target.named_buffers())
        for t in range(n_tasks):
            for n in self.bn_names:
                self.register_buffer(self._bn_key(t, n), own[n].detach().clone())

    @staticmethod
    def _bn_key(t, n):
        return f"bn{t}__" + n.replace(".", "__")

    def observe(self, y):
        self.target.observe(y)

    def generate(self, t: int) -> torch.Tensor:
        return self.hnet(self.hnet.task_emb[t])

    def forward(self, x, t: int, theta: torch.Tensor | None = None):
        theta = self.generate(t) if theta is None else theta
        theta = theta * self.scale
        params, s = {}, 0
        for n, shape in zip(self.names, self.shapes):
            k = math.prod(shape)
            params[n] = theta[s:s + k].view(shape)
            s += k
        bufs = {n: getattr(self, self._bn_key(t, n)) for n in self.bn_names}
        return functional_call(self.target, {**params, **bufs}, (x,))


@register("hnet", HNETConfig)
class HNET(TaskILStrategy):
    """Chunked task-conditioned hypernetwork with the output regulariser on earlier task embeddings."""
    transient_attrs = ('targets',)  # the earlier tasks' generated weights: recomputed by before_experience

    name = "hnet"
    recurrent = False

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        if cfg.chunk_size < 1:
            raise ConfigError(f"strategy.chunk_size={cfg.chunk_size}: must be a positive integer")
        widths = _widths(cfg.hnet_hidden)
        if cfg.beta < 0 or cfg.task_emb_dim < 1 or cfg.chunk_emb_dim < 1 or any(w < 1 for w in widths) or (
                cls.recurrent and cfg.rnn_hidden < 1):
            raise ConfigError(f"{cls.name}: beta must be >= 0 and task_emb_dim, chunk_emb_dim, the hnet_hidden widths "
                              f"and rnn_hidden >= 1, got beta={cfg.beta}, task_emb_dim={cfg.task_emb_dim}, "
                              f"chunk_emb_dim={cfg.chunk_emb_dim}, hnet_hidden={cfg.hnet_hidden!r}"
                              + (f", rnn_hidden={cfg.rnn_hidden}" if cls.recurrent else ""))
        return HNETModel(backbone, len(scenario), scenario.n_classes, cfg, cls.recurrent)

    def make_optimizer(self):
        """Theta and the current task's embedding only (earlier embeddings stay fixed)."""
        hnet, t = self.model.hnet, getattr(self, "task", 0)
        params = [p for n, p in hnet.named_parameters() if not n.startswith("task_emb.")] + [hnet.task_emb[t]]
        return make_optimizer(params, self.cfg)

    def before_experience(self, exp):
        super().before_experience(exp)
        # computed with autograd on, as in the regulariser: the LSTM's no-grad kernels round differently
        self.targets = [self.model.generate(k).detach().clone() for k in range(self.task)]

    def regulariser(self) -> torch.Tensor:
        if not self.targets:
            return torch.zeros((), device=self.device)
        return sum(((self.model.generate(k) - tk) ** 2).sum() for k, tk in enumerate(self.targets)) / len(self.targets)

    def loss(self, x, y, t=None):
        ce = super().loss(x, y, t)
        return ce + self.cfg.beta * self.regulariser() if self.targets else ce

    def logits(self, x, t):
        return self.model(x, t)


@register("hnet-rnn", HNETRNNConfig)
class HNETRNN(HNET):
    """Recurrent (LSTM) hypernetwork generating the target's weights layer by layer (dependency preserving)."""

    name = "hnet-rnn"
    recurrent = True
