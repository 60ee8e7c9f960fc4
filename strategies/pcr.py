"""PCR: Proxy-based Contrastive Replay (Lin, Zhang, Feng, Li, Wang, Ye; CVPR 2023; arXiv 2304.04408).

The classifier is a cosine head whose class weights are the proxies (``CosineHead``, logits = cos / 0.09). Each
step: the incoming batch and a replay batch each with an augmented copy, ``[x_R; aug(x_R); x_B; aug(x_B)]``;
the loss is the proxy-based contrastive loss (``cl.models.contrastive.proxy_contrastive_loss``): each
normalised encoder feature is an anchor, and the contrast set is the normalised proxy of every sample of the
same batch, so only the classes present in the batch compete (each as often as it appears), and the
anchor-to-sample pairs of SupCon are replaced by anchor-to-proxy pairs. Test time: the cosine head, masked to
the classes seen. Task-free.

Source: FelixHuiweiLin/PCR ``agents/pcr.py`` (the step), ``utils/loss.py`` (SupConLoss mode ``proxy``),
``models/resnet.py`` (``cosLinear``, scale 0.09; ``pcrForward``), ``agents/base.py::evaluate`` (masked cosine
logits), ``general_main.py`` (defaults), ``utils/setup_elements.py::transforms_aug`` (the augmentation).

Defaults (authors' ``general_main.py``): SGD lr 0.1, replay batch 10 (``eps_mem_batch``), ``pcr_temp`` 0.09
(also the head's temperature, as in the code where both are 0.09), ``mem_iters`` 1.

Choices the paper leaves open / deviations:
* While the buffer is empty (the first step) the authors' loss is ``0 * CE`` (no update); here too.
* All four parts go through the network in one forward pass per source (replay, incoming), as the code.
* The augmentation is SCR's recipe (``view_augment=scr``) with torchvision's colour jitter, hue 0.1 and a
  random order per sample, as the code's ``transforms_aug`` (``view_jitter=torchvision``, ``cl.data.colour``);
  the scenario's own augmentation is not applied. The code augments PIL uint8 images on the CPU per sample
  (rounding after each step); here float batches on the device.
* The head's temperature and the loss temperature are one field (``temperature``); the code has two that are
  both 0.09 (``cosLinear.scale`` is fixed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.core.strategy import StrategyConfig, register
from cl.models.contrastive import VIEW_JITTERS, VIEW_KINDS, proxy_contrastive_loss, two_views
from cl.models.heads import CosineHead
from cl.models.model import Model
from strategies._contrastive import (
    ContrastiveReplay,
    check_choice,
    check_positive,
    record_stats,
)


@dataclass
class PCRConfig(StrategyConfig):
    buffer_size: int = 500  # total samples
    replay_batch_size: int = 10  # eps_mem_batch
    temperature: float = 0.09  # pcr_temp and cosLinear's scale
    view_augment: str = "scr"  # scr | ocm | none
    view_jitter: str = "torchvision"  # how scr's colour jitter is computed: kornia | torchvision | plain

    def validate(self):
        check_choice("view_augment", self.view_augment, VIEW_KINDS)
        check_choice("view_jitter", self.view_jitter, VIEW_JITTERS)
        check_positive(self, "temperature", "replay_batch_size")


@register("pcr", PCRConfig, "Proxy-based contrastive replay (anchor-to-proxy loss over the batch's classes)")
class PCR(ContrastiveReplay):
    cfg_name = "pcr"

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        return record_stats(Model(backbone, CosineHead(backbone.out_dim, scenario.n_classes, cfg.temperature)), scenario)

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        mem = self.buffer.sample(self.cfg.replay_batch_size, replace=False)
        if not mem:  # the code's 0 * CE: no update
            self.after_step(x, y, t)
            return torch.zeros((), device=y.device)
        self.optimizer.zero_grad(set_to_none=True)
        f_mem = self.model.features(two_views(mem["x"], self.views))
        f_new = self.model.features(two_views(x, self.views))
        labels = torch.cat([mem["y"], mem["y"], y, y])
        loss = proxy_contrastive_loss(torch.cat([f_mem, f_new]).flatten(1), self.model.head.weight, labels,
                                      self.cfg.temperature)
        loss.backward()
        self.optimizer.step()
        self.after_step(x, y, t)
        return loss.detach()
