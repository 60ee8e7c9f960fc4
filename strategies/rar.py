"""RAR: Repeated Augmented Rehearsal on experience replay (Zhang, Pfahringer, Frank, Bifet, Lim, Jia;
NeurIPS 2022), the ER-RAR variant.

Each incoming batch is trained on ``iterations`` times. Every iteration draws a fresh replay batch from the
reservoir buffer, augments the replay and incoming samples afresh and takes one ER step
(``CE_mean(B_t) + CE_mean(replay)``, one forward pass over ``[incoming; replay]``: strategies/er.py). The
buffer is updated once, after the last iteration, with the raw incoming batch. Repetition makes a single
pass fit the memory better; the augmentation keeps the repeated replay from overfitting it.

Defaults and sources: official code YaqianZhang/RepeatedAugmentedRehearsal (``agents/exp_replay.py``:
``mem_iters`` iterations per batch, a new ``concat_memory_batch`` and augmentation in each, the memory update
after the loop, ``mem_ratio = incoming_ratio = 1``; ``run_commands/runs/run_test_rar_er_cifar100.sh`` and
``command_er_raug.sh``: ``--mem_iters 10 --randaug True --randaug_N 1 --randaug_M 14 --aug_target both``,
``eps_mem_batch 10``, SGD lr 0.1, reduced ResNet-18). ``augment="randaug"`` is the code's RandAugment
(its 16-operation list at magnitude ``randaug_m``/30, strategies/_rar.py) applied to both the replay and the
incoming samples; any kind of cl/data/augment.py (``crop_flip``, ``crop_flip_jitter``, ``pcr``) or ``none``
can be chosen instead. ``buffer_size`` is total (the code's ``mem_size``; its CIFAR-100 runs use 2000).

Choices and deviations:

* The code's runs also pass ``--nmc_trick True`` (a nearest-class-mean classifier at test) to RAR and to its
  baselines alike; here prediction is the softmax head, as ER's. Use the ``ncm`` strategy for NCM.
* The code augments per image through PIL; here the batch is augmented on the device with the same
  operations and values (strategies/_rar.py lists the approximations). At 32x32 its two translations
  (46.7 px) produce black images, as the code does.
* The adaptive variants of the code (dynamic iterations, RL-tuned augmentation) are not implemented.
* The returned loss is the mean over the iterations.

Protocols: online (the method's protocol) and offline (every batch of every epoch repeated), task-free.
``augment`` other than ``none`` needs image inputs (a ConfigError otherwise). Not graph-safe.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import register
from cl.data.augment import KINDS, Augment
from strategies._rar import RandAugment
from strategies.er import ER, ERConfig

AUGMENTS = ("randaug",) + KINDS


@dataclass
class RARConfig(ERConfig):
    iterations: int = field(default=10, metadata={"min": 1})  # repeated steps per incoming batch (mem_iters)
    augment: str = "randaug"  # randaug | none | crop_flip | crop_flip_jitter | pcr
    randaug_n: int = field(default=1, metadata={"min": 1})  # operations per image
    randaug_m: int = field(default=14, metadata={"min": 0, "max": 30})  # magnitude (of 30)

    def validate(self):
        if self.augment not in AUGMENTS:
            raise unknown("strategy.augment", self.augment, AUGMENTS)


@register("rar", RARConfig)
class RAR(ER):
    """ER repeated ``iterations`` times per incoming batch, each time with fresh replay and augmentation."""

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        model = super().build_model(cfg, backbone, scenario)
        # the scenario's normalisation, for undoing it before augmenting (outside the module's registries)
        object.__setattr__(model, "_rar_norm", (getattr(scenario, "mean", None), getattr(scenario, "std", None)))
        return model

    def setup(self):
        super().setup()
        kind = self.cfg.augment
        if kind == "none":
            return
        if len(self.info.input_shape) != 3:
            raise ConfigError(f"strategy 'rar': augment={kind!r} needs image inputs, got input shape "
                              f"{tuple(self.info.input_shape)} (valid for this scenario: none)")
        mean, std = getattr(self.model, "_rar_norm", (None, None))
        if kind == "randaug":
            self.augment = RandAugment(self.cfg.randaug_n, self.cfg.randaug_m, mean, std)
        else:
            self.augment = Augment(kind, mean, std, device=self.device)

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        losses = []
        for _ in range(self.cfg.iterations):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(x, y, t)  # ER's: a new replay draw, a new augmentation of both
            loss.backward()
            self.before_optimizer_step(x, y, t)
            self.optimizer.step()
            losses.append(loss.detach())
        self.after_step(x, y, t)
        return torch.stack(losses).mean()
