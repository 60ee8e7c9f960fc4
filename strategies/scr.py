"""SCR: Supervised Contrastive Replay (Mai, Li, Kim, Sanner; CVPR Workshops 2021; arXiv 2103.13885).

Each step: draw a replay batch (random, without replacement) from a reservoir buffer, take the incoming and
replayed samples together, ``B = [replay; incoming]``, and two views of it, ``B`` itself and one augmented copy
(random resized crop 0.2-1, flip, colour jitter p=0.8, grayscale p=0.2); minimise the supervised contrastive
loss (Khosla et al. 2020; ``cl.models.contrastive.supcon_loss``) of the normalised projections
``normalize(g(f(x)))`` of both views. No cross-entropy, no classifier is trained. At test time the classifier
is the nearest class mean: class means of the L2-normalised encoder features ``f(x)`` of the buffer's samples
(eval mode), themselves normalised; a test sample goes to the nearest mean (here: the largest cosine, the same
ranking as SCR's Euclidean distance between normalised vectors). Task-free: nothing reads a boundary (the
optional review step below runs at visible boundaries only).

Source: RaptorMai/online-continual-learning ``agents/scr.py`` (the step), ``utils/loss.py`` (SupConLoss, mode
``all``), ``models/resnet.py::SupConResNet`` (projection head Linear(d, d)-ReLU-Linear(d, 128)),
``agents/base.py::evaluate`` (NCM) and ``after_train`` (review trick), ``config_CVPR/agent/scr/*.yml``.

Defaults (authors' code): SGD lr 0.1, no momentum, no weight decay; replay batch 100 (``eps_mem_batch``);
temperature 0.07 (the README's command; the CVPR config files say 0.1); projection ``mlp`` to 128.
``review_trick`` (on in the CVPR configs): at each visible boundary one pass over the buffer in batches of
``replay_batch_size`` with the same loss and the gradients divided by 10. In the code (``agents/base.py::
after_train``) each review batch first goes through ``model.forward`` once more in training mode and the
output is discarded before the two views are computed: no gradient, but BatchNorm's running statistics
(which the eval-mode NCM readout uses) move once more per batch. ``review_extra_forward`` (default true, as
the code) makes that pass (the encoder only: the projection head has no BatchNorm).

Choices the paper leaves open / deviations:
* The buffer is empty at the first step: the authors skip the step (no update); so does this (loss 0).
* The two views go through the network in two forward passes (as the code: BatchNorm normalises each view
  with its own batch statistics).
* The scenario's own augmentation (``scenario.augment``) is not applied: the method's views are its
  augmentation. The colour jitter is computed as kornia 0.4.1's ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` that the
  code calls (``view_jitter=kornia``, ``cl.data.colour``: additive brightness, multiplicative contrast, HSV
  saturation and hue, one random order per batch); the crop resamples with ``grid_sample`` (reflection at the
  border), where kornia crops and resizes.
* NCM over the *current* encoder: the means are recomputed from the whole buffer when the model has trained
  since the last computation (every predicting call of the online protocol after a step: one forward pass
  over the buffer). ``ncm_every=k`` recomputes at most every k steps (cheaper online accuracy; not the paper);
  a boundary always recomputes them, so the accuracy matrix R (final accuracy, forgetting) is the current
  encoder's whatever k; anytime evaluations between boundaries may use means up to k - 1 steps old.
  A seen class with no sample in the buffer scores 0 (the code draws a random mean).
* ``mem_iters`` (iterations per incoming batch) is fixed at 1, the paper's setting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.strategy import StrategyConfig, register
from cl.models.contrastive import (
    VIEW_JITTERS,
    VIEW_KINDS,
    ContrastiveModel,
    ProjectionHead,
    supcon_loss,
)
from cl.models.prototypes import PrototypeHead
from strategies._contrastive import (
    ContrastiveReplay,
    check_choice,
    check_positive,
    record_stats,
)


@dataclass
class SCRConfig(StrategyConfig):
    buffer_size: int = 500  # total samples
    replay_batch_size: int = 100  # eps_mem_batch (config_CVPR/agent/scr)
    temperature: float = 0.07
    projection: str = "mlp"  # mlp | linear
    proj_dim: int = 128
    view_augment: str = "scr"  # scr | ocm | none
    view_jitter: str = "kornia"  # how scr's colour jitter is computed: kornia | torchvision | plain
    review_trick: bool = True  # one buffer pass at each visible boundary, gradients / 10
    review_extra_forward: bool = True  # the code's unused training-mode forward of each review batch (BN stats)
    ncm_every: int = 1  # recompute the NCM means at most every k training steps (1: always current)
    eval_chunk: int = 256  # buffer samples per forward pass when computing the means

    def validate(self):
        check_choice("projection", self.projection, ProjectionHead.KINDS)
        check_choice("view_augment", self.view_augment, VIEW_KINDS)
        check_choice("view_jitter", self.view_jitter, VIEW_JITTERS)
        check_positive(self, "temperature", "replay_batch_size", "proj_dim", "ncm_every", "eval_chunk")


@register("scr", SCRConfig, "Supervised contrastive replay (SupCon on [replay; incoming], NCM classifier)")
class SCR(ContrastiveReplay):
    cfg_name = "scr"
    state_attrs = ("steps", "means_at")
    task_free = True  # the review step at a boundary runs only when boundaries are visible

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        d = backbone.out_dim
        head = PrototypeHead(d, scenario.n_classes, metric="cosine", normalize=True)
        return record_stats(ContrastiveModel(backbone, head, ProjectionHead(d, cfg.proj_dim, cfg.projection)), scenario)

    def setup(self):
        super().setup()
        self.steps, self.means_at = 0, -1

    def contrastive_loss(self, x, y):
        z1 = self.model.project(self.model.features(x))
        z2 = self.model.project(self.model.features(self.views(x)))
        return supcon_loss(torch.stack([z1, z2], 1), y, self.cfg.temperature)

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        self.steps += 1
        mem = self.buffer.sample(self.cfg.replay_batch_size, replace=False)
        if not mem:  # the authors skip the update while the buffer is empty
            self.after_step(x, y, t)
            return torch.zeros((), device=y.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.contrastive_loss(torch.cat([mem["x"], x]), torch.cat([mem["y"], y]))
        loss.backward()
        self.optimizer.step()
        self.after_step(x, y, t)
        return loss.detach()

    def after_experience(self, exp):
        self.means_at = -1  # the boundary's evaluation (row i of R) uses the current encoder, whatever ncm_every
        bs = self.cfg.replay_batch_size
        if not self.cfg.review_trick or self.info.boundaries != "visible" or len(self.buffer) < bs:
            return
        was = self.model.training
        self.model.train()
        items = self.buffer.items()
        order = torch.randperm(len(self.buffer), device=self.device)
        for s in range(0, len(order) - bs + 1, bs):  # drop_last, as the authors' loader
            idx = order[s:s + bs]
            if self.cfg.review_extra_forward:  # the code's discarded forward: moves BatchNorm's running stats only
                with torch.no_grad():
                    self.model.features(items["x"][idx])
            self.optimizer.zero_grad(set_to_none=True)
            self.contrastive_loss(items["x"][idx], items["y"][idx]).backward()
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.div_(10.0)
            self.optimizer.step()
        self.steps += 1
        self.model.train(was)

    @torch.no_grad()
    def refresh_means(self):
        """Class means of the buffer's normalised encoder features (the model's current mode, eval at test)."""
        head = self.model.head
        head.sums.zero_()
        head.counts.zero_()
        items = self.buffer.items()
        for s in range(0, len(self.buffer), self.cfg.eval_chunk):
            head.update(self.model.features(items["x"][s:s + self.cfg.eval_chunk]),
                        items["y"][s:s + self.cfg.eval_chunk])
        self.means_at = self.steps

    def predict(self, x, t=None):
        if len(self.buffer) == 0:
            return self.model.head(self.model.features(x))
        if self.means_at < 0 or self.steps - self.means_at >= self.cfg.ncm_every:
            self.refresh_means()
        return self.model.head(self.model.features(x))
