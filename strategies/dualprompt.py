"""DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning (Wang et al., ECCV 2022).

Official code: google-research/l2p (JAX, the DualPrompt configs) and its PyTorch port JH-LEE-KR/dualprompt-pytorch
(``configs/cifar100_dualprompt.py``, ``prompt.py``, ``vision_transformer.py``, ``engine.py``), read for this file.

A frozen pretrained backbone, a linear classifier over all classes, and two kinds of prompts attached by
**prefix tuning** (:mod:`cl.models.prompts`: learnable key and value tokens prepended to an attention layer's
keys and values):

* **G-prompt** (general, shared by all tasks): layers ``g_layers`` (default 0-1), ``g_length`` (5) key and 5
  value tokens per layer; trained on every task.
* **E-prompts** (expert): a pool of ``pool_size`` (10) prompts, each with a learnable key, at layers ``e_layers``
  (default 2-4), ``e_length`` (5) key + 5 value tokens per layer.  **Training on task t uses E-prompt t** (the
  official ``use_prompt_mask``) and pulls key t to the task's queries: loss = CE - ``pull_coef`` * mean_i cos(q_i, k_t).
  Only G, E-prompt t, key t and the head are given to the optimiser (re-made at every task, the official
  ``reinit_optimizer``), so the E-prompts and keys of other tasks cannot move.
* **Query**: the frozen backbone's own feature of the un-prompted input (class token on ViTs: the official
  ``embedding_key='cls'``; MiniLM: its mean pooling).  At test time every sample takes the E-prompt whose key is
  closest (cosine, top-1) to its query.
* **Readout**: the class token of the prompted forward (official ``head_type='token'``) on ViTs; on MiniLM the mean
  of the real tokens (``readout=auto``; a deviation on text backbones, as in ``l2p``).
* CE with the logits of classes outside the current task set to -inf (``class_mask``, official ``train_mask``).
* Init: prompts and keys U(-1, 1) (official ``initializer='uniform'``, ``nn.init.uniform_(-1, 1)``).
* Defaults from the PyTorch port's CIFAR-100 config: Adam, lr 0.03 * 24 / 256 (its lr 0.03 scaled by batch / 256
  at batch 24), constant schedule, gradient-norm clipping 1.0 (``clip_grad``), 5 epochs (protocol).

Choices the paper leaves open, taken from the official code: prefix length -- the paper splits one L_p-token
prompt into halves for keys and values; the code gives keys and values ``length`` tokens each (followed here);
a layer with both a G- and an E-prompt (only on a shallow model, see below) gets both prefixes concatenated
(as GT-RIPL/CODA-Prompt's DualPrompt does).

Deviations: ``batchwise_prompt`` (the official code uses the batch's most frequent key for every test sample, so
a prediction depends on the rest of the test batch) is off by default (on: the official behaviour); test-time
matching is over the keys of the tasks trained so far (the official code matches over the whole pool, including
keys not trained yet -- only accuracies measured before the last task can differ); no label smoothing (the port
defines ``--smoothing 0.1`` but its criterion is a plain CrossEntropyLoss, as here).

Backbones: timm ViTs and MiniLM (prefix tuning needs attention layers; others raise a ConfigError naming these).
Layer fields left at ``None`` take the paper's layers that the backbone has (a shallower model keeps the E-prompt at
its last layer); explicit indices outside the model's depth are a ConfigError.  Needs task boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.strategy import Strategy, StrategyConfig, make_optimizer, register
from cl.models.heads import IncrementalLinear
from cl.models.prompts import PrefixModel, check_layers, default_layers, depth, resolve_readout
from cl.models.task_keys import by_length, trim_padding
from strategies.l2p import majority
from strategies._boundaries import require_boundaries

G_LAYERS, E_LAYERS = (0, 1), (2, 3, 4)


@dataclass
class DualPromptConfig(StrategyConfig):
    lr: float = 0.03 * 24 / 256  # dualprompt-pytorch: lr 0.03 scaled by batch/256 at its batch 24
    optimizer: str = "adam"
    pool_size: int = 10  # E-prompt pool (one per task; >= the number of tasks)
    g_length: int = 5  # key and value tokens of the G-prompt, per layer
    e_length: int = 5  # key and value tokens of an E-prompt, per layer
    g_layers: list[int] | None = None  # None: the paper's 0, 1
    e_layers: list[int] | None = None  # None: the paper's 2, 3, 4
    pull_coef: float = 1.0  # lambda of the key-query matching loss
    class_mask: bool = True
    batchwise_prompt: bool = False  # official: the batch's most frequent E-prompt for every test sample
    readout: str = "auto"  # auto | cls | mean | default
    clip_grad: float = 1.0  # gradient-norm clipping (0 = off)


def resolve_layers(cfg, backbone, method: str) -> tuple[list[int], list[int]]:
    n = depth(backbone, method)
    g = default_layers(G_LAYERS, n) if cfg.g_layers is None else check_layers("g_layers", cfg.g_layers, n)
    e = default_layers(E_LAYERS, n) if cfg.e_layers is None else check_layers("e_layers", cfg.e_layers, n)
    return g, e


class DualPromptModel(PrefixModel):
    def __init__(self, backbone, head, g_layers, e_layers, g_length, e_length, pool_size, readout):
        super().__init__(backbone, head, sorted(set(g_layers) | set(e_layers)), readout, "dualprompt")
        D, kd = backbone.prompt_dim, backbone.out_dim
        self.g_layers, self.e_layers = list(g_layers), list(e_layers)
        self.g = nn.Parameter(torch.empty(len(g_layers), 2, g_length, D).uniform_(-1, 1))
        self.e = nn.ParameterList([nn.Parameter(torch.empty(len(e_layers), 2, e_length, D).uniform_(-1, 1))
                                   for _ in range(pool_size)])
        self.keys = nn.ParameterList([nn.Parameter(torch.empty(kd).uniform_(-1, 1)) for _ in range(pool_size)])
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))  # tasks trained so far (test-time matching)
        self.batchwise = False

    def similarity(self, q: torch.Tensor, n: int) -> torch.Tensor:
        keys = torch.stack(list(self.keys[:n]))
        return F.normalize(q, dim=-1) @ F.normalize(keys, dim=-1).t()

    def select(self, q: torch.Tensor) -> torch.Tensor:
        """Test time: the E-prompt whose key is closest to each query, among the tasks trained so far."""
        n = max(int(self.n_seen), 1)
        idx = self.similarity(q, n).argmax(1)
        if self.batchwise:
            idx = majority(idx.unsqueeze(1), n, 1).squeeze(1)
        return idx

    def per_layer(self, idx: torch.Tensor) -> dict:
        """Prefixes per layer for the E-prompts ``idx`` [B]: G ``[Lg, D]`` (shared), E ``[B, Le, D]``."""
        out: dict = {}
        for j, layer in enumerate(self.g_layers):
            out[layer] = (self.g[j, 0], self.g[j, 1])
        E = torch.stack(list(self.e))[idx]  # [B, n_e, 2, Le, D]
        for j, layer in enumerate(self.e_layers):
            ek, ev = E[:, j, 0], E[:, j, 1]
            if layer in out:  # G and E at one layer (a shallow model): both prefixes
                gk, gv = out[layer]
                ek = torch.cat([ek, gk.unsqueeze(0).expand(len(idx), -1, -1)], 1)
                ev = torch.cat([ev, gv.unsqueeze(0).expand(len(idx), -1, -1)], 1)
            out[layer] = (ek, ev)
        return out

    def forward(self, x, task: int | None = None):
        """Logits; ``task`` given (training): E-prompt ``task`` for the whole batch, else matched per sample."""
        if task is None:
            idx = self.select(self.query(x))
        else:
            idx = torch.full((x.shape[0],), int(task), dtype=torch.long, device=self.g.device)
        return self.head(self.features(x, self.per_layer(idx)))


@register("dualprompt", DualPromptConfig)
class DualPrompt(Strategy):
    """DualPrompt: shared G-prompt (layers 0-1) + task E-prompts (layers 2-4) by prefix tuning, key-query matching."""

    state_attrs = ("task",)
    transient_attrs = ("current",)  # the current task's classes, set in before_experience

    @classmethod
    def build_model(cls, cfg, backbone, scenario):
        g, e = resolve_layers(cfg, backbone, "dualprompt")
        n_tasks = len(scenario)
        if cfg.pool_size < n_tasks:
            raise ConfigError(f"dualprompt pool_size={cfg.pool_size}: one E-prompt per task, and the scenario has "
                              f"{n_tasks} tasks; valid: pool_size >= {n_tasks}")
        for f in ("g_length", "e_length"):
            if getattr(cfg, f) < 1:
                raise ConfigError(f"dualprompt {f}={getattr(cfg, f)}: valid values are >= 1")
        if cfg.clip_grad < 0:
            raise ConfigError(f"dualprompt clip_grad={cfg.clip_grad}: valid values are >= 0 (0: no clipping)")
        return DualPromptModel(backbone, IncrementalLinear(backbone.prompt_dim, scenario.n_classes), g, e,
                               cfg.g_length, cfg.e_length, cfg.pool_size, resolve_readout(cfg.readout, backbone))

    def setup(self):
        require_boundaries(self, "it trains E-prompt t on task t")
        self.model.batchwise = self.cfg.batchwise_prompt
        self.task = -1
        self.current = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)

    def trained_parameters(self, t: int) -> list:
        m = self.model
        return [m.g, m.e[t], m.keys[t], *m.head.parameters()]

    def make_optimizer(self):
        return make_optimizer(self.trained_parameters(max(getattr(self, "task", 0), 0)), self.cfg)

    def before_experience(self, exp):
        self.task += 1
        self.current.zero_()
        self.current[torch.as_tensor(exp.classes, device=self.device)] = True
        self.optimizer = self.make_optimizer()  # only G, E_t, k_t and the head move during task t

    def loss(self, x, y, t=None):
        x = trim_padding(self.augmented(x))
        q = self.model.query(x)
        logits = self.model(x, task=self.task)
        if self.cfg.class_mask:
            logits = logits.masked_fill(~self.current, float("-inf"))
        cos = F.cosine_similarity(q, self.model.keys[self.task].unsqueeze(0), dim=-1)
        return F.cross_entropy(logits.float(), y) + self.cfg.pull_coef * (1 - cos).mean()

    def before_optimizer_step(self, x, y, t=None):
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.trained_parameters(self.task), self.cfg.clip_grad)

    def after_experience(self, exp):
        self.model.n_seen.fill_(self.task + 1)

    def predict(self, x, t=None):
        return by_length(self.model, x)
