"""RWalk: Riemannian Walk (Chaudhry, Dokania, Ajanthan, Torr, ECCV 2018), section 4.

Loss on experience t > 0: CE + lambda * sum (F* + s)(theta - theta*)^2 (eq. 9), theta* and F* taken at the end
of the previous experience.
* Fisher (eq. 10): a running diagonal empirical Fisher, updated at every step from the task loss's batch
  gradient, F <- alpha g^2 + (1 - alpha) F (alpha = 0.9 weights the new estimate, as the paper's moving average).
* Score (eq. 7-8): along the training path, per step, s += -g * delta_theta / (1/2 F delta_theta^2 + eps), with
  g the task-loss gradient (p.grad minus the penalty's closed-form gradient, read in ``before_optimizer_step``),
  delta_theta the step's change and F the running Fisher at that step. At the end of an experience negative
  scores are set to 0 and the score is averaged with the previous one, s <- (s_prev + s_t) / 2 (page 8);
  F* = the running Fisher.

Choices: eps = 0.1 (FACIL's ``damping``; the paper gives no value); lambda = 1 (FACIL's default); the Fisher
and scores are not rescaled (FACIL does not either); every trainable parameter, the head included, is
regularised. FACIL's RWalk computes its score once per task from the summed path integral (an SI-like
approximation); this one follows the paper's per-step ratio.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, register
from strategies._reg import PathPenalty, trainable, warn_if_stiff


@dataclass
class RWalkConfig(StrategyConfig):
    rwalk_lambda: float = 1.0
    fisher_alpha: float = 0.9  # weight of the new batch estimate in the running Fisher
    eps: float = 0.1


@register("rwalk", RWalkConfig, "RWalk: running Fisher + per-step path score (KL-normalised path integral)")
class RWalk(PathPenalty):
    def setup(self):
        c = self.cfg
        if c.rwalk_lambda < 0 or not 0 <= c.fisher_alpha <= 1 or not c.eps > 0:  # eps = 0: 0 / 0 where a step is 0
            raise ConfigError(f"rwalk: rwalk_lambda must be >= 0, fisher_alpha in [0, 1] and eps > 0, got "
                              f"rwalk_lambda={c.rwalk_lambda}, fisher_alpha={c.fisher_alpha}, eps={c.eps}")
        ps = trainable(self.model)
        z = lambda: {n: torch.zeros_like(p) for n, p in ps.items()}
        self.fisher, self.path, self.score, self.fisher_star = z(), z(), z(), z()
        self.anchor = {n: p.detach().clone() for n, p in ps.items()}
        self.has_penalty = False
        self._g, self._before = {}, {}

    def penalty_coef(self):
        return self.cfg.rwalk_lambda

    def penalty_weight(self):
        return {n: self.fisher_star[n] + self.score[n] for n in self.score}

    @torch.no_grad()
    def before_optimizer_step(self, x, y, t=None):
        a = self.cfg.fisher_alpha
        for n in self.record_step_start():
            self.fisher[n].mul_(1 - a).add_(a * self._g[n].pow(2))

    @torch.no_grad()
    def after_step(self, x, y, t=None):
        for n, p in trainable(self.model).items():
            d = p - self._before[n]
            self.path[n] += -self._g[n] * d / (0.5 * self.fisher[n] * d.pow(2) + self.cfg.eps)

    @torch.no_grad()
    def after_experience(self, exp):
        for n, p in trainable(self.model).items():
            s_t = self.path[n].clamp_min(0)
            self.score[n] = (self.score[n] + s_t) / 2 if self.has_penalty else s_t
            self.path[n].zero_()
            self.fisher_star[n] = self.fisher[n].clone()
            self.anchor[n] = p.detach().clone()
        self.has_penalty = True
        self._g, self._before = {}, {}
        warn_if_stiff("rwalk", self.cfg.lr, 2 * self.cfg.rwalk_lambda * max(float(v.max()) for v in self.penalty_weight().values()))

    def extra_state(self):
        cpu = lambda d: {n: v.cpu() for n, v in d.items()}
        return {k: cpu(getattr(self, k)) for k in ("fisher", "path", "score", "fisher_star", "anchor")} | \
            {"has_penalty": self.has_penalty}

    def load_extra_state(self, state):
        for k in ("fisher", "path", "score", "fisher_star", "anchor"):
            setattr(self, k, {n: v.to(self.device) for n, v in state[k].items()})
        self.has_penalty = state["has_penalty"]
