"""DER++ (Buzzega et al., NeurIPS 2020): DER plus a label-replay term on a second, independent replay batch:
``L = CE(f(x), y) + alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')``.

Everything else is DER's (strategies/der.py: unmasked stored logits, reservoir buffer, separate forward
passes, CE over every output by default). The two replay batches are drawn independently, as in mammoth ``models/derpp.py``.
Defaults alpha 0.1, beta 0.5, lr 0.03: mammoth ``utils/best_args.py`` (d75fe5f), seq-CIFAR-10, buffer 200.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from cl.core.strategy import register
from strategies.der import DER, DERConfig


@dataclass
class DERPPConfig(DERConfig):
    alpha: float = 0.1
    beta: float = 0.5  # weight of the label-replay CE


@register("derpp", DERPPConfig)
class DERPP(DER):
    """DER++: logit matching plus cross-entropy on a second replay batch."""

    def replay_loss(self, t=None):
        mse = super().replay_loss(t)
        if mse is None:
            return None
        mem = self.buffer.sample(self.cfg.replay_batch_size)
        ce = F.cross_entropy(self.ce_logits(self.model.raw_logits(self.augmented(mem["x"])).float()), mem["y"])
        return mse + self.cfg.beta * ce
