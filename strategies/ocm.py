"""OCM: Online Continual Learning through Mutual Information Maximization (Guo, Liu, Zhao; ICML 2022).

Each input is expanded into rotated copies (16 in the code: each half of the image rotated by 180 degrees or
not, under global rotations by 0/90/180/270 degrees), and each copy is its own class (label ``y + k * C``).
The copies and one augmented view of each (flip, grayscale p=0.25, resized crop 0.3-1) give normalised
projections ``z`` (a linear projection head) and normalised encoder features ``f``; the similarity matrix is
``z z^T + z f[:, o:o+d]^T`` (``o`` a random offset) and the loss an InfoNCE with same-label positives
(``cl.models.contrastive``: ``ocm_instance_loss`` for the incoming batch, ``ocm_xent`` for the replay batch).
First experience: ``CE(aug(x_B)) + L_ins(B)``. Later experiences (a replay batch R of ``min(64, 7 * #seen
classes)``): ``CE(aug(x_R)) + L_ins(B) + L_uni(R) + L_pre(R) + MSE(old logits)`` with the similarity matrices
scaled by ``sim_scale`` (0.5 in the CIFAR-10 script), ``L_pre`` the InfoNCE between the current projections of
the rotated replay batch and those of the model frozen at the last boundary, and the MSE between the two
models' logits of the old classes on ``aug(x_R)``. The incoming batch gets no cross-entropy after the first
experience (as the code). Needs visible boundaries (the frozen model and the first-experience branch).

Source: gydpku/OCM ``test_cifar10.py`` (the step, oop=16, Adam lr 1e-3 betas (0.9, 0.99) wd 1e-4, replay
batch 64, 7 per class), ``InfoNCE/contrastive_learning.py`` (``Supervised_NT_xent_n/uni/pre``,
``get_similarity_matrix``), ``Resnet18.py`` (full ResNet-18, nf=64, and the 128-d ``simclr`` linear layer).
Paper protocol: full-width ResNet-18 (``backbone=resnet18``-like, nf=64), Adam, replay batch 64. The common
protocol here uses the reduced ResNet-18 (``resnet18r``): the defaults below are the paper's optimiser and
batch settings, whatever the backbone.

What is cut or changed (the loss itself is the authors'):
* The code's self-pair term of ``Supervised_NT_xent_n`` (``-log(eps)``, a constant) is left out of the value.
* The frozen model runs in eval mode (the code's deepcopy stays in train mode: BatchNorm batch statistics).
  Its logits and the current model's are computed on the *same* augmented replay batch (the code draws two).
* Old classes = the classes seen before the current experience (the code: indices < 2 * task id).
* The label offset of the rotations is the number of classes (the code's 100 for CIFAR).
* ``rotations=4`` (global rotations only) or 1 are cheaper settings, not the paper's; non-image inputs use 1.
* The projection size is ``min(proj_dim, feature size)``; the offset ``o`` is drawn from
  ``[0, max(1, D - d))`` (the code's ``randperm(D - d)[0]``).
* No mixed precision (the code uses apex O1). Predictions: the linear head masked to the classes seen.
Cost: (10 + 64) inputs x 16 rotations x 2 views = 2,368 images per step (ER: 20); measured ~330x ER's step on
the shared CPU (benchmarks/results/ocl2.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.strategy import register
from cl.models.contrastive import ocm_instance_loss, ocm_xent
from cl.models.frozen import FrozenCopy
from strategies._contrastive import (
    ContrastiveReplay,
    RotationConfig,
    RotationContrast,
    check_positive,
    model_with_projection,
)
from strategies._boundaries import require_boundaries


@dataclass
class OCMConfig(RotationConfig):
    buffer_size: int = 500  # total samples
    temperature: float = 0.07
    sim_scale: float = 0.5  # scale of the similarity matrices after the first experience (CIFAR-10 script)

    def validate(self):
        super().validate()
        check_positive(self, "temperature")


@register("ocm", OCMConfig, "Online CL through mutual information maximisation (rotations + InfoNCE, KD)")
class OCM(RotationContrast, ContrastiveReplay):
    cfg_name = "ocm"

    build_model = classmethod(lambda cls, cfg, backbone, scenario: model_with_projection(cfg, backbone, scenario))

    def setup(self):
        require_boundaries(self, "the model frozen at the last boundary and the first-experience branch")
        super().setup()
        self.teacher = FrozenCopy()
        self.old_classes: list[int] = []

    def loss(self, x, y, t=None):
        pair, _ = self.rotated_pair(x)
        ry = self.rot_labels(y, x)
        if not self.teacher:  # first experience
            f, z = self.embed(pair)
            l_ins = ocm_instance_loss(self.sim(f, z, 1.0), ry, self.cfg.temperature)
            return F.cross_entropy(self.model(self.views(x)).float(), y) + l_ins
        n_seen = int(self.model.head.seen.sum().item())
        mem = self.buffer.sample(min(self.cfg.replay_batch_size, self.cfg.per_class_cap * n_seen), replace=False)
        pair_r, rot_r = self.rotated_pair(mem["x"])
        ry_r = self.rot_labels(mem["y"], mem["x"])
        f_all, z_all = self.embed(torch.cat([pair, pair_r]))
        nb = len(pair)
        f, z, f_r, z_r = f_all[:nb], z_all[:nb], f_all[nb:], z_all[nb:]
        s = self.cfg.sim_scale
        l_ins = ocm_instance_loss(self.sim(f, z, s), ry, self.cfg.temperature)
        l_uni = ocm_xent(self.sim(f_r, z_r, s), ry_r.repeat(2), self.cfg.temperature)
        with torch.no_grad():
            z_pre = F.normalize(self.teacher.module.proj(self.teacher.features(rot_r).flatten(1)).float(), dim=1)
        l_pre = ocm_xent(z_r[:len(rot_r)] @ z_pre.t(), ry_r, self.cfg.temperature)
        xa = self.views(mem["x"])
        logits = self.model(xa).float()
        old = torch.tensor(self.old_classes, dtype=torch.long, device=self.device)
        l_kd = F.mse_loss(self.teacher(xa).float()[:, old], logits[:, old])
        return F.cross_entropy(logits, mem["y"]) + l_ins + l_uni + l_pre + l_kd

    def after_experience(self, exp):
        self.teacher.take(self.model)
        self.old_classes = self.model.head.seen.nonzero().flatten().tolist()

    def extra_state(self):
        return {**super().extra_state(), "teacher": self.teacher.state_dict(), "old_classes": list(self.old_classes)}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.teacher = FrozenCopy()
        self.teacher.load_state_dict(state["teacher"], like=self.model)
        self.old_classes = list(state["old_classes"])
