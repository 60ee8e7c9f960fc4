"""PODNet: Pooled Outputs Distillation for Small-Tasks Incremental Learning (Douillard, Cord, Ollion, Robert,
Valle, ECCV 2020). PODNet builds on LUCIR (``strategies.lucir``): same setting (class-incremental, herding
exemplars, a frozen teacher from the previous boundary, imprinted new-class weights, old-class weights kept
fixed), with these pieces in place of LUCIR's losses and classifier:

* POD-spatial: for every stage l of the backbone, the squared feature map h_l (B, C, H, W) is
  sum-pooled over the width (C*H values) and over the height (C*W values); the two are concatenated and
  L2-normalised, and the loss is the L2 distance between the student's and the teacher's vectors, averaged
  over the batch and then over the stages (``pod_spatial``; as ``pod(collapse_channels="spatial")`` in the
  authors' ``inclearn/lib/losses/distillation.py``).
* POD-flat: 1 - cos(h, h_old) on the final embedding, mean over the batch (the code's
  ``embeddings_similarity``, a cosine-embedding loss; ``cl.models.distill.feature_distill(.., "cosine")``).
* Weights: lambda_c = 3 (spatial) and lambda_f = 1 (flat), the CIFAR-100 values (``scheduled_factor`` in
  the code's ``options/podnet/podnet_cnn_cifar100.yaml``), both multiplied by sqrt(n_seen / n_new) with
  n_seen the classes seen including the new ones, as ``inclearn/models/podnet.py`` computes it (LUCIR's
  factor uses the old classes instead).
* Local similarity classifier, LSC: K = 10 proxies per class; a class's similarity is
  the softmax-weighted mean of its proxies' similarities, sum_k softmax_k(s_k) s_k (``lsc_similarity``).
  The proxy similarity s_k is the cosine (the paper); ``proxy_similarity=neg_sq_dist`` uses the code's CIFAR
  choice ``neg_stable_cosine_distance``, -||h/|h| - theta/|theta|||^2 = 2 cos - 2.
* NCA loss (``nca_loss``), eta learned (initialised to 1, the code's ``learned_scaling``), over the classes
  seen so far. The paper writes it with a margin delta = 0.6 on the target and a hinge,
  [ -log( exp(eta (y_hat_y - delta)) / sum_{i != y} exp(eta y_hat_i) ) ]_+ (``nca=paper``). The authors'
  ``nca()`` (``inclearn/lib/losses/base.py``) computes something else: it subtracts the margin from every
  class (so it cancels), puts the row maximum where the target would be in the denominator, and has no
  hinge: log(exp(max_i eta y_i) + sum_{i != y} exp(eta y_i)) - eta y_y, close to a cross-entropy with a
  learned temperature. We default to the code's form (``nca=code``): with a learned eta the paper's form
  drives eta below 0 and the network does not learn (chance accuracy on the first task of split-digits, cnn,
  3 epochs, seed 0; 0.89 with ``nca=code``). Predictions are eta * y_hat (the paper's CNN readout;
  ``nme=true`` uses iCaRL's nearest mean of exemplars, which the code also has).
* New classes' proxies are imprinted at the boundary as in the code (``weight_generation: imprinted,
  multi_class_diff: kmeans``): k-means (``cl.models.task_keys.kmeans``, seeded) of the class's L2-normalised
  features into K centres, times the mean norm of the old proxies. Old classes' proxies are not trained (the
  code's ``groupwise_factors: old_weights: 0``; kept fixed as LUCIR keeps its old weights).
* An experience with no new class (one seen before comes back) has no scheduled factor
  (sqrt(|seen| / |new|), |new| = 0): it trains on the NCA loss alone, without the POD terms, and its
  proxies are not imprinted again (as LUCIR here).
* Memory: herding (``strategies._exemplars``), 20 per class (the paper's CIFAR setting) or a total
  ``buffer_size`` split over the seen classes.
* Class-balanced finetuning (the code's ``finetuning_config`` in ``options/podnet/podnet_cnn_cifar100.yaml``:
  undersampling, classifier only, lr 0.05, 20 epochs): after each experience but the first, the proxies are
  trained with the NCA loss on the exemplar memory (m per class, so balanced), with SGD (momentum 0.9, the
  run's weight decay), batches of ``finetune_batch_size`` = 128 (the code's default batch size), eta fixed.
  ``finetune_epochs=0`` turns it off.
* Gradients are clamped to [-5, 5] elementwise (the code's per-parameter hook in ``_train_task``), and the
  defaults are the code's optimiser: SGD, momentum 0.9, weight decay 5e-4 (lr is the run's; the code's 0.1).

Stages: the backbone declares them (``stage_names``: cnn's blocks, resnet18r's four stages, timm's
``feature_info`` stages); forward hooks are put on those modules only for the forward passes of the loss, on
the student and on the teacher, and removed after (a frozen copy never carries them). A ViT's block outputs
are its patch tokens laid out on the patch grid (``TimmBackbone.stage_map``), an extension: the paper only
has CNNs. A backbone without stages (mlp, identity, text encoders) is a ConfigError naming ``backbone.name``.

Choices the paper leaves open, as the code does: all samples of the batch (new data and exemplars) are
distilled; the teacher runs in eval mode on the same augmented batch.

Deviations: the embedding is the backbone's output after its last ReLU (the code's classifier and POD-flat
read the features before it, ``classifier_no_act``); the code's stages are its ResNet's stage outputs
before the ReLU, ours the modules ``stage_names`` lists; the NCA loss is the code's, not the paper's
equation, by default (above); the finetuning stage runs on features computed once in eval mode without augmentation (the code
runs the network in train mode on augmented exemplars, with only the classifier in the optimiser); the
learning-rate schedule is the engine's (the code uses a cosine schedule over 160 epochs).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.core.registry import ConfigError, unknown
from cl.core.strategy import StrategyConfig, register
from cl.models.distill import feature_distill
from cl.models.heads import MaskedHead, cosine_logits
from cl.models.model import Model
from cl.models.task_keys import kmeans, remember_preprocess
from strategies.lucir import LUCIR
from strategies.lwf import DistillBase

SIMILARITIES = ("cosine", "neg_sq_dist")
NCA_FORMS = ("code", "paper")
STAGED_BACKBONES = "cnn, resnet18r, vit-tiny, efficientnet-lite0, timm:<model>"
_FLOOR = -1e4  # stands for exp(.) = 0 in the NCA denominator (finite: no NaN in the gradient of eta)


@dataclass
class PODNetConfig(StrategyConfig):
    lambda_spatial: float = 3.0  # lambda_c, CIFAR-100 (the code's pod_spatial.scheduled_factor)
    lambda_flat: float = 1.0  # lambda_f, CIFAR-100 (pod_flat.scheduled_factor)
    proxies: int = 10  # K proxies per class
    proxy_similarity: str = "cosine"  # cosine (the paper) | neg_sq_dist (the code's CIFAR config)
    eta_init: float = 1.0  # the learned scale of the NCA loss
    margin: float = 0.6  # delta (acts in nca=paper only; it cancels in the code's form)
    nca: str = "code"  # code (the authors' nca() as it computes) | paper (its equation; collapses, see above)
    exemplars_per_class: int = 20
    buffer_size: int = 0  # > 0: a total budget split over the seen classes instead
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 5.0  # elementwise gradient clamp; 0: none
    finetune_epochs: int = 20  # class-balanced finetuning of the classifier after each experience but the first
    finetune_lr: float = 0.05
    finetune_batch_size: int = 128
    nme: bool = False


def lsc_similarity(h: torch.Tensor, proxies: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """(B, C) class similarities of the LSC: sum_k softmax_k(s_ck) s_ck over each class's K proxies,
    s_ck = cos(h, theta_ck) (``cosine``) or 2 cos - 2 (``neg_sq_dist``). ``proxies`` is (C, K, d)."""
    c, k, d = proxies.shape
    s = cosine_logits(h, proxies.reshape(c * k, d)).view(-1, c, k)
    if kind == "neg_sq_dist":
        s = 2.0 * s - 2.0
    return (F.softmax(s, dim=2) * s).sum(2)


def nca_loss(sim: torch.Tensor, y: torch.Tensor, scale, margin: float, valid: torch.Tensor | None = None,
             form: str = "code") -> torch.Tensor:
    """The NCA loss on class similarities ``sim`` (B, C) with scale eta, over the ``valid`` classes, mean over
    the batch. ``paper``: [ logsumexp_{i != y} eta y_i - eta (y_y - margin) ]_+. ``code`` (what the
    authors' ``nca()`` computes: the margin is subtracted from every class and cancels, and the target's
    place in the denominator is taken by the row's maximum): logsumexp({eta y_i}_{i != y} + {max_i eta y_i})
    - eta y_y."""
    z = scale * sim.float()
    valid = torch.ones(z.shape[1], dtype=torch.bool, device=z.device) if valid is None else valid
    target = F.one_hot(y, z.shape[1]).bool()
    zy = z.gather(1, y[:, None]).squeeze(1)
    neg = z.masked_fill(target | ~valid[None, :], _FLOOR)
    if form == "paper":
        return F.relu(torch.logsumexp(neg, dim=1) - (zy - scale * margin)).mean()
    zmax = z.masked_fill(~valid[None, :], _FLOOR).max(dim=1, keepdim=True).values
    return (torch.logsumexp(torch.cat([neg, zmax], dim=1), dim=1) - zy).mean()


def pod_spatial(maps: list, old_maps: list) -> torch.Tensor:
    """POD-spatial: per stage, || n([sum_W h^2 , sum_H h^2]) - n(same for h_old) ||_2 (n: L2 normalisation),
    mean over the batch, then mean over the stages. Maps are (B, C, H, W); the teacher's are detached."""
    if len(maps) != len(old_maps) or not maps:
        raise ValueError(f"pod_spatial: {len(maps)} student maps and {len(old_maps)} teacher maps")
    total = 0.0
    for a, b in zip(maps, old_maps):
        a, b = a.float().pow(2), b.detach().float().pow(2)
        pa = torch.cat([a.sum(3).flatten(1), a.sum(2).flatten(1)], dim=1)  # width-pooled (C*H), height-pooled (C*W)
        pb = torch.cat([b.sum(3).flatten(1), b.sum(2).flatten(1)], dim=1)
        total = total + (F.normalize(pa, dim=1) - F.normalize(pb, dim=1)).norm(dim=1).mean()
    return total / len(maps)


@contextlib.contextmanager
def stage_outputs(backbone: nn.Module, names: list[str]):
    """Collect the outputs of the backbone's stage modules (as (B, C, H, W) maps) during the forward passes
    run inside the context; the hooks are removed on exit."""
    out: list = []
    to_map = getattr(backbone, "stage_map", None)
    hook = (lambda m, i, o: out.append(o)) if to_map is None else (lambda m, i, o: out.append(to_map(o)))
    handles = [backbone.get_submodule(n).register_forward_hook(hook) for n in names]
    try:
        yield out
    finally:
        for hd in handles:
            hd.remove()


class LSCHead(MaskedHead):
    """Local similarity classifier: K proxies per class (``weight``: (C, K, d)) and a learned scale ``eta``."""

    def __init__(self, in_dim, n_classes, proxies=10, eta=1.0, similarity="cosine"):
        super().__init__(n_classes)
        self.weight = nn.Parameter(torch.empty(n_classes, proxies, in_dim))
        nn.init.kaiming_uniform_(self.weight.data.view(-1, in_dim), a=math.sqrt(5))
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.kind = similarity

    def similarity(self, h):
        return lsc_similarity(h, self.weight, self.kind)

    def raw(self, h):
        return self.eta * self.similarity(h)

    def forward(self, h):
        return self.mask(self.raw(h))


def check_config(cfg: PODNetConfig) -> None:
    if cfg.proxy_similarity not in SIMILARITIES:
        raise unknown("podnet proxy_similarity", cfg.proxy_similarity, SIMILARITIES)
    if cfg.nca not in NCA_FORMS:
        raise unknown("podnet nca", cfg.nca, NCA_FORMS)
    for name, low in (("proxies", 1), ("finetune_batch_size", 1), ("finetune_epochs", 0), ("buffer_size", 0),
                      ("exemplars_per_class", 1)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"podnet: {name} must be an integer >= {low}, got {v!r}")
    for name in ("lambda_spatial", "lambda_flat", "margin", "grad_clip"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"podnet: {name} must be a finite number >= 0, got {v!r}")
    for name in ("eta_init", "finetune_lr"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"podnet: {name} must be a finite number > 0, got {v!r}")
    if cfg.frozen_backbone:
        raise ConfigError("podnet distils the backbone's intermediate maps; frozen_backbone=true leaves none to "
                          "distil; valid choice: frozen_backbone=false")


def stage_names(backbone: nn.Module) -> list[str]:
    """The backbone's declared stage modules, or a ConfigError naming ``backbone.name`` and the ones that work."""
    names = list(getattr(backbone, "stage_names", None) or [])
    if not names:
        name = getattr(backbone, "name", type(backbone).__name__)
        raise ConfigError(f"podnet distils the feature maps of the backbone's stages (POD-spatial); "
                          f"backbone.name={name!r} exposes none. Valid choices: backbone.name={STAGED_BACKBONES}")
    return names


@register("podnet", PODNetConfig, "PODNet: POD-spatial + POD-flat distillation, LSC proxies with NCA, herding memory")
class PODNet(LUCIR):
    transient_attrs = LUCIR.transient_attrs + ("_stages",)  # read from the backbone in setup

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        check_config(cfg)
        stage_names(backbone)
        head = LSCHead(backbone.out_dim, scenario.n_classes, cfg.proxies, cfg.eta_init, cfg.proxy_similarity)
        model = Model(backbone, head)
        remember_preprocess(model, scenario)
        return model

    def check_config(self) -> None:  # called by LUCIR.setup: PODNet's fields, not LUCIR's margin ranking
        check_config(self.cfg)

    def setup(self):
        super().setup()  # teacher, memory (a ConfigError on a task-free stream), then check_config
        self._stages = stage_names(self.model.backbone)

    def before_experience(self, exp):
        DistillBase.before_experience(self, exp)  # LUCIR's own imprints one vector per class
        new = [c for c in self.seen_classes if c not in self.old_classes]
        self._new_idx = torch.tensor(new, dtype=torch.long, device=self.device)
        self._frozen_rows = None
        if not (self.old_classes and new):
            return
        self.lam = math.sqrt(len(self.seen_classes) / len(new))  # the code's scheduled factor
        with torch.no_grad():  # imprint the new classes' proxies: k-means centres of normalised features
            w = self.model.head.weight
            norm = w[self.old_idx()].norm(dim=2).mean()
            f = F.normalize(self.features(exp.train_x).float(), dim=1)
            y = exp.train_y.to(f.device)
            k = w.shape[1]
            for c in new:
                sel = y == c
                if sel.any():
                    cent = kmeans(f[sel], k, seed=self.info.seed * 1009 + c)
                    w[c] = (cent[torch.arange(k) % len(cent)] * norm).to(w.dtype)

    def loss(self, x, y, t=None):
        xa = self.augmented(x)
        head = self.model.head
        distil = bool(self.teacher and self.old_classes and len(self._new_idx))
        with stage_outputs(self.model.backbone, self._stages) if distil else contextlib.nullcontext([]) as maps:
            h = self.model.features(xa)
        loss = nca_loss(head.similarity(h), y, head.eta, self.cfg.margin, head.seen, self.cfg.nca)
        if not distil:
            return loss
        with stage_outputs(self.teacher.module.backbone, self._stages) as old_maps:
            h_old = self.teacher.features(xa)
        loss = loss + self.cfg.lambda_flat * self.lam * feature_distill(h, h_old, "cosine")
        return loss + self.cfg.lambda_spatial * self.lam * pod_spatial(maps, old_maps)

    def before_optimizer_step(self, x, y, t=None):
        super().before_optimizer_step(x, y, t)  # remember the old proxies (restored after the step)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_value_(self.model.parameters(), self.cfg.grad_clip)

    def after_experience(self, exp):
        had_old = bool(self.old_classes)
        super().after_experience(exp)  # teacher, herding memory, NME means
        if had_old and self.cfg.finetune_epochs > 0 and len(self.memory):
            self.finetune()
            self.teacher.take(self.model)  # the teacher of the next experience has the finetuned classifier

    def finetune(self):
        """Class-balanced finetuning: the proxies trained with the NCA loss on the exemplar memory."""
        cfg, head = self.cfg, self.model.head
        feats = self.features(self.memory.x).float()
        y = self.memory.y.to(feats.device)
        opt = torch.optim.SGD([head.weight], lr=cfg.finetune_lr, momentum=0.9, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(self.info.seed * 1009 + len(self.old_classes))
        eta = head.eta.detach()
        for _ in range(cfg.finetune_epochs):
            perm = torch.randperm(len(y), generator=g).to(y.device)
            for i in range(0, len(y), cfg.finetune_batch_size):
                idx = perm[i:i + cfg.finetune_batch_size]
                opt.zero_grad(set_to_none=True)
                nca_loss(head.similarity(feats[idx]), y[idx], eta, cfg.margin, head.seen, cfg.nca).backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_value_([head.weight], cfg.grad_clip)
                opt.step()
        head.weight.grad = None
