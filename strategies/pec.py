"""PEC: prediction-error-based classification (Zajac, Tuytelaars, van de Ven; ICLR 2024; methods.md section 9).

One frozen random teacher ``h`` (shared by all classes, PyTorch default init) and one
small student ``g_c`` per class, all students starting from the same initialisation.
Each sample of class c trains only ``g_c`` to match the teacher:
``l_c(x) = mean_j (g_c(x)_j - h(x)_j)^2``; the score of class c is ``-l_c(x)`` and the
prediction is the class with the smallest error.  No replay, no task boundaries.

Students are evaluated together (one wide matmul / convolution, per-class weights
gathered per sample for training), and every class has its own Adam state and its own
linear learning-rate decay to 0 over that class's training samples (known at each
visible experience boundary, times ``protocol.epochs`` offline; constant lr when a class's sample count is unknown).

Architectures (``arch="auto"``: ``mlp`` for vectors and 1-channel images, ``cnn`` otherwise):

* ``mlp`` (MNIST): Linear(in, width) - LayerNorm - GELU - Linear(width, d_out); width 10,
  teacher width x500, d_out 99, lr 0.01.
* ``cnn`` (CIFAR-10): Conv3x3(ch) - InstanceNorm(affine) - ReLU - AdaptiveAvgPool(r) - Linear(ch r^2, d_out);
  ch 60, r 5, d_out 743, teacher channels x100, lr 3e-4.

Use batch size 1 as in the paper (``--set protocol.batch_size=1``); larger batches work
(each student's loss is the mean over its class's samples in the batch).  Scores of
classes never trained are masked (``score_all=True`` scores all classes, as the PEC code).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.heads import MaskedHead
from cl.core.strategy import Strategy, StrategyConfig, register
from strategies._boundaries import require_boundaries

DEFAULTS = {"mlp": dict(width=10, d_out=99, teacher_mult=500, lr=0.01, pool=0),
            "cnn": dict(width=60, d_out=743, teacher_mult=100, lr=3e-4, pool=5)}


@dataclass
class PECConfig(StrategyConfig):
    lr: float = 0.0  # 0: architecture default (mlp 0.01, cnn 3e-4)
    optimizer: str = "adam"  # adam | sgd (per class)
    arch: str = "auto"  # auto | mlp | cnn
    width: int = 0  # student hidden width / channels (0: default)
    d_out: int = 0  # output dimension (0: default)
    teacher_mult: int = 0  # teacher width multiplier (0: default)
    pool: int = 0  # cnn: adaptive pool size r (0: default)
    lr_decay: bool = True  # linear decay to 0 over each class's samples
    score_all: bool = False  # score classes never trained too


class ParallelNets(nn.Module):
    """``n`` one-hidden-layer networks of the same shape, run on the same input together.

    Parameters carry a leading dimension n.  ``forward(x)`` -> (n, B, d_out);
    ``forward_selected(x, idx)`` -> (B, d_out), network ``idx[i]`` on sample ``i``.
    """

    def __init__(self, n, arch, input_shape, width, d_out, pool=5):
        super().__init__()
        self.n, self.arch, self.width, self.d_out, self.pool = n, arch, width, d_out, pool
        if arch == "mlp":
            d_in = math.prod(input_shape)
            l1, l2 = nn.Linear(d_in, width), nn.Linear(width, d_out)
            first = [l1.weight, l1.bias]
            mid = [torch.ones(width), torch.zeros(width)]  # LayerNorm affine
        else:
            conv, l2 = nn.Conv2d(input_shape[0], width, 3, 1, 1), nn.Linear(width * pool * pool, d_out)
            first = [conv.weight, conv.bias]
            mid = [torch.ones(width), torch.zeros(width)]  # InstanceNorm affine
        self.w1, self.b1, self.nw, self.nb, self.w2, self.b2 = (
            nn.Parameter(t.detach()[None].repeat(n, *([1] * t.dim())).clone())
            for t in first + mid + [l2.weight, l2.bias])

    def forward(self, x):
        n, B = self.n, len(x)
        if self.arch == "mlp":
            h = x.flatten(1) @ self.w1.flatten(0, 1).t() + self.b1.flatten()  # (B, n*width)
            h = h.view(B, n, self.width)
            h = F.gelu(F.layer_norm(h, (self.width,)) * self.nw + self.nb)  # (B, n, width)
        else:
            h = F.conv2d(x, self.w1.flatten(0, 1), self.b1.flatten(), padding=1)  # (B, n*ch, H, W)
            h = F.instance_norm(h, weight=self.nw.flatten(), bias=self.nb.flatten())
            h = F.adaptive_avg_pool2d(F.relu(h), self.pool).view(B, n, -1)
        return torch.einsum("bnw,now->nbo", h, self.w2) + self.b2[:, None]

    def forward_selected(self, x, idx):
        B = len(x)
        w1, b1, nw, nb, w2, b2 = (p[idx] for p in (self.w1, self.b1, self.nw, self.nb, self.w2, self.b2))
        if self.arch == "mlp":
            h = torch.einsum("bi,bwi->bw", x.flatten(1), w1) + b1
            h = F.gelu(F.layer_norm(h, (self.width,)) * nw + nb)
        else:
            c_in, H, W = x.shape[1:]
            h = F.conv2d(x.reshape(1, B * c_in, H, W), w1.flatten(0, 1), b1.flatten(), padding=1, groups=B)
            h = F.instance_norm(h.view(B, self.width, H, W), weight=None, bias=None)
            h = h * nw[:, :, None, None] + nb[:, :, None, None]
            h = F.adaptive_avg_pool2d(F.relu(h), self.pool).flatten(1)
        return torch.einsum("bw,bow->bo", h, w2) + b2


class PECModel(MaskedHead):
    def __init__(self, n_classes, arch, input_shape, width, d_out, teacher_mult, pool, score_all=False):
        super().__init__(n_classes)
        self.score_all = score_all
        self.students = ParallelNets(n_classes, arch, input_shape, width, d_out, pool)
        self.teacher = ParallelNets(1, arch, input_shape, width * teacher_mult, d_out, pool)
        self.teacher.requires_grad_(False)

    def target(self, x):
        """Teacher outputs; the last batch's are reused (test-then-train predicts, then learns, the same x)."""
        cache = getattr(self, "_cache", None)
        if cache is not None and cache[0] is x:
            return cache[1]
        with torch.no_grad():
            out = self.teacher(x)[0]
        self._cache = (x, out)
        return out

    def errors(self, x):
        """Prediction error of every student on every sample: (B, n_classes)."""
        return (self.students(x) - self.target(x)[None]).pow(2).mean(-1).t()

    def forward(self, x):
        scores = -self.errors(x.float())
        return scores if self.score_all else self.mask(scores)


class PerClassOptimizer:
    """Adam (or SGD) whose state, step count and learning rate are per class (leading dim of each param)."""

    def __init__(self, params, n, lr, kind="adam", betas=(0.9, 0.999), eps=1e-8):
        self.params, self.n, self.lr, self.kind, self.betas, self.eps = list(params), n, lr, kind, betas, eps
        dev = self.params[0].device
        self.state = {"step": torch.zeros(n, device=dev),
                      "m": [torch.zeros_like(p) for p in self.params], "v": [torch.zeros_like(p) for p in self.params]}

    @torch.no_grad()
    def step(self, upd, lr_scale, indexed: bool | None = None):
        """Update the classes where ``upd`` (n,) is True, with per-class lr ``self.lr * lr_scale``.

        Two paths with the same arithmetic per element: ``indexed`` (the default off CUDA) gathers the updated
        classes' rows and writes them back, so a batch-1 step touches one student's state instead of all n;
        the masked path (CUDA) updates every row through ``torch.where``, with no host read of ``upd``, so the
        step can be captured in a CUDA graph."""
        st = self.state
        st["step"] += upd.float()
        k = st["step"].clamp_min(1)
        lr = self.lr * lr_scale
        if indexed is None:
            indexed = upd.device.type != "cuda"
        if indexed:  # the updated classes' rows only, gathered and written back
            idx = upd.nonzero().flatten()
            if not len(idx):
                return
            k, lr = k[idx], lr[idx]
        for p, m, v in zip(self.params, st["m"], st["v"]):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            if indexed:
                p[idx], m[idx], v[idx] = self._update(p[idx], p.grad[idx], m[idx], v[idx], k, lr, shape)
                continue
            u = upd.view(shape)  # every row, kept where the class is not updated
            pn, mn, vn = self._update(p, p.grad, m, v, k, lr, shape)
            p.copy_(torch.where(u, pn, p))
            m.copy_(torch.where(u, mn, m))
            v.copy_(torch.where(u, vn, v))

    def _update(self, p, g, m, v, k, lr, shape):
        """One Adam (or SGD) step of rows ``p`` with gradient ``g``, state ``m``, ``v``, per-row step count ``k``
        and learning rate ``lr``: the new (p, m, v)."""
        if self.kind == "sgd":
            return p - lr.view(shape) * g, m, v
        b1, b2 = self.betas
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh = m / (1 - b1 ** k).view(shape)
        vh = v / (1 - b2 ** k).view(shape)
        return p - lr.view(shape) * mh / (vh.sqrt() + self.eps), m, v

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def state_dict(self):
        return {"step": self.state["step"].cpu(), "m": [t.cpu() for t in self.state["m"]],
                "v": [t.cpu() for t in self.state["v"]]}

    def load_state_dict(self, sd):
        dev = self.params[0].device
        self.state = {"step": sd["step"].to(dev), "m": [t.to(dev) for t in sd["m"]], "v": [t.to(dev) for t in sd["v"]]}


def _arch(cfg, input_shape):
    if cfg.arch != "auto":
        return cfg.arch
    return "cnn" if len(input_shape) == 3 and input_shape[0] > 1 else "mlp"


@register("pec", PECConfig)
class PEC(Strategy):
    """Prediction-error-based classification: per-class students imitating a frozen random teacher."""

    task_free = True  # lr_decay reads each class's sample count at the boundary: it refuses task-free streams

    def setup(self):
        if self.cfg.lr_decay:
            require_boundaries(self, "lr_decay spreads each class's learning rate over the class's samples in the "
                               "coming experience", "; or strategy.lr_decay=false")

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        from cl.core.registry import unknown

        if cfg.arch not in ("auto", "mlp", "cnn"):
            raise unknown("pec arch", cfg.arch, ("auto", "mlp", "cnn"))
        if cfg.optimizer not in ("adam", "sgd"):
            raise unknown("pec optimizer", cfg.optimizer, ("adam", "sgd"))
        arch = _arch(cfg, scenario.input_shape)
        d = DEFAULTS[arch]
        pick = lambda k: getattr(cfg, k) or d[k]  # noqa: E731
        return PECModel(scenario.n_classes, arch, scenario.input_shape, pick("width"), pick("d_out"),
                        pick("teacher_mult"), pick("pool"), cfg.score_all)

    def make_optimizer(self):
        arch = self.model.students.arch
        self.lr = self.cfg.lr or DEFAULTS[arch]["lr"]
        n = self.info.n_classes
        self.total = torch.zeros(n, device=self.device)  # training samples per class (lr decay horizon)
        self.consumed = torch.zeros(n, device=self.device)
        return PerClassOptimizer(self.model.students.parameters(), n, self.lr, self.cfg.optimizer)

    def before_experience(self, exp):
        if self.cfg.lr_decay:
            y = exp.train_y.to(self.device)
            # every pass of the offline protocol sees each sample once: decay over all of them
            self.total += torch.bincount(y, minlength=self.info.n_classes).float() * self.info.epochs

    def loss(self, x, y, t=None):
        x = x.float()
        with torch.no_grad():
            target = self.model.target(x)
        err = (self.model.students.forward_selected(x, y) - target).pow(2).mean(1)  # (B,)
        count = torch.bincount(y, minlength=self.info.n_classes).float()
        return (err / count[y]).sum()  # sum over classes of the per-class mean error

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        self.optimizer.zero_grad()
        loss = self.loss(x, y, t)
        loss.backward()
        count = torch.bincount(y, minlength=self.info.n_classes).float()
        if self.cfg.lr_decay:
            scale = torch.where(self.total > 0, (1 - self.consumed / self.total.clamp_min(1)).clamp_min(0), 1.0)
        else:
            scale = torch.ones_like(self.total)
        self.optimizer.step(count > 0, scale)
        self.consumed += count
        return loss.detach()

    def extra_state(self):
        return {"total": self.total.cpu(), "consumed": self.consumed.cpu()}

    def load_extra_state(self, state):
        if "total" in state:
            self.total, self.consumed = state["total"].to(self.device), state["consumed"].to(self.device)
