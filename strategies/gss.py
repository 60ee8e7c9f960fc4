"""GSS-Greedy: gradient-based sample selection (Aljundi, Lin, Goujaud, Bengio; NeurIPS 2019), the greedy
variant (Algorithm 2), with experience replay.

The buffer keeps samples whose gradients point in diverse directions. Each stored sample carries a score,
the maximal cosine similarity of its gradient to the gradients of ``mem_strength`` random buffer subsets
(of ``gss_batch_size`` samples each) at the time it was admitted. After each step, with the model in eval
mode:

* while the buffer has room, the incoming samples are stored (what does not fit is dropped), each with its
  score (0.1 for the very first batch, as in both codes);
* once it is full, the incoming batch's gradient is compared with the random subsets' gradients; if its
  maximal cosine similarity is below ``sim_threshold`` (0), ``b`` buffer slots are drawn without replacement
  with probability proportional to their min-max normalised scores ``(s - min) / (max - min + 0.01)``, and
  incoming sample i replaces drawn slot i with probability ``c_i / (c_i + c_new)``, where ``c = (s + 1) / 2``
  rescales a cosine to [0, 1] (``c_i`` the slot's, ``c_new`` the incoming sample's own score). A sample
  whose gradient opposes the buffer's (score -1) always enters; one aligned with it (score 1) enters only
  against an equally redundant slot. A batch whose gradient is aligned with the buffer is not considered.

Replay is ER's (strategies/er.py: ``replay_batch_size`` uniform draws, ``CE(B_t) + CE(replay)``).

Defaults and sources: Mai et al.'s re-implementation RaptorMai/online-continual-learning
(``utils/buffer/gss_greedy_update.py``; ``config_CVPR/agent/gss/*.yml``: lr 0.1, gss_mem_strength 10,
gss_batch_size 10, eps_mem_batch 10, one iteration, memory counted in total), which is what the online-CL
tables (SCR, ASER, OCM) run. The official code rahafaljundi/Gradient-based-Sample-Selection
(``model/GSS_Greedy.py``, ``Cifar_10.sh``) uses lr 0.01, a buffer of 1000, ``memory_strength`` 10,
``change_th`` 0 and ``n_iter`` 10 iterations per batch, each a step on the incoming batch followed by a
separate step on a replay batch: set ``lr=0.01``, ``buffer_size=1000`` for its memory and rate (the
iterations and the separate steps are not implemented).

Choices and deviations:

* Gradients: of the mean cross-entropy over the trainable parameters (the platform's masked head: seen
  classes only), per incoming sample and per subset as in both codes (cl/models/retrieval.py
  ``group_grads``): one backward pass each on a CPU, one vmapped pass for all on a GPU (same values; tested
  equal on CPU; the GPU path is not measured here).
* Degenerate draws: the authors' ``torch.multinomial`` calls fail when every weight is zero (all buffer
  scores equal, or both replacement weights 0); here a 1e-12 floor is added to the weights, which makes
  those draws uniform and leaves every other draw unchanged to 1e-12.
* The decision reads one value on the host per step (the batch similarity): not graph-safe.

Protocols: online and offline, task-free (no boundary is used).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cl.core.strategy import register
from cl.models.retrieval import group_grads
from strategies.er import ER, ERConfig

_FLOOR = 1e-12


@dataclass
class GSSConfig(ERConfig):
    buffer_size: int = 500  # total samples (Mai et al. 200 / 500 / 1000; GSS's paper: 1000 on CIFAR-10)
    mem_strength: int = field(default=10, metadata={"min": 1})  # random buffer subsets per score
    gss_batch_size: int = field(default=10, metadata={"min": 1})  # samples per random subset
    sim_threshold: float = field(default=0.0, metadata={"min": -1.0, "max": 1.0})  # batch enters below this


def max_cosine(G: torch.Tensor, g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``max_j cos(G_j, g_i)`` for each row ``g_i`` of ``g`` (rows of ``G``: the subsets' gradients)."""
    num = g @ G.t()
    den = (g.norm(dim=1, keepdim=True) * G.norm(dim=1)[None, :]).clamp_min(eps)
    return (num / den).max(dim=1).values


@register("gss", GSSConfig)
class GSS(ER):
    """ER whose buffer admits samples by gradient diversity (GSS-Greedy)."""

    @property
    def vectorize(self) -> bool:
        """vmap the per-sample / per-subset gradients on a GPU; on a CPU one backward pass each is as fast."""
        return self.device.type == "cuda"

    def memory_grads(self) -> torch.Tensor:
        """Gradients of up to ``mem_strength`` disjoint random subsets of the buffer, one row each."""
        items = self.buffer.items()
        n = len(items["y"])
        bs = min(self.cfg.gss_batch_size, n)
        s = min(self.cfg.mem_strength, n // bs)
        pick = torch.randperm(n, device=self.device)[: s * bs]
        x, y = items["x"][pick], items["y"][pick]
        return group_grads(self.model, x.view(s, bs, *x.shape[1:]), y.view(s, bs), self.vectorize)

    def batch_grad(self, x, y) -> torch.Tensor:
        return group_grads(self.model, x[None], y[None], self.vectorize)[0]

    def sample_scores(self, G, x, y) -> torch.Tensor:
        """Each incoming sample's score: the maximal cosine of its own gradient to the subsets' gradients."""
        return max_cosine(G, group_grads(self.model, x[:, None], y[:, None], self.vectorize))

    def after_step(self, x, y, t=None):
        was = self.model.training
        self.model.eval()
        try:
            self.admit(x, y)
        finally:
            self.model.train(was)

    @torch.no_grad()
    def admit(self, x, y):
        buf = self.buffer
        cap, n = buf.capacity, len(buf)
        if cap == 0:
            return
        if n < cap:
            r = min(cap - n, len(y))
            x, y = x[:r], y[:r]
            score = (torch.full((r,), 0.1, device=self.device) if n == 0
                     else self.sample_scores(self.memory_grads(), x, y))
            buf.add(x=x, y=y, score=score)
            return
        G = self.memory_grads()
        if not bool(max_cosine(G, self.batch_grad(x, y)[None])[0] < self.cfg.sim_threshold):  # one host read
            return
        scores = buf.items()["score"]
        w = (scores - scores.min()) / (scores.max() - scores.min() + 0.01)
        b = min(len(y), cap)
        x, y = x[:b], y[:b]
        slots = torch.multinomial(w + _FLOOR, b, replacement=False)
        new = self.sample_scores(G, x, y)
        pair = (torch.stack([new, scores[slots]], dim=1) + 1).div(2).clamp_min(0) + _FLOOR  # cosines to [0, 1]
        replace = torch.multinomial(pair, 1).squeeze(1).bool()  # outcome 1: the slot is replaced
        buf.update(slots[replace], x=x[replace], y=y[replace], score=new[replace])
