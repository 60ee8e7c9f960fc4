"""OnPro: Online Prototype Learning for Online Continual Learning (Wei, Ye, Huang, Zhang, Li; ICCV 2023).

OCM's instance-wise contrastive loss (rotations, ``RotationContrast`` shared with ``ocm``) plus:
* **Online prototype equilibrium (OPE)** -- ``cl.models.contrastive.prototype_contrastive_loss``: the class
  means of the two views' normalised projections within a batch are contrasted (a class's prototype in view 1
  is the positive of its prototype in view 2), on the incoming batch (its un-rotated copies) and on a buffer
  batch, temperature 0.5.
* **Adaptive prototypical feedback (APF)** -- the replay batch is mixed up: a share (``mixup_base_rate`` 0.75)
  by in-batch mixup (probability 0.6, lambda uniform in [0, 0.6]); the rest from pairs of classes drawn with
  probability ``softmax(1 / distance)`` between their prototypes (the buffer batch's, from the last step), two
  buffer samples of the pair mixed with lambda ~ Beta(0.4, 0.4) (with probability 0.6 per pair, else none).
First experience: ``CE(aug(x_B)) + L_ins(B) + OPE(B) + OPE(buffer)``; later: ``CE_mix(aug(x_R~)) + L_ins(B) +
L_uni(R~) + OPE(B) + OPE(R)`` where ``R~`` is the APF-mixed replay batch of ``min(64, 7 * #seen classes)``
(no APF at the first batch of an experience, as the code), ``sim_scale`` 0.5 on later similarity matrices
(CIFAR-10; 1.0 for CIFAR-100 in the code). Predictions: the linear head (masked to the classes seen).

Source: weilllllls/OnPro ``train.py`` (the steps), ``modules/OPE.py``, ``modules/APF.py``, ``losses/loss.py``,
``main.py`` (defaults: Adam lr 5e-4, betas (0.9, 0.99), weight decay 1e-4 (``multi_runs.py``), buffer batch
64, ``proto_t`` 0.5, ``ins_t`` 0.07, mixup 0.75 / 0.4 / 0.6 / [0, 0.6], ``oop`` 16), ``models/Resnet18.py``
(full ResNet-18, nf=64, 128-d linear projection). Paper protocol: full-width ResNet-18, Adam, replay batch 64;
the common protocol here uses the reduced ResNet-18 (``resnet18r``) with these defaults.

Boundaries. With visible boundaries the two branches follow the experiences as in the code. Task-free
(``boundaries=none``): the first branch runs at the first step only (empty buffer), the later branch from the
second step on (deviation: the code has no task-free mode).

Deviations and choices:
* OCM's constant self-pair term is left out of ``L_ins`` (see ``ocm``); no mixed precision.
* The mixed replay samples keep the code's rotation labels ``(1 - lam) * y_a + lam * y_b + k * C`` (a float
  label: a mixed sample is a positive only of identically mixed ones), as the code does.
* With fewer than two prototypes (APF's class-pair part is undefined; the code would fail its assert), the
  whole replay batch takes the in-batch mixup part.
* The rotation label offset is the number of classes; projection size ``min(proj_dim, feature size)``.
* Randomness comes from torch's generator (the code mixes numpy's and kornia's).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import register
from cl.models.contrastive import (
    ocm_instance_loss,
    ocm_xent,
    prototype_contrastive_loss,
)
from strategies._contrastive import (
    ContrastiveReplay,
    RotationConfig,
    RotationContrast,
    check_positive,
    model_with_projection,
)


@dataclass
class OnProConfig(RotationConfig):
    lr: float = 5e-4
    buffer_size: int = 200  # the code's default (CIFAR-10 grid 100 / 200 / 500)
    ins_temperature: float = 0.07
    proto_temperature: float = 0.5
    sim_scale: float = 0.5  # 0.5 CIFAR-10, 1.0 CIFAR-100 / TinyImageNet in the code
    mixup_base_rate: float = 0.75
    mixup_alpha: float = 0.4
    mixup_p: float = 0.6
    mixup_lower: float = 0.0
    mixup_upper: float = 0.6

    def validate(self):
        super().validate()
        check_positive(self, "ins_temperature", "proto_temperature", "mixup_alpha")
        for name in ("mixup_base_rate", "mixup_p", "mixup_lower", "mixup_upper"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"strategy.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.mixup_lower > self.mixup_upper:
            raise ConfigError(f"strategy.mixup_lower ({self.mixup_lower}) must be <= strategy.mixup_upper "
                              f"({self.mixup_upper})")


@register("onpro", OnProConfig, "Online prototype learning (OCM's contrast + prototype equilibrium + APF mixup)")
class OnPro(RotationContrast, ContrastiveReplay):
    cfg_name = "onpro"
    state_attrs = ("classes_mean", "boundaries_seen", "first_batch")
    task_free = True  # boundaries are read only when visible (first_phase, first_batch)

    build_model = classmethod(lambda cls, cfg, backbone, scenario: model_with_projection(cfg, backbone, scenario))

    def setup(self):
        super().setup()
        self.classes_mean = torch.zeros(self.info.n_classes, self.model.proj.net.out_features, device=self.device)
        self.boundaries_seen, self.first_batch = 0, True

    # -- pieces ----------------------------------------------------------------------------------------
    def buffer_ope(self, bx, by):
        """OPE on a buffer batch and its augmented view; keeps the prototypes for APF."""
        z = self.model.project(self.model.features(torch.cat([bx, self.views(bx)])).flatten(1))
        loss, p1, p2 = prototype_contrastive_loss(z[:len(bx)], z[len(bx):], by, self.info.n_classes,
                                                  self.cfg.proto_temperature)
        self.classes_mean = ((p1 + p2) / 2).detach()
        return loss

    def apf(self, mx, my, n):
        """Adaptive prototypical feedback: (mixed inputs, (n, 3) labels [y_a, y_b, lam])."""
        cfg, dev = self.cfg, self.device
        present = self.classes_mean.abs().sum(1) > 0
        classes = present.nonzero().flatten().tolist()
        n_base = n if len(classes) < 2 else int(n * cfg.mixup_base_rate)
        idx = torch.randperm(len(mx), device=dev)[:n_base]
        xb, yb = mx[idx], my[idx]
        perm = torch.randperm(len(xb), device=dev)
        lam = torch.empty(len(xb), device=dev).uniform_(cfg.mixup_lower, cfg.mixup_upper)
        lam = lam * (torch.rand(len(xb), device=dev) < cfg.mixup_p)
        lam_x = lam.view(-1, *([1] * (xb.dim() - 1)))
        xs = [(1 - lam_x) * xb + lam_x * xb[perm]]
        ys = [torch.stack([yb.float(), yb[perm].float(), lam], 1)]
        n_prob = n - len(xb)
        if n_prob > 0:
            means = self.classes_mean[present]
            p = F.softmax(1 / torch.pdist(means), 0)
            counts = (p * n_prob).round()
            diff = int(n_prob - counts.sum().item())
            if diff > 0:
                counts[torch.randperm(len(counts), device=dev)[:diff]] += 1
            elif diff < 0:
                nz = counts.nonzero().flatten()
                counts[nz[torch.randperm(len(nz), device=dev)[:-diff]]] -= 1
            items = self.buffer.items()
            by = items["y"]
            stored = sorted(set(by.tolist()))
            for (a, b), k in zip(combinations(classes, 2), counts.long().tolist()):
                if k == 0:
                    continue
                a, b = (c if c in stored else stored[int(torch.randint(len(stored), ()))] for c in (a, b))
                ia, ib = (by == a).nonzero().flatten(), (by == b).nonzero().flatten()
                xa = items["x"][ia[torch.randint(len(ia), (k,), device=dev)]]
                xb2 = items["x"][ib[torch.randint(len(ib), (k,), device=dev)]]
                if torch.rand(()) <= cfg.mixup_p:
                    lam = torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha).sample((k,)).to(dev)
                else:
                    lam = torch.zeros(k, device=dev)
                lam_x = lam.view(-1, *([1] * (xa.dim() - 1)))
                xs.append((1 - lam_x) * xa + lam_x * xb2)
                ys.append(torch.stack([torch.full((k,), float(a), device=dev), torch.full((k,), float(b), device=dev),
                                       lam], 1))
        return torch.cat(xs), torch.cat(ys)

    # -- the step ----------------------------------------------------------------------------------------
    def first_phase(self) -> bool:
        if self.info.boundaries == "visible":
            return self.boundaries_seen == 0
        return len(self.buffer) == 0

    def loss(self, x, y, t=None):
        cfg, n = self.cfg, len(y)
        pair, rot = self.rotated_pair(x)
        ry, nr = self.rot_labels(y, x), len(rot)
        if self.first_phase():
            f, z = self.embed(pair)
            loss = ocm_instance_loss(self.sim(f, z, 1.0), ry, cfg.ins_temperature)
            if len(self.buffer):
                mem = self.buffer.sample(cfg.replay_batch_size, replace=False)
                loss = loss + self.buffer_ope(mem["x"], mem["y"])
            loss = loss + prototype_contrastive_loss(z[:n], z[nr:nr + n], y, self.info.n_classes,
                                                     cfg.proto_temperature)[0]
            return loss + F.cross_entropy(self.model(self.views(x)).float(), y)
        n_seen = int(self.model.head.seen.sum().item())
        mem = self.buffer.sample(min(cfg.replay_batch_size, cfg.per_class_cap * n_seen), replace=False)
        ox, oy = mem["x"], mem["y"]
        if self.first_batch:
            mx, mix = ox, None
            my = oy.float()
        else:
            mx, mix = self.apf(ox, oy, len(ox))
            my = (1 - mix[:, 2]) * mix[:, 0] + mix[:, 2] * mix[:, 1]
        pair_r, _ = self.rotated_pair(mx)
        ry_r = self.rot_labels(my, mx)
        f_all, z_all = self.embed(torch.cat([pair, pair_r]))
        nb = len(pair)
        s = cfg.sim_scale
        loss = (ocm_instance_loss(self.sim(f_all[:nb], z_all[:nb], s), ry, cfg.ins_temperature)
                + ocm_xent(self.sim(f_all[nb:], z_all[nb:], s), ry_r.repeat(2), cfg.ins_temperature))
        logits = self.model(self.views(mx)).float()
        if mix is None:
            ce = F.cross_entropy(logits, oy)
        else:
            la = F.cross_entropy(logits, mix[:, 0].long(), reduction="none")
            lb = F.cross_entropy(logits, mix[:, 1].long(), reduction="none")
            ce = ((1 - mix[:, 2]) * la + mix[:, 2] * lb).mean()
        z = z_all[:nb]
        return (ce + loss + self.buffer_ope(ox, oy)
                + prototype_contrastive_loss(z[:n], z[nr:nr + n], y, self.info.n_classes, cfg.proto_temperature)[0])

    def train_step(self, x, y, t=None):
        out = super().train_step(x, y, t)
        self.first_batch = False
        return out

    def before_experience(self, exp):
        if self.info.boundaries == "visible":  # task-free runs read no boundary
            self.first_batch = True

    def after_experience(self, exp):
        self.boundaries_seen += 1
