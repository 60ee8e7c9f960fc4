"""Prefix tuning and prompt components for prompt-based continual learning (DualPrompt, CODA-Prompt, HiDe-Prompt).

Prefix tuning (Li & Liang 2021, as DualPrompt section 4.2 and CODA-Prompt use it): learnable key and value
tokens are prepended to the keys and values of chosen attention layers; the queries, the sequence length and
every other layer stay as they are.  For a layer with prefix ``(pk, pv)`` (``[P, D]`` shared or ``[B, P, D]``
per sample, ``D`` = the attention width, split into the layer's heads like its own keys)::

    attn(x) = proj( softmax(q(x) [pk ; k(x)]^T / sqrt(d_head)) [pv ; v(x)] )

Backbones: timm ViTs (``timm:vit_*``, ``vit-tiny``; the ``blocks[i].attn`` modules) and the MiniLM / HF BERT
encoder (``minilm``; ``encoder.layer[i].attention.self``, the padding mask extended so that every prefix
token is attended).  Anything else (``efficientnet-lite0``, ``cnn``, ``mlp``, ``resnet18r``) has no attention
layers: :func:`attention_layers` raises a ConfigError naming the backbones that work.

Use::

    from cl.models.prompts import install_prefix, prefixes
    install_prefix(backbone, [0, 1, 2])             # once: those layers accept a prefix (identity until given one)
    with prefixes(backbone, {0: (pk0, pv0), 2: (pk2, pv2)}):
        feats = backbone(x, pool="cls")           # prefixed forward; outside the block: the plain backbone

The modules are patched in place (an instance ``forward`` that falls back to the class's own when no prefix
is set), so parameter names, weights files and LoRA targets are unchanged.

Also here: :func:`ortho_penalty` (CODA-Prompt's ``||t t^T - I||^2`` mean) and :func:`gram_schmidt_rows`
(CODA-Prompt's re-initialisation of a task's slice of components orthogonal to the earlier ones).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError

__all__ = ["attention_layers", "depth", "check_layers", "default_layers", "install_prefix", "prefixes",
           "ortho_penalty", "gram_schmidt_rows", "WORKING_BACKBONES"]

WORKING_BACKBONES = "a timm ViT (timm:vit_*, vit-tiny) or minilm"


def _kind(backbone: nn.Module) -> str | None:
    if getattr(backbone, "family", None) == "vit" and getattr(backbone, "is_vit", False):
        return "vit"
    if getattr(backbone, "family", None) == "bert" and hasattr(getattr(backbone, "model", None), "encoder"):
        return "bert"
    return None


def attention_layers(backbone: nn.Module, method: str = "prefix tuning") -> list[nn.Module]:
    """The self-attention modules of ``backbone``, in depth order; a ConfigError for backbones without them."""
    kind = _kind(backbone)
    if kind == "vit":
        return [blk.attn for blk in backbone.model.blocks]
    if kind == "bert":
        return [layer.attention.self for layer in backbone.model.encoder.layer]
    name = getattr(backbone, "name", type(backbone).__name__)
    raise ConfigError(f"{method} prepends prompts to the keys and values of attention layers; backbone {name} "
                      f"({getattr(backbone, 'family', 'no family')}) has none. Backbones that work: "
                      f"{WORKING_BACKBONES}")


def depth(backbone: nn.Module, method: str = "prefix tuning") -> int:
    return len(attention_layers(backbone, method))


def check_layers(field: str, layers: Sequence[int], n: int) -> list[int]:
    """``layers`` as a sorted list of distinct ints in ``[0, n)``, or a ConfigError naming ``field``."""
    try:
        out = sorted({int(i) for i in layers})
    except (TypeError, ValueError):
        raise ConfigError(f"{field}={layers!r}: a list of layer indices in 0..{n - 1}") from None
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ConfigError(f"{field}={list(layers)!r}: layer indices {bad} out of range; this backbone has {n} "
                          f"attention layers, valid indices 0..{n - 1}")
    return out


def default_layers(paper: Sequence[int], n: int) -> list[int]:
    """A paper's default layers on a backbone with ``n`` layers: those it has; none left -> the last layer.

    Only for the default (``None``) of a layer field: the papers' layers are for ViT-B (12 layers), and a
    shallow test model keeps the mechanism at its last layer.  An explicit list is checked by :func:`check_layers`.
    """
    kept = [i for i in paper if i < n]
    return kept or [n - 1]


# -- prefix tuning -------------------------------------------------------------------------------------
def _split_heads(p: torch.Tensor, batch: int, heads: int, head_dim: int, dtype) -> torch.Tensor:
    """``[P, D]`` or ``[B, P, D]`` -> ``[B, heads, P, head_dim]``."""
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(batch, -1, -1)
    return p.to(dtype).reshape(batch, p.shape[1], heads, head_dim).transpose(1, 2)


def _pad_mask(mask: torch.Tensor | None, n_prefix: int) -> torch.Tensor | None:
    """An attention mask over the keys, with ``n_prefix`` attended columns in front (bool: True; additive: 0)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return F.pad(mask, (n_prefix, 0), value=True)
    return F.pad(mask, (n_prefix, 0), value=0.0)


def _vit_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
    """timm ``Attention.forward`` with the prefix ``self._cl_prefix`` prepended to keys and values."""
    pre = self._cl_prefix
    if pre is None:
        return type(self).forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
    if is_causal:
        raise ValueError("prefix tuning of a causal attention layer is not supported")
    B, N, _ = x.shape
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    pk = _split_heads(pre[0], B, self.num_heads, self.head_dim, k.dtype)
    pv = _split_heads(pre[1], B, self.num_heads, self.head_dim, v.dtype)
    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_pad_mask(attn_mask, pk.shape[2]),
                                         dropout_p=self.attn_drop.p if self.training else 0.0)
    out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
    out = self.norm(out)
    if gate is not None:
        out = out * gate
    return self.proj_drop(self.proj(out))


def _bert_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
    """HF ``BertSelfAttention.forward`` (transformers 5: returns ``(output, weights)``) with a prefix."""
    pre = self._cl_prefix
    if pre is None:
        return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)
    B, L, _ = hidden_states.shape
    H, hd = self.num_attention_heads, self.attention_head_size

    def heads(t):
        return t.view(B, L, H, hd).transpose(1, 2)

    q, k, v = heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
    pk = _split_heads(pre[0], B, H, hd, k.dtype)
    pv = _split_heads(pre[1], B, H, hd, v.dtype)
    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    mask = attention_mask
    if mask is not None and mask.dim() == 2:  # [B, L] 1/0 padding mask (older call paths)
        mask = mask[:, None, None, :].bool()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_pad_mask(mask, pk.shape[2]),
                                         dropout_p=self.dropout.p if self.training else 0.0,
                                         scale=getattr(self, "scaling", hd ** -0.5))
    return out.transpose(1, 2).reshape(B, L, H * hd), None


def install_prefix(backbone: nn.Module, layers: Iterable[int], method: str = "prefix tuning") -> None:
    """Make attention layers ``layers`` of ``backbone`` accept a prefix (idempotent; no prefix = unchanged)."""
    mods = attention_layers(backbone, method)
    fn = _vit_forward if _kind(backbone) == "vit" else _bert_forward
    for i in check_layers("layers", list(layers), len(mods)):
        m = mods[i]
        if "_cl_prefix" not in vars(m):
            m._cl_prefix = None
            m.forward = fn.__get__(m, type(m))


@contextlib.contextmanager
def prefixes(backbone: nn.Module, per_layer: dict):
    """Within the block, layer ``i`` of ``backbone`` attends to the prefix ``per_layer[i] = (pk, pv)`` as well."""
    mods = attention_layers(backbone)
    set_ = []
    try:
        for i, (pk, pv) in per_layer.items():
            m = mods[i]
            if "_cl_prefix" not in vars(m):
                raise RuntimeError(f"attention layer {i} takes no prefix: call install_prefix(backbone, [{i}, ...]) first")
            if pk.shape[-1] != pv.shape[-1] or pk.shape[-2] != pv.shape[-2]:
                raise ValueError(f"layer {i}: key prefix {tuple(pk.shape)} and value prefix {tuple(pv.shape)} differ")
            m._cl_prefix = (pk, pv)
            set_.append(m)
        yield backbone
    finally:
        for m in set_:
            m._cl_prefix = None


# -- CODA-Prompt pieces ---------------------------------------------------------------------------------
def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """``mean((t t^T - I)^2)`` over the rows of ``t`` (flattened to 2-D): zero iff the rows are orthonormal."""
    t = t.reshape(t.shape[0], -1)
    eye = torch.eye(t.shape[0], device=t.device, dtype=t.dtype)
    return ((t @ t.t() - eye) ** 2).mean()


@torch.no_grad()
def gram_schmidt_rows(t: torch.Tensor, start: int, stop: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of ``t`` (any shape, rows = first dim) replaced by random unit vectors orthogonal to
    the span of every earlier row (Gaussian draws minus their projection on an orthonormal (QR) basis of the
    earlier rows; rows before ``start`` are kept as they are, rows after ``stop`` untouched).  CODA-Prompt
    re-initialises each new task's components this way (GT-RIPL/CODA-Prompt models/zoo.py ``gram_schmidt``,
    which projects on each earlier row in turn: the same thing while those rows are orthogonal, as they are
    at their own init; once trained they need not be, and the QR basis keeps the new rows orthogonal to their
    span all the same).  Returns a new tensor."""
    flat = t.detach().reshape(t.shape[0], -1).clone().float()
    d = flat.shape[1]
    if stop > d:
        raise ValueError(f"{stop} mutually orthogonal rows need a dimension of at least {stop}; rows have {d}")
    for r in range(start, stop):
        q = torch.linalg.qr(flat[:r].t()).Q if r else None  # orthonormal basis of the earlier rows' span
        while True:
            v = torch.randn(d, generator=generator).to(flat.device)
            if q is not None:
                for _ in range(2):  # twice: re-orthogonalisation for accuracy
                    v = v - q @ (q.t() @ v)
            n = v.norm()
            if n > 1e-6:
                flat[r] = v / n
                break
    return flat.reshape(t.shape).to(t.dtype)


# -- a frozen backbone with prefix layers and a classifier ------------------------------------------------
READOUTS = ("auto", "cls", "mean", "default")


def resolve_readout(readout: str, backbone: nn.Module, field: str = "readout") -> str:
    """``auto``: the class token on ViTs (the prompt papers' ``head_type='token'``), the mean of the real
    tokens on MiniLM (the pooling the sentence encoder was trained for)."""
    if readout not in READOUTS:
        from cl.core.registry import unknown

        raise unknown(field, readout, READOUTS)
    if readout != "auto":
        return readout
    return "mean" if _kind(backbone) == "bert" else "cls"


class PrefixModel(nn.Module):
    """A frozen backbone whose attention layers ``layers`` take prefixes, and a head over all classes.

    ``query(x)``: the frozen backbone's own feature without any prefix (no gradient, eval mode): the query of
    DualPrompt / CODA-Prompt and the uninstructed representation of HiDe-Prompt.  ``features(x, per_layer)``:
    the readout of the prefixed forward.  Subclasses build ``per_layer`` from their prompts."""

    def __init__(self, backbone: nn.Module, head: nn.Module, layers: Sequence[int], readout: str, method: str):
        super().__init__()
        install_prefix(backbone, layers, method)
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.backbone, self.head = backbone, head
        self.readout = readout

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        was = self.backbone.training
        self.backbone.eval()
        try:
            return self.backbone(x).float()
        finally:
            self.backbone.train(was)

    def features(self, x: torch.Tensor, per_layer: dict) -> torch.Tensor:
        with prefixes(self.backbone, per_layer):
            return self.backbone(x, pool=self.readout).float()

    def observe(self, y):
        self.head.observe(y)
