"""S-Prompts (Wang, Huang, Hong, NeurIPS 2022; S-iPrompts variant; methods.md section 6b).

One prompt P_s (``length`` = 10 tokens) and one linear head per task / domain on a frozen pretrained
backbone; only those two are trained, with plain CE on the task's data, the network kept in eval()
mode (dropout off, as the official code does).  Prompts sit right after the class token, after the
position embeddings (ViT) / word embeddings (MiniLM), input layer only
(``backbone(x, prompts=P)``, see :mod:`cl.models.adapters`); the feature is the backbone's own pooling
over the real tokens (MiniLM: mean of the word tokens' outputs, original position ids; the prompt outputs
are left out -- before issue 13 the MiniLM mean also averaged the prompt outputs).

Task keys: k-means (k = 5) on L2-normalised frozen features (no prompt) of each task's training data;
at test time the nearest key picks the prompt and head.  The official code measures the distance with
L1 (sum of absolute differences), which is the default here (``key_metric=l1``); the paper says KNN
(use ``key_metric=l2``).  Domain-incremental by design (shared label space); in a class-incremental
scenario each head covers its task's classes (``mode``).  Task-identification accuracy is reported
as ``task_id_acc``.  Needs a backbone with prompt support (timm ViTs, MiniLM); CNNs have no tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cl.core.registry import ConfigError
from cl.core.strategy import register
from strategies.color import TaskKeyedConfig, TaskKeyedExperts


@dataclass
class SPromptsConfig(TaskKeyedConfig):
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 2e-4
    length: int = 10  # prompt tokens per task
    key_metric: str = "l1"  # the official code's distance
    train_eval_mode: bool = True
    init_std: float = 0.02


@register("sprompts", SPromptsConfig)
class SPrompts(TaskKeyedExperts):
    """S-Prompts: a prompt + head per domain/task, chosen by nearest k-means key of frozen features."""

    @classmethod
    def attach_experts(cls, cfg, model, n_tasks):
        from cl.models.adapters import Prompt

        dim = getattr(model.backbone, "prompt_dim", None)
        if dim is None:
            raise ConfigError(f"sprompts needs a backbone with prompt tokens (a ViT or minilm); "
                              f"{type(model.backbone).__name__} has none")
        model.experts = nn.ModuleList(Prompt(cfg.length, dim, cfg.init_std) for _ in range(n_tasks))

    def expert_features(self, task, x):
        return self.model.backbone(x, prompts=self.model.experts[task]())

    def query_features(self, x):
        return self.model.backbone(x)

    def expert_parameters(self, task):
        return list(self.model.experts[task].parameters())
