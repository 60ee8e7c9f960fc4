"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) and online EWC (Schwarz et al., ICML 2018,
"Progress & Compress", section 4; also Huszar 2018).

Loss on experience t: CE + (lambda / 2) * sum_k F_k (theta - theta*_k)^2 over the earlier experiences k
(``online=false``: one Fisher and one anchor per experience), or, with ``online=true``, a single running
term (lambda / 2) * F* (theta - theta*) with F* <- gamma * F* + F_t and theta* = the weights at the end
of the latest experience (Schwarz et al. eq. 8-9).

Choices the papers leave open, and ours:
* Fisher: the diagonal empirical Fisher, F = mean over the experience's training samples of the squared
  per-sample gradient of the log-likelihood of the true label (``fisher_samples`` > 0 takes a random subset).
  Per-sample gradients, not squared batch gradients (Avalanche squares batch means, which underestimates F).
  Mammoth's ``ewc_on`` also uses per-sample gradients but weights each by p(y|x); we do not.
  Computed at the end of the experience, model in eval mode (BatchNorm running statistics), no augmentation.
* All trainable parameters are regularised, the head included (unseen classes have zero gradient, hence
  zero Fisher, until they appear).
* The penalty has the papers' factor 1/2; Mammoth's ``ewc_on`` has none (its e_lambda = our lambda / 2).
* lambda: plain SGD on the penalty diverges where lr * lambda * F > 2. The per-sample empirical Fisher of the
  small CNN on split CIFAR-10 reaches ~1e4 (mean ~100) after three experiences (measured), so lambda = 100
  gave a non-finite loss at lr 0.05; the default lambda = 1e-3 keeps lr * lambda * max F below 2 there and
  gives lambda * F ~ 0.1 on an average parameter. A warning names the bound when a boundary crosses it.
  gamma = 1 (Mammoth's best seq-CIFAR-10 value).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, register
from cl.models.task_keys import model_preprocess
from strategies._reg import (
    build_model,
    per_sample_grads,
    quad_penalty,
    trainable,
    warn_if_stiff,
)


@dataclass
class EWCConfig(StrategyConfig):
    ewc_lambda: float = 1e-3  # see the docstring: the empirical Fisher of a CNN reaches ~1e4
    online: bool = False  # online EWC (Schwarz et al. 2018): one running Fisher, decayed by gamma
    gamma: float = 1.0  # decay of the running Fisher (online only)
    fisher_samples: int = 0  # 0: every training sample of the experience
    fisher_chunk: int = 64  # per-sample gradients computed this many at a time


def fisher_diag(model, x, y, preprocess, chunk=64) -> dict:
    """Empirical diagonal Fisher: mean over samples of the squared per-sample gradient of log p(y|x)."""
    acc = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
    for g in per_sample_grads(model, x, y, lambda out, t: F.cross_entropy(out, t), preprocess, chunk):
        for n, v in g.items():
            acc[n] += v.pow(2).sum(0)
    return {n: v / max(1, len(y)) for n, v in acc.items()}


@register("ewc", EWCConfig, "Elastic weight consolidation (diagonal Fisher); online=true: online EWC")
class EWC(Strategy):
    def setup(self):
        c = self.cfg
        if c.ewc_lambda < 0 or not 0 <= c.gamma <= 1 or c.fisher_samples < 0 or c.fisher_chunk < 1:
            raise ConfigError(f"ewc: ewc_lambda must be >= 0, gamma in [0, 1], fisher_samples >= 0 and fisher_chunk >= 1, "
                              f"got ewc_lambda={c.ewc_lambda}, gamma={c.gamma}, fisher_samples={c.fisher_samples}, "
                              f"fisher_chunk={c.fisher_chunk}")
        self.preprocess = model_preprocess(self.model, self.device)
        self.terms: list[dict] = []  # [{"fisher": {name: tensor}, "anchor": {name: tensor}}]

    build_model = classmethod(lambda cls, cfg, backbone, scenario: build_model(cfg, backbone, scenario))

    def penalty(self) -> torch.Tensor:
        ps = trainable(self.model)
        return 0.5 * self.cfg.ewc_lambda * sum(quad_penalty(ps, term["fisher"], term["anchor"]) for term in self.terms)

    def loss(self, x, y, t=None):
        loss = super().loss(x, y, t)
        return loss + self.penalty() if self.terms else loss

    def after_experience(self, exp):
        x, y = exp.train_x, exp.train_y
        if 0 < self.cfg.fisher_samples < len(y):
            idx = torch.randperm(len(y), device=y.device)[: self.cfg.fisher_samples]
            x, y = x[idx], y[idx]
        fisher = fisher_diag(self.model, x, y, self.preprocess, self.cfg.fisher_chunk)
        anchor = {n: p.detach().clone() for n, p in trainable(self.model).items()}
        if self.cfg.online and self.terms:
            old = self.terms[0]["fisher"]
            fisher = {n: self.cfg.gamma * old[n] + f for n, f in fisher.items()}
            self.terms = []
        self.terms.append({"fisher": fisher, "anchor": anchor})
        total = {n: sum(term["fisher"][n] for term in self.terms) for n in fisher}
        warn_if_stiff("ewc", self.cfg.lr, self.cfg.ewc_lambda * max(float(v.max()) for v in total.values()))

    def extra_state(self):
        return {"terms": [{k: {n: v.cpu() for n, v in d.items()} for k, d in term.items()} for term in self.terms]}

    def load_extra_state(self, state):
        self.terms = [{k: {n: v.to(self.device) for n, v in d.items()} for k, d in term.items()}
                      for term in state.get("terms", [])]
