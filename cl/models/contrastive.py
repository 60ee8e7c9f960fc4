"""Shared pieces of the contrastive online-CL strategies (SCR, PCR, OCM, OnPro; docs/strategies-ocl2.md).

* :func:`supcon_loss` -- the supervised contrastive loss of Khosla et al. (NeurIPS 2020), "L_out" form, every
  view of every sample an anchor (``contrast_mode='all'`` of the reference code, as SCR uses it)::

      L = 1/|A| sum_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

  over the ``N*V`` rows ``z`` (L2-normalised), ``P(i)`` = the other rows with the label of ``i``.
  No ``tau / base_tau`` factor (SCR's copy of the loss has none). An anchor without positives (only possible
  with one view) is left out of the mean.
* :func:`proxy_contrastive_loss` -- PCR's proxy-based contrastive loss (Lin et al., CVPR 2023;
  FelixHuiweiLin/PCR ``utils/loss.py`` mode ``proxy``): each normalised feature is an anchor, the contrast set
  is the normalised class weight (proxy) of every row of the same batch, so only the classes present in the
  batch compete, each with its multiplicity: ``-[s(i, y_i) - log sum_j exp s(i, y_j)]`` with
  ``s = cos / tau``.
* :func:`ocm_xent` -- the "soft-target" InfoNCE of OCM (Guo et al., ICML 2022; gydpku/OCM
  ``InfoNCE/contrastive_learning.py``, ``Supervised_NT_xent_*``), which OnPro reuses.
* :func:`prototype_contrastive_loss` -- OnPro's online prototype equilibrium (Wei et al., ICCV 2023;
  weilllllls/OnPro ``modules/OPE.py``): a SimCLR loss between the two views' class prototypes of a batch.
* :func:`ocm_rotations` -- OCM's 16 rotation copies (4 half-image 180-degree flips x 4 global rotations), with
  the label offsets that make each rotation its own class.
* :class:`ProjectionHead`, :class:`ContrastiveModel` (backbone + head + projection head),
  :class:`ViewAugment` (the methods' own second-view augmentations on normalised batches, built from the ops
  of :mod:`cl.data.augment`), :func:`two_views`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cl.core.registry import unknown
from cl.data.augment import (
    colour_jitter,
    random_flip,
    random_grayscale,
    random_resized_crop,
)
from cl.data.colour import JITTERS
from cl.data.colour import jitter as library_jitter
from cl.models.model import Model

VIEW_KINDS = ("scr", "ocm", "none")
VIEW_JITTERS = JITTERS + ("plain",)


# -- losses -------------------------------------------------------------------------------------------
def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss of ``z`` (N, V, D), L2-normalised along D, with ``labels`` (N,)."""
    n, v, _ = z.shape
    feats = z.transpose(0, 1).reshape(n * v, -1).float()  # view-major rows, as torch.cat(unbind(z, 1))
    lab = labels.repeat(v)
    logits = feats @ feats.t() / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    not_self = ~torch.eye(n * v, dtype=torch.bool, device=z.device)
    pos = (lab[:, None] == lab[None, :]) & not_self
    log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True))
    npos = pos.sum(1)
    per_anchor = -(log_prob * pos).sum(1) / npos.clamp_min(1)
    has = npos > 0
    return (per_anchor * has).sum() / has.sum().clamp_min(1)


def proxy_contrastive_loss(feats: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor,
                           temperature: float = 0.09, eps: float = 1e-6) -> torch.Tensor:
    """PCR's loss: anchors ``feats`` (M, D), contrast set the proxies ``proxies[labels]`` of the same rows."""
    f = feats.float()
    w = proxies[labels].float()
    f = f / (f.norm(dim=1, keepdim=True) + eps)  # the authors' epsilon-normalisation
    w = w / (w.norm(dim=1, keepdim=True) + eps)
    logits = f @ w.t() / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    pos = (labels[:, None] == labels[None, :]).float()  # the diagonal is a positive here (no self-mask)
    log_prob = logits - torch.logsumexp(logits, 1, keepdim=True)
    return (-(log_prob * pos).sum(1) / pos.sum(1)).mean()


def ocm_xent(sim: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07, mask_self: bool = False,
             eps: float = 1e-8) -> torch.Tensor:
    """OCM's supervised InfoNCE on a precomputed similarity matrix ``sim`` (R, C) with row/column ``labels``
    (R == C): ``mean_i sum_j w_ij * -log(p_ij + eps)``, ``p_ij = exp(sim_ij/tau) / sum_k exp(sim_ik/tau)``,
    ``w_ij = [y_i == y_j] / #{k: y_k == y_i}`` (the count includes ``i`` itself, as in the authors' code).
    ``mask_self``: the diagonal is out of the denominator (``Supervised_NT_xent_n``); its own term,
    ``-log(eps)`` in the code, is a constant without gradient and is left out here."""
    s = sim.float()
    s = s - s.max(1, keepdim=True).values.detach()
    e = torch.exp(s / temperature)
    if mask_self:
        e = e * ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    nll = -torch.log(e / e.sum(1, keepdim=True) + eps)
    same = (labels[:, None] == labels[None, :]).float()
    w = same / same.sum(1, keepdim=True)
    if mask_self:
        w = w * ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return (w * nll).sum(1).mean()


def ocm_instance_loss(sim: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                      eps: float = 1e-8) -> torch.Tensor:
    """OCM's ``Supervised_NT_xent_n`` on the 2B x 2B matrix of [view 1; view 2] (labels of the B rows of one
    view): twice the self-masked :func:`ocm_xent` plus the pair term, the mean over rows of ``-log p`` of
    each row's other view."""
    b = len(labels)
    lab = labels.repeat(2)
    s = sim.float()
    s = s - s.max(1, keepdim=True).values.detach()
    e = torch.exp(s / temperature) * ~torch.eye(2 * b, dtype=torch.bool, device=s.device)
    nll = -torch.log(e / e.sum(1, keepdim=True) + eps)
    idx = torch.arange(2 * b, device=s.device)
    pair = nll[idx, (idx + b) % (2 * b)].mean()
    return 2 * ocm_xent(sim, lab, temperature, mask_self=True, eps=eps) + pair


def ocm_similarity(proj: torch.Tensor, feats: torch.Tensor, offset: int, scale: float = 1.0) -> torch.Tensor:
    """OCM's similarity matrix: ``scale * (z z^T + z f[:, offset:offset+d]^T)`` of the normalised projections
    ``z`` (R, d) and a d-wide slice of the normalised features ``f`` (R, D >= d)."""
    d = proj.shape[1]
    return scale * (proj @ proj.t() + proj @ feats[:, offset:offset + d].t())


def class_means(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means of the rows of ``z`` (zeros for absent classes) and the presence mask."""
    sums = torch.zeros(n_classes, z.shape[1], device=z.device, dtype=z.dtype).index_add(0, y, z)
    counts = torch.zeros(n_classes, device=z.device, dtype=z.dtype).index_add(0, y, torch.ones_like(y, dtype=z.dtype))
    return sums / counts.clamp_min(1)[:, None], counts > 0


def prototype_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, n_classes: int,
                               temperature: float = 0.5):
    """OnPro's online prototype equilibrium loss (``modules/OPE.py``): the batch's class means of the two views'
    projections, L2-normalised, in a SimCLR loss where a class's prototype in one view is the positive of its
    prototype in the other and every other prototype of either view a negative. Returns the loss and the two
    views' (unnormalised) means, (n_classes, d), zero rows for classes absent from the batch."""
    p1, present = class_means(z1.float(), y, n_classes)
    p2, _ = class_means(z2.float(), y, n_classes)
    a, b = F.normalize(p1[present], dim=1), F.normalize(p2[present], dim=1)
    k = len(a)
    p = torch.cat([a, b])
    logits = p @ p.t() / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    not_self = ~torch.eye(2 * k, dtype=torch.bool, device=p.device)
    log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True))
    idx = torch.arange(2 * k, device=p.device)
    return -log_prob[idx, (idx + k) % (2 * k)].mean(), p1, p2


# -- rotations ------------------------------------------------------------------------------------------
def _half_flips(x: torch.Tensor) -> torch.Tensor:
    """4 copies: the left and the right half (along the width) each rotated by 180 degrees or not."""
    w = x.shape[-1] // 2
    left, right = x[..., :w], x[..., w:]
    rl, rr = left.flip(-2, -1), right.flip(-2, -1)
    return torch.cat([x, torch.cat([rl, right], -1), torch.cat([rl, rr], -1), torch.cat([left, rr], -1)])


def ocm_rotations(x: torch.Tensor, n: int = 16) -> torch.Tensor:
    """OCM's rotation copies of an image batch (N, C, H, W), copy-major: ``n=16`` the 4 half-flips under the
    global rotations by 0, 180, 90 and 270 degrees (the authors' order); ``n=4`` the 4 global rotations only
    (a cheaper setting, not the paper's); ``n=1`` no copy (also what non-image inputs get)."""
    if n == 1 or x.dim() != 4:
        return x
    base = _half_flips(x) if n == 16 else x
    if n not in (4, 16):
        raise unknown("rotations", n, (1, 4, 16))
    return torch.cat([base, torch.rot90(base, 2, (2, 3)), torch.rot90(base, 1, (2, 3)), torch.rot90(base, 3, (2, 3))])


def rotation_labels(y: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    """Labels of :func:`ocm_rotations`' copies: copy k of class c is class ``c + k * offset``."""
    return torch.cat([y + offset * k for k in range(n)])


# -- modules -------------------------------------------------------------------------------------------
class ProjectionHead(nn.Module):
    """``mlp``: Linear(d, d) - ReLU - Linear(d, out) (SCR); ``linear``: Linear(d, out) (OCM/OnPro's ``simclr``)."""

    KINDS = ("mlp", "linear")

    def __init__(self, in_dim: int, out_dim: int = 128, kind: str = "mlp"):
        super().__init__()
        if kind not in self.KINDS:
            raise unknown("projection head", kind, self.KINDS)
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.flatten(1))


class ContrastiveModel(Model):
    """Backbone + classification head + projection head (``project``: normalised projections)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, proj: nn.Module):
        super().__init__(backbone, head)
        self.proj = proj

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(h).float(), dim=1)


# -- views ---------------------------------------------------------------------------------------------
class ViewAugment:
    """A method's own augmentation of normalised image batches (per-sample random parameters, on device).

    ``scr``: SCR/PCR's recipe: random resized crop (scale 0.2-1), horizontal flip, colour jitter
    (0.4, 0.4, 0.4, hue 0.1) with probability 0.8, grayscale with probability 0.2. ``jitter`` says how the
    colour jitter is computed: ``kornia`` (SCR's code, kornia 0.4.1), ``torchvision`` (PCR's code; see
    :mod:`cl.data.colour`) or ``plain`` (this platform's recipe before 2026-12-04: torchvision's brightness,
    contrast and saturation in that fixed order, no hue; ``augment=pcr``).
    ``ocm``: OCM/OnPro's ``simclr_aug``: horizontal flip, grayscale with probability 0.25, random resized crop
    (scale 0.3-1). Non-image batches are returned unchanged."""

    def __init__(self, kind: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 jitter: str = "plain"):
        if kind not in VIEW_KINDS:
            raise unknown("view augmentation", kind, VIEW_KINDS)
        if jitter not in VIEW_JITTERS:
            raise unknown("view jitter", jitter, VIEW_JITTERS)
        self.kind, self.jitter = kind, jitter
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none" or x.dim() != 4:
            return x
        dt = x.dtype
        y = x.float()
        if self.mean is not None:
            y = y * self.std.to(y.device) + self.mean.to(y.device)
        if self.kind == "scr":
            y = random_resized_crop(y, scale=(0.2, 1.0))
            y = random_flip(y)
            if self.jitter == "plain":
                y = colour_jitter(y, 0.4, 0.4, 0.4, p=0.8)
            else:
                y = library_jitter(y, self.jitter, 0.4, 0.4, 0.4, 0.1, p=0.8)
            y = random_grayscale(y, 0.2)
        else:
            y = random_flip(y)
            y = random_grayscale(y, 0.25)
            y = random_resized_crop(y, scale=(0.3, 1.0))
        if self.mean is not None:
            y = (y - self.mean.to(y.device)) / self.std.to(y.device)
        return y.to(dt)


def scenario_stats(scenario):
    """The scenario's normalisation (mean, std) as plain lists, or (None, None)."""
    mean, std = getattr(scenario, "mean", None), getattr(scenario, "std", None)
    if mean is None or std is None:
        return None, None
    return [float(v) for v in mean], [float(v) for v in std]


def two_views(x: torch.Tensor, aug, first_raw: bool = True) -> torch.Tensor:
    """``[x; aug(x)]`` (SCR, PCR: the first view is the raw batch) or ``[aug(x); aug(x)]``."""
    return torch.cat([x if first_raw else aug(x), aug(x)])
