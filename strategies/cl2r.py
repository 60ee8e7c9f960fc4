"""CL2R: Compatible Lifelong Learning Representations (Biondi, Pernici, Bruni, Mugnai & Del Bimbo,
ACM TOMM 2023, arXiv 2211.09032; methods.md section 10b), with the compatibility evaluation
(:mod:`cl.core.compatibility`).

Model: backbone -> ``fc1`` (Linear without bias) to ``d = K - 1`` features -> a **fixed d-simplex
classifier**: the ``K`` (all classes of the scenario, allocated from the start as the authors allocate
all 100) rows are the vertices of a regular simplex in R^d, centred and unit norm, so every pair has
cosine ``-1/d = -1/(K-1)`` (the authors' ``dsimplex``).  They are a buffer, not a parameter: no gradient,
never changed by training ("global stationarity").  Logits are not masked to seen classes (the authors
train on all K outputs).

Loss ("local stationarity"): cross-entropy on the whole batch + ``lambda`` * cosine-embedding loss
``mean(1 - cos(f_new, f_old))`` between the L2-normalised features of the current model and of the model
frozen at the last boundary, **on the memory samples only**.  Each batch is the engine's batch of new
samples plus as many memory samples (drawn without replacement), i.e. half memory and half new as the
authors' ``BalancedBatchSampler``.  ``lambda = fd_weight * sqrt(new classes / old classes)``
(``update_criterion_weight``; base 5).  Memory: ``mem_per_class`` (20) random samples per class, fixed
once chosen (continuum's ``RehearsalMemory(herding_method="random", fixed_memory=True)``).

Compatibility evaluation: after each experience the model's ``fc1`` features of one fixed evaluation set
(the test data of every experience, all classes, as the authors use the whole test set for every model;
at most ``compat_samples``, a fixed subset, 0 = all) are kept; row ``i`` of the compatibility matrix C
is retrieval with model ``i``'s features as queries and each earlier model's features as gallery.  C, the
criterion, AC, AM, BC and FC go into the result's metrics (``extra_metrics``); draw C with
:func:`cl.sweeps.compat_plot.plot_compatibility`.

Deviations / choices: retrieval accuracy (1-NN, cosine) instead of the authors' pair verification (see
:mod:`cl.core.compatibility`); the frozen copy is a local deep copy until ``cl/models/frozen.py`` lands
(its state_dict is in ``extra_state``); the evaluation set and the preprocessing are taken from the
scenario in ``build_model`` (the engine gives strategies no evaluation-set hook).  Works in class- and
task-incremental settings (task ids are not used).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.core.compatibility import compatibility_metrics, compatibility_row
from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class CL2RConfig(StrategyConfig):
    mem_per_class: int = 20
    fd_weight: float = 5.0  # criterion_weight_base
    compat_samples: int = 0  # evaluation-set size for the compatibility matrix (0 = every test sample)


def dsimplex(n_classes: int) -> torch.Tensor:
    """``n_classes`` unit vectors in R^(n_classes-1), the centred vertices of a regular simplex."""
    d = n_classes - 1
    t = torch.zeros(d + 1, d, dtype=torch.float64)
    t[:-1] = torch.eye(d, dtype=torch.float64)
    t[-1] += (1.0 - math.sqrt(1.0 + d)) / d
    t -= t.mean(0)
    return (t / t.norm(dim=1, keepdim=True)).float()


class SimplexModel(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ValueError("the d-simplex classifier needs at least 2 classes")
        self.backbone = backbone
        self.fc1 = nn.Linear(backbone.out_dim, n_classes - 1, bias=False)
        self.register_buffer("simplex", dsimplex(n_classes))  # fixed classifier: no gradient, never trained

    def observe(self, y):
        pass

    def features(self, x):
        return self.fc1(self.backbone(x))

    def forward(self, x):
        return self.features(x) @ self.simplex.t()


@register("cl2r", CL2RConfig)
class CL2R(Strategy):
    """Fixed d-simplex classifier + feature distillation on memory samples; compatibility matrix."""
    transient_attrs = ("n_new",)  # the current experience's class count: set by before_experience

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        model = SimplexModel(backbone, scenario.n_classes)
        model.preprocess_fn = scenario.preprocess_fn
        model.eval_set = [(e.test_x, e.test_y) for e in scenario.experiences]
        return model

    def setup(self):
        c = self.cfg
        if c.mem_per_class < 1 or c.fd_weight < 0 or c.compat_samples < 0:
            raise ConfigError(f"cl2r: mem_per_class must be >= 1, fd_weight >= 0 and compat_samples >= 0 (0: every test "
                              f"sample), got mem_per_class={c.mem_per_class}, fd_weight={c.fd_weight}, "
                              f"compat_samples={c.compat_samples}")
        self.preprocess = self.model.preprocess_fn(self.device)
        x = torch.cat([x for x, _ in self.model.eval_set])
        y = torch.cat([y for _, y in self.model.eval_set]).to(self.device)
        n = self.cfg.compat_samples
        if 0 < n < len(y):
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.info.seed))[:n].to(y.device)
            x, y = x[idx.to(x.device)], y[idx]
        self.eval_x, self.eval_y = x, y
        self.mem_x = self.mem_y = None
        self.old = None  # frozen model of the last boundary (a closure, rebuilt from old_state)
        self.old_state = None
        self.n_old = 0
        self.n_new = 0
        self.gallery = []  # fc1 features of the evaluation set, one tensor per boundary
        self.C = []  # rows of the compatibility matrix

    def before_experience(self, exp):
        self.n_new = len(exp.classes)

    def _old_features(self, x):
        if self.old is None:
            m = copy.deepcopy(self.model)
            m.load_state_dict(self.old_state)
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            self.old = m.features
        with torch.no_grad():
            return self.old(x)

    def loss(self, x, y, t=None):
        if self.mem_y is None:
            return super().loss(x, y, t)
        k = min(len(y), len(self.mem_y))
        idx = torch.randperm(len(self.mem_y), device=self.mem_y.device)[:k]
        mx = self.preprocess(self.mem_x[idx])
        both = torch.cat([mx, x])
        both = self.augmented(both)
        feats = self.model.features(both)
        ce = F.cross_entropy((feats @ self.model.simplex.t()).float(), torch.cat([self.mem_y[idx], y]))
        new, old = F.normalize(feats[:k].float(), dim=1), F.normalize(self._old_features(both[:k]).float(), dim=1)
        fd = (1 - (new * old).sum(1)).mean()  # F.cosine_embedding_loss with target 1
        lam = self.cfg.fd_weight * math.sqrt(self.n_new / max(1, self.n_old))
        return ce + lam * fd

    @torch.no_grad()
    def features_of(self, x_raw, bs: int = 512) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        out = torch.cat([self.model.features(self.preprocess(x_raw[i:i + bs])).float()
                         for i in range(0, len(x_raw), bs)])
        self.model.train(was)
        return out

    def after_experience(self, exp):
        # memory: mem_per_class random samples of each new class, fixed from now on
        xs, ys = [], []
        for c in exp.classes:
            idx = (exp.train_y == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), device=idx.device)[:self.cfg.mem_per_class]]
            xs.append(exp.train_x[idx])
            ys.append(exp.train_y[idx])
        if self.mem_y is not None:
            xs, ys = [self.mem_x] + xs, [self.mem_y] + ys
        self.mem_x, self.mem_y = torch.cat(xs), torch.cat(ys)
        self.n_old += len(exp.classes)
        self.old_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.old = None
        self.gallery.append(self.features_of(self.eval_x))
        self.C.append(compatibility_row(self.gallery, self.eval_y))

    def extra_metrics(self) -> dict:
        return compatibility_metrics(self.C) if self.C else {}

    def extra_state(self):
        return {"mem_x": self.mem_x, "mem_y": self.mem_y, "old_state": self.old_state, "n_old": self.n_old,
                "gallery": list(self.gallery), "C": [list(r) for r in self.C]}

    def load_extra_state(self, state):
        self.mem_x, self.mem_y, self.old_state = state["mem_x"], state["mem_y"], state["old_state"]
        self.n_old, self.gallery, self.C = state["n_old"], list(state["gallery"]), [list(r) for r in state["C"]]
        self.old = None
