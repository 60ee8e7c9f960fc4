"""MIR: experience replay with Maximally Interfered Retrieval (Aljundi, Caccia, Belilovsky, Caccia, Lin,
Charlin, Tuytelaars; NeurIPS 2019), the ER-MIR variant.

Each step: the incoming batch's cross-entropy is back-propagated (gradient ``g``); ``subsample`` distinct
candidates are drawn uniformly from the reservoir buffer; a virtual SGD step ``theta' = theta - lr * g`` is
taken on a copy of the parameters; the ``replay_batch_size`` candidates whose loss rises most,
``CE(theta') - CE(theta)``, are replayed: their cross-entropy is back-propagated on top of ``g`` and one
optimiser step is taken (``L = CE_mean(B_t) + CE_mean(retrieved)``). The buffer is a reservoir, updated
after the step with the raw incoming batch (cl/models/buffers.py); the scores come from
cl/models/retrieval.py (``virtual_step``, ``loss_increase``).

Defaults and sources: official code optimass/Maximally_Interfered_Retrieval (``mir.py``,
``retrieve_replay_update``; ``Scripts/ER_experiments.sh``: lr 0.1, ``--subsample 50``, batch 10, buffer
batch 10, 1 iteration) and Mai et al.'s re-implementation RaptorMai/online-continual-learning
(``utils/buffer/mir_retrieve.py``, ``config_CVPR/agent/mir/*.yml``: subsample 50, eps_mem_batch 10, lr 0.1).

Memory. MIR's paper counts memory per class (CIFAR-10: 20 / 50 / 100 per class; ``er_main.py`` multiplies
``--mem_size`` by the number of classes). ``buffer_size`` here is the TOTAL number of samples (as in ER):
the paper's CIFAR-10 settings are ``buffer_size`` = 200 / 500 / 1000 (default 500 = 50 per class).

Choices the paper leaves open, and deviations:

* Candidates come from the whole buffer (Mai et al.; task-free). The official code excludes the current
  task's samples (``buffer.sample(..., exclude_task=task)``) and does not replay during the first task;
  ``exclude_current=true`` does that (it needs visible experience boundaries: a ConfigError otherwise).
* The virtual step is plain SGD at ``lr`` along the incoming gradient (both codes), whatever the optimiser
  (momentum, Adam) does with the real step.
* Scoring forward passes run in the model's current (training) mode, as in both codes. The pre-update pass
  runs on the live model, so it moves the BatchNorm running statistics with the candidate batch, as both
  codes' ``model(bx)`` / ``model.forward(sub_x)`` do (``score_moves_bn``, default true): the statistics the
  model is evaluated with then see ``subsample`` buffer samples a step beside the incoming and retrieved
  batches. The post-update pass runs on copies of the buffers (the codes' deep-copied model).
  ``score_moves_bn=false`` scores on copies only (the platform's behaviour before 2026-12-04; its runs have
  other run ids). Train-mode BatchNorm normalises with the batch's own statistics, so the scores are the
  same either way; only the running statistics used at test time differ.
* Candidates are scored on their stored (non-augmented) inputs; the incoming batch and the retrieved
  samples go through the run's on-device augmentation, if any, for the actual step (the authors' code
  has no augmentation).
* Fewer than ``replay_batch_size`` candidates (small buffer): all of them are replayed.
* Incoming and replay batches take separate forward passes (the retrieval needs the incoming gradient
  first), so ER's ``single_forward`` has no effect here.

Protocols: online and offline, task-free (``exclude_current=false``). Not graph-safe (host-sized draws).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import register
from cl.models.retrieval import loss_increase, virtual_step
from strategies.er import ER, ERConfig


@dataclass
class MIRConfig(ERConfig):
    buffer_size: int = 500  # TOTAL samples; MIR's paper: 20 / 50 / 100 per class = 200 / 500 / 1000 on CIFAR-10
    replay_batch_size: int = field(default=10, metadata={"min": 1})  # retrieved samples replayed per step
    subsample: int = field(default=50, metadata={"min": 1})  # candidates scored per step (C in the paper)
    score_moves_bn: bool = True  # the pre-update scoring pass moves the live BatchNorm running stats (both codes)

    def validate(self):
        if self.subsample < self.replay_batch_size:
            raise ConfigError(f"strategy 'mir': subsample={self.subsample} must be >= replay_batch_size="
                              f"{self.replay_batch_size} (the retrieved samples are the top replay_batch_size "
                              f"of the subsample candidates)")


@register("mir", MIRConfig)
class MIR(ER):
    """ER with maximally interfered retrieval: replay the candidates whose loss a virtual step raises most."""

    honours_exclude_current = True  # the candidates come from ER's draw

    def candidates(self) -> dict:
        """Up to ``subsample`` distinct buffer samples drawn uniformly (only past experiences' with
        ``exclude_current``: ER's draw)."""
        return self.draw(self.cfg.subsample, replace=False)

    def retrieve(self) -> dict:
        """The ``replay_batch_size`` candidates with the largest loss increase under the virtual step along
        the gradients now in ``p.grad`` (the incoming batch's)."""
        cand = self.candidates()
        if not cand:
            return {}
        scores = loss_increase(self.model, cand["x"], cand["y"], virtual_step(self.model, self.cfg.lr),
                               pre_moves_buffers=self.cfg.score_moves_bn)
        top = scores.topk(min(self.cfg.replay_batch_size, len(scores))).indices
        return {"x": cand["x"][top], "y": cand["y"][top], "index_in_candidates": top, "scores": scores}

    def train_step(self, x, y, t=None):
        self.model.observe(y)
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.augmented(x)).float(), y)
        loss.backward()
        mem = self.retrieve()
        if mem:
            replay = F.cross_entropy(self.model(self.augmented(mem["x"])).float(), mem["y"])
            replay.backward()
            loss = loss.detach() + replay.detach()
        self.before_optimizer_step(x, y, t)
        self.optimizer.step()
        self.after_step(x, y, t)
        return loss.detach()
