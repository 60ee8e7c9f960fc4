"""Synaptic Intelligence (Zenke, Poole, Ganguli, ICML 2017).

Loss on experience t: CE + c * sum_k Omega_k (theta_k - theta*_k)^2 (eq. 4; no 1/2, as in the paper, the
authors' code and Mammoth's ``si``). During training the path integral is accumulated per parameter,
omega += -g * delta_theta, where g is the gradient of the task loss alone (the authors' ``unreg_grads``;
Mammoth takes the gradient before adding the penalty's) and delta_theta the change the optimiser step made
(so momentum, Adam and weight decay are followed exactly). g is read in ``before_optimizer_step`` as
p.grad minus the penalty's closed-form gradient 2 c Omega (theta - theta*). At the end of an experience
Omega += omega / ((theta_end - theta_start)^2 + xi), theta* = theta_end and omega restarts (eq. 5).

Defaults c = 0.5, xi = 1.0: Mammoth's best seq-CIFAR-10 arguments (utils/best_args.py). Deviation:
Mammoth clips gradient values to [-1, 1] before the step; we do not (the paper does not).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.registry import ConfigError
from cl.core.strategy import StrategyConfig, register
from strategies._reg import PathPenalty, trainable, warn_if_stiff


@dataclass
class SIConfig(StrategyConfig):
    si_c: float = 0.5
    xi: float = 1.0  # damping


@register("si", SIConfig, "Synaptic intelligence (path-integral importance)")
class SI(PathPenalty):
    def setup(self):
        if self.cfg.si_c < 0 or not self.cfg.xi > 0:  # xi = 0: 0 / 0 for a parameter that did not move
            raise ConfigError(f"si: si_c must be >= 0 and xi > 0, got si_c={self.cfg.si_c}, xi={self.cfg.xi}")
        ps = trainable(self.model)
        self.omega = {n: torch.zeros_like(p) for n, p in ps.items()}  # running path integral
        self.big_omega = {n: torch.zeros_like(p) for n, p in ps.items()}
        self.anchor = {n: p.detach().clone() for n, p in ps.items()}  # theta at the start of the experience
        self.has_penalty = False
        self._g, self._before = {}, {}

    def penalty_coef(self):
        return self.cfg.si_c

    def penalty_weight(self):
        return self.big_omega

    @torch.no_grad()
    def before_optimizer_step(self, x, y, t=None):
        self.record_step_start()

    @torch.no_grad()
    def after_step(self, x, y, t=None):
        for n, p in trainable(self.model).items():
            self.omega[n] -= self._g[n] * (p - self._before[n])

    @torch.no_grad()
    def after_experience(self, exp):
        for n, p in trainable(self.model).items():
            self.big_omega[n] += self.omega[n] / ((p - self.anchor[n]).pow(2) + self.cfg.xi)
            self.anchor[n] = p.detach().clone()
            self.omega[n].zero_()
        self.has_penalty = True
        self._g, self._before = {}, {}
        warn_if_stiff("si", self.cfg.lr, 2 * self.cfg.si_c * max(float(v.max()) for v in self.big_omega.values()))

    def extra_state(self):
        cpu = lambda d: {n: v.cpu() for n, v in d.items()}
        return {"omega": cpu(self.omega), "big_omega": cpu(self.big_omega), "anchor": cpu(self.anchor),
                "has_penalty": self.has_penalty}

    def load_extra_state(self, state):
        dev = lambda d: {n: v.to(self.device) for n, v in d.items()}
        self.omega, self.big_omega, self.anchor = dev(state["omega"]), dev(state["big_omega"]), dev(state["anchor"])
        self.has_penalty = state["has_penalty"]
