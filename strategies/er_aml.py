"""ER-AML: experience replay with the asymmetric metric-learning loss (Caccia, Aljundi, Asadi, Tuytelaars,
Pineau, Belilovsky; "New Insights on Reducing Abrupt Representation Change in Online Continual Learning",
ICLR 2022; authors' code pclucas14/AML ``methods/er_aml.py``, ``buffer.py::sample_pos_neg``).

Incoming samples get no cross-entropy once replay has begun: each incoming sample ``x`` (anchor) gets a
positive ``p`` (same label, another sample) and a negative ``n`` (different label, among the classes of
the incoming batch), both drawn uniformly from the buffer plus the incoming batch, and the loss is the
supervised-contrastive loss of the anchors against all the batch's positives and negatives:
``L_inc = -(T / T_b) * mean_a [ mean_{c: y_c = y_a} log softmax_c(<h_a, h_c> / T) ]`` over the
L2-normalised backbone features ``h`` (``h / (||h|| + 1e-5)``), contrast set ``{p_j} u {n_j}``. Replayed
samples get ordinary CE: ``L = L_inc + CE(f(x_R), y_R)``.

Choices, from the authors' code:

* T = 0.2 (``--supcon_temperature``), T_b = 0.07 (``sup_con_loss``'s ``base_temperature``).
* Anchors without a valid positive or negative are left out (no loss when none is valid).
* Before the AML phase (the first experience, with visible boundaries, AML's task-based default
  ``task_free=0``), incoming samples get plain CE and there is no replay. With hidden boundaries the AML
  phase and replay start as soon as the buffer holds a sample (AML's ``task_free=1``).
* Negatives come from the classes present in the incoming batch (AML's task-free rule); AML's
  task-based rule (same task id) picks from the current task's classes, which in a class-incremental
  split is the same set whenever the batch holds all of them.
* Buffer, replay batch (10) and reservoir update after the step: ER's (strategies/er.py). The incoming
  and positive/negative features come from separate forward passes (as AML), all augmented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.core.strategy import register
from strategies.er import ER, ERConfig


@dataclass
class ERAMLConfig(ERConfig):
    temperature: float = 0.2
    base_temperature: float = 0.07


def normalize(h: torch.Tensor) -> torch.Tensor:
    return h / (h.norm(dim=1, keepdim=True) + 1e-5)


def aml_loss(anchor, contrast, anchor_y, contrast_y, temperature, base_temperature):
    """SupCon of normalised ``anchor`` features against ``contrast`` features (positives: same label)."""
    logits = anchor @ contrast.t() / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    log_prob = logits - logits.exp().sum(1, keepdim=True).log()
    pos = (anchor_y[:, None] == contrast_y[None, :]).float()
    return -(temperature / base_temperature) * ((pos * log_prob).sum(1) / pos.sum(1)).mean()


@register("er-aml", ERAMLConfig)
class ERAML(ER):
    """ER with AML: metric-learning loss on incoming samples, CE on replay."""

    # task-free (ER's declaration): the boundary index (ER's exp_index) only delays AML with visible
    # boundaries (aml_phase)

    def aml_phase(self) -> bool:
        if len(self.buffer) == 0:
            return False
        return self.info.boundaries != "visible" or self.exp_index > 0

    def pos_neg(self, x, y):
        """Positive and negative indices into [buffer; incoming] per incoming sample, and validity."""
        items = self.buffer.items()
        bx, by = torch.cat([items["x"], x]), torch.cat([items["y"], y])
        m, b = len(items["y"]), len(y)
        same = by[:, None] == y[None, :]  # (m + b, b)
        self_ex = torch.zeros_like(same)
        self_ex[m + torch.arange(b, device=y.device), torch.arange(b, device=y.device)] = True
        in_batch = (by[:, None] == y.unique()[None, :]).any(1, keepdim=True)
        valid_pos, valid_neg = same & ~self_ex, ~same & in_batch
        ok = valid_pos.any(0) & valid_neg.any(0)
        valid_pos[:, ~ok] = True  # so the draw does not fail; these anchors are dropped
        valid_neg[:, ~ok] = True
        pi = torch.multinomial(valid_pos.t().float(), 1).squeeze(1)
        ni = torch.multinomial(valid_neg.t().float(), 1).squeeze(1)
        return bx, by, pi, ni, ok

    def loss(self, x, y, t=None):
        if not self.aml_phase():
            return F.cross_entropy(self.model(self.augmented(x)).float(), y)
        bx, by, pi, ni, ok = self.pos_neg(x, y)
        loss = torch.zeros((), device=y.device)
        if bool(ok.any()):
            h = normalize(self.model.features(self.augmented(x)).float())[ok]
            hc = normalize(self.model.features(self.augmented(torch.cat([bx[pi], bx[ni]]))).float())
            v = len(ok)
            hc = torch.cat([hc[:v][ok], hc[v:][ok]])
            yc = torch.cat([by[pi][ok], by[ni][ok]])
            loss = aml_loss(h, hc, y[ok], yc, self.cfg.temperature, self.cfg.base_temperature)
        mem = self.buffer.sample(self.cfg.replay_batch_size)
        return loss + F.cross_entropy(self.model(self.augmented(mem["x"])).float(), mem["y"])
