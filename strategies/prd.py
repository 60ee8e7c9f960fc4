"""PRD: Prototype-sample Relation Distillation (Asadi et al., ICML 2023; methods.md section 4).

Replay-free.  Per step on the current batch (two augmented views; without an augmentation the
two copies differ only through dropout):

* SupCon on a projection head g:  L_sc = SupCon(normalize(g(f(x))), y), tau = 0.1;
* prototype loss on **detached** features, current task's prototypes only:
  L_p = mean_i [1 - cos(f(x_i).detach(), p_{y_i})]  (the pre-release code's form; the paper
  may use a softmax form -- unverified, so only the code form is implemented);
* relation distillation against the model frozen at the end of the previous task, one softmax
  per old task tau over tau's classes:
  s_old(i,c) = <f_old(x_i), p_old_c>/||p_old_c||,  s_new(i,c) = <f(x_i), p_c>/||p_c||,
  L_d = sum_tau KL(softmax(s_old/T) || softmax(s_new/T)), batch mean, T = 1.
  Gradients reach the encoder and the old prototypes: that is how old prototypes move.
* L = L_sc + prototypes_coef * L_p + distill_coef * L_d  (2.0 and 4.0).

Prototypes are rows of one (n_classes, d) parameter in the encoder space (the code's one bias-free
linear layer per task, stacked) with their own optimiser group (``proto_lr`` 0.01, no momentum,
no weight decay).  Prediction: cosine of the feature to the prototypes of the seen classes
(class-IL); in a task-aware scenario the engine restricts the logits to the task's classes
(task-IL).  ``tune=lora`` trains a single shared LoRA adapter (cl.models.adapters) instead of the whole
encoder -- a platform option, not part of the paper.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.heads import cosine_logits
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.task_keys import by_length, freeze_batchnorm, trim_padding


@dataclass
class PRDConfig(StrategyConfig):
    lr: float = 0.01
    momentum: float = 0.9
    proto_lr: float = 0.01  # own parameter group: momentum 0, weight decay 0
    supcon_temperature: float = 0.1
    prototypes_coef: float = 2.0
    distill_coef: float = 4.0
    distill_temp: float = 1.0
    projection_hidden: int = 512
    projection_size: int = 128
    views: int = 2  # augmented views per sample
    tune: str = "full"  # full: whole encoder | lora: one shared LoRA adapter on the encoder (platform option)
    lora_r: int = 8
    lora_alpha: int = 16


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) on L2-normalised embeddings z (n, d).

    For each anchor with at least one positive: -mean_p log softmax_{a != i}(z_i . z_a / tau)[p]."""
    n = z.shape[0]
    sim = (z @ z.t()) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    mean_log_pos = log_prob.masked_fill(~pos, 0.0).sum(1) / n_pos.clamp_min(1)
    has = (n_pos > 0).float()
    return -(mean_log_pos * has).sum() / has.sum().clamp_min(1)


def prototype_loss(h: torch.Tensor, protos: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_i [1 - cos(h_i, p_{y_i})] on detached features (no gradient to the encoder)."""
    return (1 - F.cosine_similarity(h.detach(), protos[y], dim=1, eps=1e-8)).mean()


def relation_distillation(h_new: torch.Tensor, h_old: torch.Tensor, protos: torch.Tensor, protos_old: torch.Tensor,
                          old_tasks: list[list[int]], temperature: float = 1.0) -> torch.Tensor:
    """sum over old tasks of KL(softmax(s_old/T) || softmax(s_new/T)), one softmax per old task."""
    loss = h_new.new_zeros(())
    for classes in old_tasks:
        idx = torch.as_tensor(classes, device=h_new.device)
        p_new = protos[idx]
        p_old = protos_old[idx]
        s_new = h_new @ (p_new / p_new.norm(dim=1, keepdim=True).clamp_min(1e-8)).t()
        s_old = h_old @ (p_old / p_old.norm(dim=1, keepdim=True).clamp_min(1e-8)).t()
        loss = loss + F.kl_div(F.log_softmax(s_new / temperature, 1), F.log_softmax(s_old / temperature, 1),
                               reduction="batchmean", log_target=True)
    return loss


class PRDModel(nn.Module):
    """Encoder + projection head (SupCon only) + class prototypes in the encoder space."""

    def __init__(self, backbone: nn.Module, n_classes: int, hidden: int = 512, out: int = 128):
        super().__init__()
        d = backbone.out_dim
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))
        self.prototypes = nn.Parameter(torch.empty(n_classes, d))
        nn.init.kaiming_uniform_(self.prototypes, a=math.sqrt(5))
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return cosine_logits(self.backbone(x).float(), self.prototypes).masked_fill(~self.seen, float("-inf"))

    @torch.no_grad()
    def observe(self, y):
        self.seen[y] = True


@register("prd", PRDConfig)
class PRD(Strategy):
    """PRD: SupCon + detached prototypes + prototype-sample relation distillation (replay-free)."""

    transient_attrs = ("last_parts",)  # the last step's loss terms (logging)

    @classmethod
    def build_model(cls, cfg: PRDConfig, backbone, scenario):
        if cfg.tune == "lora":
            from cl.models.adapters import LoraSet

            lora = LoraSet(backbone, r=cfg.lora_r, alpha=cfg.lora_alpha)
            lora.add("shared")
            lora.switch("shared")
            backbone._prd_lora = lora  # keep a handle; the LoRA weights live inside the backbone
        elif cfg.tune != "full":
            from cl.core.registry import unknown

            raise unknown("prd tune", cfg.tune, ("full", "lora"))
        return PRDModel(backbone, scenario.n_classes, cfg.projection_hidden, cfg.projection_size)

    def make_optimizer(self):
        cfg = self.cfg
        enc = [p for n, p in self.model.named_parameters() if p.requires_grad and n != "prototypes"]
        groups = [{"params": enc, "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
                  {"params": [self.model.prototypes], "lr": cfg.proto_lr, "momentum": 0.0, "weight_decay": 0.0}]
        if cfg.optimizer != "sgd":  # Adam's settings only
            for g in groups:
                g.pop("momentum")
        return make_optimizer(groups, cfg)  # each group's own lr, momentum and weight decay

    def setup(self):
        self.old_backbone = None
        self.old_prototypes = None
        self.old_tasks: list[list[int]] = []
        self.last_parts: dict = {}

    def _views(self, x, y):
        x = trim_padding(x)
        xs = [self.augmented(x) for _ in range(max(1, self.cfg.views))]
        return torch.cat(xs), y.repeat(len(xs))

    def loss(self, x, y, t=None):
        cfg, m = self.cfg, self.model
        if cfg.tune == "lora":
            freeze_batchnorm(m.backbone)  # frozen backbone: BN statistics must not drift
        xx, yy = self._views(x, y)
        h = m.backbone(xx).float()
        z = F.normalize(m.projector(h), dim=1)
        l_sc = supcon_loss(z, yy, cfg.supcon_temperature)
        l_p = prototype_loss(h, m.prototypes, yy)
        loss = l_sc + cfg.prototypes_coef * l_p
        parts = {"supcon": l_sc.detach(), "proto": l_p.detach()}
        if self.old_backbone is not None and self.old_tasks:
            with torch.no_grad():
                h_old = self.old_backbone(xx).float()
            l_d = relation_distillation(h, h_old, m.prototypes, self.old_prototypes, self.old_tasks, cfg.distill_temp)
            loss = loss + cfg.distill_coef * l_d
            parts["distill"] = l_d.detach()
        self.last_parts = parts
        return loss

    def predict(self, x, t=None):
        return by_length(self.model, x)

    def after_experience(self, exp):
        self.old_tasks.append(list(exp.classes))
        self.old_backbone = copy.deepcopy(self.model.backbone).eval()
        for p in self.old_backbone.parameters():
            p.requires_grad_(False)
        self.old_prototypes = self.model.prototypes.detach().clone()

    def extra_state(self):
        return {"old_backbone": None if self.old_backbone is None else self.old_backbone.state_dict(),
                "old_prototypes": self.old_prototypes, "old_tasks": self.old_tasks}

    def load_extra_state(self, state):
        self.old_tasks = state.get("old_tasks", [])
        self.old_prototypes = state.get("old_prototypes")
        self.old_backbone = None  # a state without one (before the first boundary) clears a stale copy
        if state.get("old_backbone") is not None:
            self.old_backbone = copy.deepcopy(self.model.backbone).eval()
            self.old_backbone.load_state_dict(state["old_backbone"])
            for p in self.old_backbone.parameters():
                p.requires_grad_(False)
