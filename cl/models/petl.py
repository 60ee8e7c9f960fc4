"""Parameter-efficient modules for frozen pretrained backbones (timm ViTs, HF BERT encoders such as MiniLM).

Each module is attached to a backbone **in place** by forward hooks; the backbone keeps its type, forward
signature and attributes (``out_dim``, ``preprocessing``), its own weights are not touched, and the module's
parameters live in the module (put it in the strategy's model so that they are trained, saved and moved with
it).  Hooks are bound methods of the module's own children, so a deep copy of the model (backbone and module
together) stays consistent.  Each can be switched off, which gives back the plain pretrained backbone
bit for bit: APER's pretrained branch and EASE's per-task subspaces use that instead of a second backbone.

==================  =====================================================================================
``ParallelAdapter``  AdaptFormer branch a(x) = s * Up(Dropout(ReLU(Down(x)))), parallel to a block's MLP
                     (Chen et al., NeurIPS 2022); ``Up`` and the biases zero-initialised, so an untrained
                     adapter is the identity. ``attach_adaptformer``: one per block (SSIAT's shared adapter).
``AdapterBank``      sets of such adapters on one backbone (one adapter per block per set), one set active
                     at a time or none (APER: one set; EASE: one set per task).
``SSF``              scale and shift after every linear, LayerNorm and patch-embedding op
                     (Lian et al., NeurIPS 2022): y = gamma * op(x) + beta.
``VisualPrompts``    VPT (Jia et al., ECCV 2022) for timm ViTs: ``deep`` = new prompt tokens at the input of
                     every block, dropped at its output; shallow = tokens at the first block only.
==================  =====================================================================================

Where each goes (``adaptformer_sites``, ``ssf_sites``):

* timm ViT ``Block``: the adapter's input is the residual stream after attention (the input of ``norm2``),
  its output is added to the MLP's output: x <- x + MLP(LN2(x)) + a(x) (LAMDA-PILOT ``backbone/vit_adapter.py``,
  ``ffn_option="parallel"``).  SSF after ``patch_embed.proj``, every block's ``norm1``, ``attn.qkv``,
  ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2`` and the final ``norm`` (as PILOT ``backbone/vit_ssf.py``).
* HF ``BertLayer`` (MiniLM): the adapter's input is the attention output (input of ``intermediate``), its
  output is added to the FFN's output dense layer before the residual LayerNorm (post-LN BERT has no
  "after attention, before LN2" point; this is the analogue).  SSF after every ``nn.Linear`` and
  ``nn.LayerNorm`` of embeddings and encoder (the pooler left out: the sentence embedding does not use it).
* VPT needs the ViT token sequence; on BERT encoders the prompt route is ``MiniLM(ids, prompts=P)``
  (cl.models.adapters), not this module.

Why written here and not taken from peft (0.21): peft has LoRA-style weight deltas, IA3 (a learned *scale*
of a few activations, no shift, on Linear/Conv only) and prompt / prefix tuning for HF ``PreTrainedModel``
text models.  It has no bottleneck adapter parallel to a block, no scale-and-shift after LayerNorms, and no
per-layer (deep) prompt tokens for a timm ViT.  LoRA is taken from peft (cl.models.adapters.LoraSet).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ParallelAdapter", "attach_adaptformer", "adaptformer_sites", "AdapterBank", "SSF", "ssf_sites",
           "VisualPrompts", "transformer_family", "VPT_INITS"]


def transformer_family(backbone: nn.Module) -> str | None:
    """'vit' (timm ViT blocks), 'bert' (HF BERT layers) or None (no transformer blocks: a CNN, an MLP)."""
    for m in backbone.modules():
        if hasattr(m, "norm2") and hasattr(m, "mlp") and hasattr(m, "attn"):
            return "vit"
        if hasattr(m, "intermediate") and hasattr(m, "output") and hasattr(m.output, "dense"):
            return "bert"
    return None


def adaptformer_sites(backbone: nn.Module) -> list[tuple[int, nn.Module, nn.Module]]:
    """Per transformer block: (width, module whose input is the adapter's input, module whose output the
    adapter's output is added to)."""
    sites = []
    for _, m in backbone.named_modules():
        if hasattr(m, "norm2") and hasattr(m, "mlp") and hasattr(m, "attn"):  # timm ViT block
            sites.append((m.norm2.normalized_shape[0], m.norm2, m.mlp))  # LN2's input: stream after attention
        elif hasattr(m, "intermediate") and hasattr(m, "output") and hasattr(m.output, "dense"):  # BERT layer
            sites.append((m.output.dense.out_features, m.intermediate, m.output.dense))
    return sites


class ParallelAdapter(nn.Module):
    """AdaptFormer branch, attached to a block by hooks: one captures the branch input, the other adds
    the branch output.  The hooks are bound methods, so a deep copy of the model stays consistent."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.drop = nn.Dropout(dropout)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._x = None

    def branch(self, x):
        return self.scale * self.up(self.drop(F.relu(self.down(x))))

    def capture(self, module, args):  # forward pre-hook
        self._x = args[0]

    def add(self, module, args, out):  # forward hook
        x, self._x = self._x, None
        return out + self.branch(x).to(out.dtype)


def attach_adaptformer(backbone: nn.Module, bottleneck: int, scale: float, dropout: float) -> nn.ModuleList:
    """Attach one ParallelAdapter per transformer block (timm ViT ``Block`` or HF ``BertLayer``)."""
    adapters = nn.ModuleList()
    for dim, pre, post in adaptformer_sites(backbone):
        a = ParallelAdapter(dim, bottleneck, scale, dropout)
        pre.register_forward_pre_hook(a.capture)
        post.register_forward_hook(a.add)
        adapters.append(a)
    if not adapters:
        raise ValueError(f"no transformer block found in {type(backbone).__name__} for an AdaptFormer adapter; "
                         f"use adapter=lora")
    return adapters


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


class _AdapterSite(nn.Module):
    """One block's adapters (one per set); its hooks route through the active set, or do nothing."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.adapters = nn.ModuleList()
        self._active: int | None = None
        self._x = None

    def capture(self, module, args):  # forward pre-hook
        if self._active is not None:
            self._x = args[0]

    def add(self, module, args, out):  # forward hook
        if self._active is None:
            return out
        x, self._x = self._x, None
        return out + self.adapters[self._active].branch(x).to(out.dtype)


class AdapterBank(nn.Module):
    """Sets of AdaptFormer adapters on one backbone: one ``ParallelAdapter`` per transformer block per set.

    ``add_set()`` appends a fresh set (identity until trained) and returns its index; ``activate(i)`` routes
    every block through set ``i`` (``None``: the pretrained backbone); ``using(i)`` does so inside a
    ``with`` block.  The active set is a working value, not state: callers choose it before each forward.
    """

    def __init__(self, backbone: nn.Module, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1):
        super().__init__()
        sites = adaptformer_sites(backbone)
        if not sites:
            raise ValueError(f"no transformer block (timm ViT Block or BERT layer) in {type(backbone).__name__} "
                             f"for an AdaptFormer adapter")
        self.bottleneck, self.scale, self.dropout = bottleneck, scale, dropout
        self.sites = nn.ModuleList()
        for dim, pre, post in sites:
            s = _AdapterSite(dim)
            pre.register_forward_pre_hook(s.capture)
            post.register_forward_hook(s.add)
            self.sites.append(s)

    @property
    def n_sets(self) -> int:
        return len(self.sites[0].adapters)

    def add_set(self) -> int:
        dev = _device_of(self)
        for s in self.sites:
            s.adapters.append(ParallelAdapter(s.dim, self.bottleneck, self.scale, self.dropout).to(dev))
        return self.n_sets - 1

    def set_parameters(self, i: int):
        """The parameters of set ``i`` (one adapter per block)."""
        for s in self.sites:
            yield from s.adapters[i].parameters()

    def set_trainable(self, i: int, flag: bool) -> None:
        for p in self.set_parameters(i):
            p.requires_grad_(flag)

    @property
    def active(self) -> int | None:
        return self.sites[0]._active

    def activate(self, i: int | None) -> None:
        if i is not None and not 0 <= i < self.n_sets:
            raise IndexError(f"adapter set {i} does not exist ({self.n_sets} sets)")
        for s in self.sites:
            s._active, s._x = i, None

    @contextlib.contextmanager
    def using(self, i: int | None):
        prev = self.active
        self.activate(i)
        try:
            yield
        finally:
            self.activate(prev)


def ssf_sites(backbone: nn.Module) -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, width, channel axis) after whose output SSF goes: every ``nn.Linear`` and
    ``nn.LayerNorm`` of a timm ViT or BERT encoder and a ViT's patch-embedding convolution; heads, poolers
    and identities left out.  Empty for a backbone without transformer blocks."""
    if transformer_family(backbone) is None:
        return []
    out = []
    for name, m in backbone.named_modules():
        leaf = name.split(".")
        if any(p in ("head", "pooler", "attn_pool", "head_drop") for p in leaf):
            continue
        if isinstance(m, nn.Linear):
            out.append((name, m, m.out_features, -1))
        elif isinstance(m, nn.LayerNorm) and m.normalized_shape:
            out.append((name, m, m.normalized_shape[-1], -1))
        elif isinstance(m, nn.Conv2d) and name.endswith("patch_embed.proj"):
            out.append((name, m, m.out_channels, 1))
    return out


class _Switchable:
    """``enable(flag)`` and the ``disabled()`` context for a module whose hooks read ``_on`` flags."""

    def _switches(self):  # the children whose ``_on`` flag their hooks read
        raise NotImplementedError

    def enable(self, flag: bool = True) -> None:
        for m in self._switches():
            m._on = bool(flag)

    @contextlib.contextmanager
    def disabled(self):
        prev = self._switches()[0]._on
        self.enable(False)
        try:
            yield
        finally:
            self.enable(prev)


class _ScaleShift(nn.Module):
    def __init__(self, dim: int, axis: int, init_std: float):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        if init_std > 0:  # SSF's (and PILOT's) init: gamma ~ N(1, std), beta ~ N(0, std)
            nn.init.normal_(self.scale, mean=1.0, std=init_std)
            nn.init.normal_(self.shift, std=init_std)
        self.axis = axis
        self._on = True

    def hook(self, module, args, out):
        if not self._on:
            return out
        g, b = self.scale.to(out.dtype), self.shift.to(out.dtype)
        if self.axis == 1 and out.dim() == 4:  # conv maps (B, C, H, W)
            g, b = g.view(1, -1, 1, 1), b.view(1, -1, 1, 1)
        return out * g + b


class SSF(_Switchable, nn.Module):
    """Scale-and-shift features (SSF) after every op of ``ssf_sites(backbone)``.

    ``init_std``: gamma ~ N(1, init_std), beta ~ N(0, init_std) (0.02 in the SSF code and PILOT's
    ``init_ssf_scale_shift``); ``init_std=0`` starts at the identity.  ``enabled(False)`` (or
    ``disabled()``) gives back the plain backbone."""

    def __init__(self, backbone: nn.Module, init_std: float = 0.02):
        super().__init__()
        sites = ssf_sites(backbone)
        if not sites:
            raise ValueError(f"SSF here needs a timm ViT or a BERT encoder; {type(backbone).__name__} has no "
                             f"transformer blocks")
        self.names = [n for n, *_ in sites]
        self.ops = nn.ModuleList()
        for _, m, dim, axis in sites:
            op = _ScaleShift(dim, axis, init_std)
            m.register_forward_hook(op.hook)
            self.ops.append(op)

    def _switches(self):
        return self.ops


VPT_INITS = ("zeros", "uniform")


class _PromptSite(nn.Module):
    """Prompt tokens appended to a block's input sequence (pre-hook) and dropped from a block's output."""

    def __init__(self, length: int, dim: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(length, dim))
        self._on = True

    def insert(self, module, args):  # forward pre-hook of the block
        if not self._on:
            return None
        x = args[0]
        p = self.tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return (torch.cat([x, p], dim=1), *args[1:])

    def drop(self, module, args, out):  # forward hook of the block (the same block for deep prompts)
        if not self._on:
            return out
        return out[:, : out.shape[1] - self.tokens.shape[0]]


class VisualPrompts(_Switchable, nn.Module):
    """VPT prompt tokens for a timm ViT (``TimmBackbone`` or a bare ``VisionTransformer``).

    ``deep=True``: ``length`` new tokens at the input of every block, dropped at its output (VPT-deep);
    ``deep=False``: ``length`` tokens at the input of the first block, dropped after the last (VPT-shallow).
    The tokens are appended after the patch tokens (as PILOT ``backbone/vpt.py``; the VPT paper inserts them
    after the class token: the same function, since prompts carry no position embedding and attention, LN and
    MLP treat tokens as a set).  ``init``: ``zeros`` (PILOT) or ``uniform`` U(-v, v), v = sqrt(6 / (3 p^2 + d))
    with p the patch size (the VPT paper's Xavier-style init)."""

    def __init__(self, backbone: nn.Module, length: int = 5, deep: bool = True, init: str = "zeros"):
        super().__init__()
        inner = getattr(backbone, "model", backbone)
        blocks = getattr(inner, "blocks", None)
        if blocks is None or not hasattr(inner, "patch_embed") or transformer_family(inner) != "vit":
            raise ValueError(f"VPT needs a timm ViT (patch embedding and blocks); {type(backbone).__name__} "
                             f"is not one")
        if init not in VPT_INITS:
            raise ValueError(f"VPT init {init!r}: choose one of {', '.join(VPT_INITS)}")
        dim = int(inner.embed_dim)
        blocks = list(blocks)
        self.deep, self.length = bool(deep), int(length)
        self.sites = nn.ModuleList(_PromptSite(length, dim) for _ in range(len(blocks) if deep else 1))
        if init == "uniform":
            ps = inner.patch_embed.patch_size
            p = ps[0] * ps[1] if isinstance(ps, (tuple, list)) else ps * ps
            v = math.sqrt(6.0 / float(3 * p + dim))
            for s in self.sites:
                nn.init.uniform_(s.tokens, -v, v)
        if deep:
            for s, b in zip(self.sites, blocks):
                b.register_forward_pre_hook(s.insert)
                b.register_forward_hook(s.drop)
        else:
            blocks[0].register_forward_pre_hook(self.sites[0].insert)
            blocks[-1].register_forward_hook(self.sites[0].drop)

    def _switches(self):
        return self.sites
