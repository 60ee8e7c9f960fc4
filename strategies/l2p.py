"""L2P: Learning to Prompt (Wang et al., CVPR 2022; methods.md section 6a), and L2L (L2P with LoRA
entries, Wistuba et al. 2024; methods.md section 5a).

**L2P** (``l2p``): a frozen pretrained backbone, a prompt pool of ``pool_size`` (M) prompts of
``length`` (L_p) tokens with learnable keys (:class:`cl.models.adapters.PromptPool`, uniform init), and a linear
classifier over all classes.
* Query q(x): the frozen backbone's feature **without prompts** (a second forward pass, no gradient).
* Select the top-N keys by cosine similarity; concatenate their prompts (N * L_p tokens) after the
  class token (the real tokens keep their original position embeddings, see
  :mod:`cl.models.backbones.text`).
* Readout (``readout``): the official code offers the mean of the prompt tokens' outputs
  (``prompts``, its L2P setting), the class token (``cls``) and a mean over tokens; here ``mean`` is the
  mean of the real (non-prompt) tokens' outputs.  ``auto`` (default) picks the backbone family's own
  convention: ``prompts`` on ViTs (the paper), ``mean`` on MiniLM / BERT encoders, which are trained for
  mean pooling (the prompt outputs of a frozen sentence encoder carry little of the sentence; issue 13
  measured 10.6 % with ``prompts`` on reduced CLINC150).  A deviation from the paper on text backbones.
* Prompt and key init: U(0, 0.01), the official ``nn.initializers.uniform()`` (``prompt_init``;
  ``symmetric`` = U(-1, 1), this platform's earlier init).
* Loss: CE with the logits of classes outside the current task set to -inf (``class_mask``, the
  official ``train_mask``) minus lambda * (1/B) sum_i sum_{j in top-N} cos(q_i, k_j)  (the surrogate
  pull constraint, lambda = 1; implemented as + lambda * sum (1 - cos), the same gradient).
* ``batchwise_prompt``: the official code uses, for every sample of a batch, the N keys selected most
  often in the batch, also at test time -- a prediction then depends on the rest of the test batch.
  Off by default here; turn it on to reproduce the official behaviour.
* Defaults: M = 10, L_p = 5, N = 5 (the paper text; the released CIFAR configs use L_p = 10, N = 4),
  Adam, lr 0.03 (the official CIFAR config), optimiser re-initialised per task.
* ``prompt_lr`` (a platform option, default null = one rate for everything, as the official code): the
  prompt tokens' own rate (L2L: the LoRA entries'), the keys and the head stay at ``lr``.

**L2L** (``l2l``): the same selection, but every pool entry is a LoRA adapter (peft, via
:class:`cl.models.adapters.LoraSet`) paired with a learnable key; the selected adapters act together (their
updates summed -- [RECALL], unverified) and the classifier reads the backbone's own pooled feature.
Samples of a batch that select different adapter sets are run in groups (one host read per step);
``top_k`` defaults to 1 to keep the number of groups small.  Works on CNNs too (LoRA on convolutions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.heads import IncrementalLinear
from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.task_keys import by_length, freeze_batchnorm, grouped_apply, trim_padding
from cl.models.multihead import class_mask


@dataclass
class L2PConfig(StrategyConfig):
    lr: float = 0.03
    optimizer: str = "adam"
    pool_size: int = 10  # M
    length: int = 5  # L_p tokens per prompt
    top_k: int = 5  # N
    pull_coef: float = 1.0  # lambda of the surrogate key loss
    class_mask: bool = True  # train_mask: CE over the current task's classes only
    batchwise_prompt: bool = False  # official code: the batch's N most frequent keys for every sample
    reset_optimizer: bool = True  # re-initialise the optimiser at every task (official)
    train_eval_mode: bool = False  # keep the backbone in eval() (dropout off) while training
    readout: str = "auto"  # auto | prompts | cls | mean  (auto: prompts on ViTs, mean on text encoders)
    prompt_init: str = "uniform"  # uniform = U(0, 0.01) (official) | symmetric = U(-1, 1) | normal
    prompt_lr: float | None = None  # the prompts' (L2L: the LoRA entries') rate; None = lr (official: one rate)


READOUTS = ("auto", "prompts", "cls", "mean")


def resolve_readout(readout: str, backbone) -> str:
    """The readout a backbone family uses by default: ``prompts`` for ViTs (L2P), ``mean`` for text encoders."""
    if readout not in READOUTS:
        from cl.core.registry import unknown

        raise unknown("l2p readout", readout, READOUTS)
    if readout != "auto":
        return readout
    return "mean" if getattr(backbone, "family", None) == "bert" else "prompts"


@dataclass
class L2LConfig(L2PConfig):
    lr: float = 0.01
    top_k: int = 1
    r: int = 8
    alpha: int = 16
    targets: list[str] | None = None


def majority(index: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """The k most frequent entries of ``index`` (B, k) over the batch, used for every sample."""
    counts = torch.bincount(index.flatten(), minlength=size)
    top = counts.topk(k).indices
    return top.unsqueeze(0).expand(index.shape[0], -1)


class L2PModel(nn.Module):
    def __init__(self, backbone: nn.Module, pool: nn.Module, head: nn.Module, readout: str = "prompts"):
        super().__init__()
        self.backbone, self.pool, self.head = backbone, pool, head
        self.readout = readout
        self.batchwise = False
        self.last_index = None
        self.last_key_loss = None

    def _plain_features(self, x):
        return self.backbone(x)

    @torch.no_grad()
    def query(self, x):
        was = self.backbone.training
        self.backbone.eval()  # the query is the frozen, un-prompted feature (no dropout)
        q = self._plain_features(x)
        self.backbone.train(was)
        return q

    def forward(self, x):
        q = self.query(x)
        _, index, _ = self.pool(q)
        if self.batchwise:
            index = majority(index, self.pool.size, self.pool.top_k)
        prompts, index, key_loss = self.pool(q, index=index)
        self.last_index, self.last_key_loss = index, key_loss
        return self.head(self.backbone(x, prompts=prompts, pool=self.readout).float())

    def observe(self, y):
        self.head.observe(y)


class KeyedLoraPool(nn.Module):
    """L2L pool: ``size`` LoRA adapters (inside the backbone, via LoraSet) with learnable keys."""

    def __init__(self, lora, size: int, key_dim: int, top_k: int):
        super().__init__()
        if top_k > size:
            raise ConfigError(f"l2l top_k={top_k} is larger than the pool size {size}")
        self.size, self.top_k = size, top_k
        self.keys = nn.Parameter(torch.empty(size, key_dim).uniform_(-1, 1))
        object.__setattr__(self, "lora", lora)
        self.names = [f"pool{i}" for i in range(size)]

    def select(self, q, index=None):
        sim = F.normalize(q.float(), dim=-1) @ F.normalize(self.keys, dim=-1).t()
        if index is None:
            index = sim.topk(self.top_k, dim=1).indices
        return index, (1 - sim.gather(1, index)).mean()

    def activate(self, ids: list[int]) -> None:
        """Make the adapters ``ids`` act together (peft sums active adapters) and keep the whole pool trainable."""
        names = [self.names[i] for i in ids]
        if getattr(self, "_layers", None) is None:
            object.__setattr__(self, "_layers", self.lora._layers())
            object.__setattr__(self, "_params", [p for n in self.names for p in self.lora.parameters(n)])
        for layer in self._layers:
            layer.set_adapter(names)
        for p in self._params:
            p.requires_grad_(True)


class L2LModel(L2PModel):
    """L2P's model with a pool of LoRA adapters: the query runs with every adapter off."""

    def _plain_features(self, x):
        with self.pool.lora.disabled():
            return self.backbone(x)

    def forward(self, x):
        q = self.query(x)
        index, _ = self.pool.select(q)
        if self.batchwise:
            index = majority(index, self.pool.size, self.pool.top_k)
        index, key_loss = self.pool.select(q, index)
        self.last_index, self.last_key_loss = index, key_loss
        sorted_idx = index.sort(1).values
        code = (sorted_idx * (self.pool.size ** torch.arange(index.shape[1], device=index.device))).sum(1)

        def run(c, xg):
            ids = [(c // self.pool.size ** j) % self.pool.size for j in range(index.shape[1])]
            self.pool.activate(sorted(set(ids)))
            return self.head(self.backbone(xg).float())

        return grouped_apply(x, code, run)


@register("l2p", L2PConfig)
class L2P(Strategy):
    """L2P: prompt pool with learnable keys, top-N by cosine to the frozen query, surrogate key loss."""

    transient_attrs = ("current", "model.last_index", "model.last_key_loss")  # set before use (per experience / forward)

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        from cl.models.adapters import PromptPool

        dim = getattr(backbone, "prompt_dim", None)
        if dim is None:
            raise ConfigError(f"l2p needs a backbone with prompt tokens (a ViT or minilm); "
                              f"{type(backbone).__name__} has none (use l2l for LoRA entries)")
        for p in backbone.parameters():
            p.requires_grad_(False)
        pool = PromptPool(cfg.pool_size, cfg.length, dim, key_dim=backbone.out_dim, top_k=cfg.top_k,
                          init=cfg.prompt_init)
        return L2PModel(backbone, pool, IncrementalLinear(dim, scenario.n_classes), resolve_readout(cfg.readout, backbone))

    def setup(self):
        self.model.batchwise = self.cfg.batchwise_prompt
        self.current = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)
        self.selection_counts = torch.zeros(self.cfg.pool_size, dtype=torch.long, device=self.device)

    def prompt_params(self) -> list:
        """The pool entries (``prompt_lr``'s parameter group): the prompt tokens; L2L: its LoRA entries."""
        return [self.model.pool.prompts]

    def trainable(self) -> list:
        """Every parameter the optimiser updates (the frozen backbone's have requires_grad off)."""
        return list(self.model.parameters())

    def make_optimizer(self):
        """One optimiser; with ``prompt_lr`` set, the pool entries form a second group at that rate."""
        if self.cfg.prompt_lr is None:
            return make_optimizer(self.trainable(), self.cfg)
        if not self.cfg.prompt_lr > 0:
            raise ConfigError(f"strategy.prompt_lr must be > 0 (or null: the same as lr), got {self.cfg.prompt_lr!r}")
        entries = {id(p) for p in self.prompt_params()}
        opt = make_optimizer([p for p in self.trainable() if id(p) not in entries], self.cfg)
        opt.add_param_group({"params": [p for p in self.prompt_params() if p.requires_grad], "lr": self.cfg.prompt_lr})
        return opt

    def before_experience(self, exp):
        self.current.copy_(class_mask(exp.classes, self.info.n_classes, self.device))
        if self.cfg.reset_optimizer:
            self.optimizer = self.make_optimizer()

    def train_step(self, x, y, t=None):
        if self.cfg.train_eval_mode:
            self.model.eval()
        freeze_batchnorm(self.model.backbone)  # frozen backbone: BN statistics must not drift
        return super().train_step(x, y, t)

    def predict(self, x, t=None):
        return by_length(self.model, x)

    def loss(self, x, y, t=None):
        x = trim_padding(self.augmented(x))
        logits = self.model(x)
        if self.cfg.class_mask:
            logits = logits.masked_fill(~self.current, float("-inf"))
        self.selection_counts += torch.bincount(self.model.last_index.flatten(), minlength=self.cfg.pool_size)
        # - lambda * (1/B) sum_i sum_j cos(q_i, k_j)  ==  lambda * top_k * mean(1 - cos) + const
        return F.cross_entropy(logits.float(), y) + self.cfg.pull_coef * self.cfg.top_k * self.model.last_key_loss

    def extra_metrics(self) -> dict:
        c = self.selection_counts.float()
        p = c / c.sum().clamp_min(1)
        ent = float(-(p[p > 0] * p[p > 0].log()).sum())
        return {"pool_entries_used": int((c > 0).sum()), "pool_selection_entropy": ent,
                "pool_selection_max_entropy": math.log(self.cfg.pool_size)}

    def extra_state(self):
        return {"selection_counts": self.selection_counts}

    def load_extra_state(self, state):
        self.selection_counts = state.get("selection_counts", self.selection_counts)


@register("l2l", L2LConfig)
class L2L(L2P):
    """L2L: L2P with a pool of LoRA adapters + learnable keys (top-N summed), classifier on the pooled feature."""

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        from cl.models.adapters import LoraSet

        lora = LoraSet(backbone, r=cfg.r, alpha=cfg.alpha, targets=cfg.targets)
        for i in range(cfg.pool_size):
            lora.add(f"pool{i}", activate=(i == 0))
        pool = KeyedLoraPool(lora, cfg.pool_size, backbone.out_dim, cfg.top_k)
        pool.activate([0])
        return L2LModel(backbone, pool, IncrementalLinear(backbone.out_dim, scenario.n_classes))

    def trainable(self) -> list:
        params = [self.model.pool.keys, *self.model.head.parameters()]
        return params + self.prompt_params()

    def prompt_params(self) -> list:
        pool = self.model.pool
        return [p for n in pool.names for p in pool.lora.parameters(n)]
