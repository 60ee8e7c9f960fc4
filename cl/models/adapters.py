"""Adapters for pretrained backbones: LoRA sets (through peft) and prompt tokens.

This API is stable; strategies (CoLoR, S-Prompts, L2P, PRD, SSIAT, ...) build on it.

LoRA: one named adapter per task
--------------------------------
::

    from cl.models.adapters import LoraSet

    lora = LoraSet(model.backbone, family=None, r=8, alpha=16, dropout=0.0, targets=None)
    lora.add("task0")              # new adapter, made active; only its parameters are trainable
    lora.switch("task0")           # make an existing adapter the active one (its params trainable)
    with lora.disabled():          # the plain pretrained backbone (e.g. a query for prompt / adapter selection)
        q = model.backbone(x)
    lora.merge("task0")            # fold the adapter into the base weights for good, and drop it
    lora.trainable_parameters()            # trainable parameters of the wrapped module (the active adapter)
    lora.trainable_parameters("task0")     # parameter count of one adapter
    lora.parameters("task0")       # that adapter's tensors (give them to an optimiser)
    lora.names, lora.active        # adapters present, the active one (None before the first add)
    lora.delete("task0"); lora.state_dict("task0"); lora.load_state_dict("task0", sd)

``LoraSet`` injects peft LoRA layers *in place*: the module keeps its type, forward signature and
attributes (``out_dim``, ``preprocessing``), so ``Model(backbone, head)`` keeps working.  The module's
own weights are frozen when the set is created; modules outside it (a head) are left alone.
An untrained adapter is the identity (peft initialises ``lora_B`` to zero).

Targets by family (``family=None`` detects it from the module):

==========  ======================================================================
``vit``     timm ViTs: ``blocks.*.attn.qkv`` and ``blocks.*.attn.proj`` (not the patch embedding)
``bert``    HF BERT-style encoders (MiniLM): ``query`` and ``value``
``cnn``     every ``nn.Conv2d`` with ``groups == 1`` (1x1 and full convs; depthwise ones are skipped)
``mlp``     every ``nn.Linear``
==========  ======================================================================

``targets`` overrides: a list of module-name suffixes (peft semantics) or a regex string matched
against the full module names.

Prompt tokens
-------------
Backbones from :mod:`cl.models.backbones.timm_models` (ViTs) and :mod:`cl.models.backbones.text` (MiniLM) accept
``backbone(x, prompts=P, pool="default" | "prompts")`` where ``P`` is ``[L, D]`` (shared) or
``[B, L, D]`` (per sample) with ``D = backbone.prompt_dim``.  The prompt tokens are inserted right
after the class token (after the patch / word embedding and position embedding; prefix tuning of the
input sequence).  ``pool="default"`` keeps the backbone's own pooling over the original tokens;
``pool="prompts"`` returns the mean of the prompt tokens' outputs (L2P / DualPrompt style), ``pool="cls"`` the
class token's output and ``pool="mean"`` the mean of the real tokens' outputs (ViT: patch tokens; MiniLM: the
non-padding word tokens, the encoder's own pooling).  The real tokens keep their original position
embeddings (MiniLM: position ids 0..L-1, prompts inserted after the embedding layer, without positions).

``Prompt(length, dim)`` is one learnable prompt; ``PromptPool(size, length, dim, key_dim=None, top_k=1)``
is an L2P pool with learnable keys::

    pool = PromptPool(size=10, length=5, dim=backbone.prompt_dim, top_k=5)
    with torch.no_grad():
        q = backbone(x)                            # query: frozen features without prompts
    P, idx, key_loss = pool(q)                     # P: [B, top_k*length, D]; key_loss = mean(1 - cos(q, k_sel))
    feats = backbone(x, prompts=P, pool="prompts")
    pool(q, index=task_ids)                        # select given prompts (training with task ids / S-Prompts)

For the HF text encoder, ``peft_prompt_tuning(hf_model, n_tokens)`` returns a peft
``PromptTuning`` feature-extraction model (peft's own implementation), while ``MiniLM(..., prompts=P)``
is the prefix-embedding route that shares the ViT prompt interface above.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LoraSet", "detect_family", "lora_targets", "Prompt", "PromptPool", "peft_prompt_tuning",
           "FAMILIES"]

FAMILIES = ("vit", "bert", "cnn", "mlp")


def _inner(module: nn.Module) -> nn.Module:
    """The wrapped network of our backbone wrappers (``.model``), or the module itself."""
    return getattr(module, "model", module) if isinstance(getattr(module, "model", None), nn.Module) else module


def detect_family(module: nn.Module) -> str:
    """Guess the LoRA family of a module: vit, bert, cnn or mlp."""
    names = [n for n, _ in module.named_modules()]
    if any(n.endswith("attn.qkv") for n in names) and any("patch_embed" in n for n in names):
        return "vit"
    if any(n.endswith(".query") for n in names) and any(n.endswith(".value") for n in names):
        return "bert"
    if any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return "cnn"
    if any(isinstance(m, nn.Linear) for m in module.modules()):
        return "mlp"
    raise ValueError(f"cannot detect a LoRA family for {type(module).__name__}: pass family= one of {FAMILIES} "
                     f"or targets=")


def lora_targets(module: nn.Module, family: str):
    """peft ``target_modules`` for a family (a regex string or a list of full module names)."""
    if family == "vit":
        return r"(.*\.)?blocks\.\d+\.attn\.(qkv|proj)"
    if family == "bert":
        return ["query", "value"]
    if family == "cnn":
        out = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    elif family == "mlp":
        out = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    else:
        raise ValueError(f"unknown LoRA family {family!r}; valid: {', '.join(FAMILIES)}")
    if not out:
        raise ValueError(f"no target modules of family {family!r} in {type(module).__name__}")
    return out


class LoraSet:
    """Named LoRA adapters (one per task) injected in place into ``module`` through peft."""

    def __init__(self, module: nn.Module, family: str | None = None, r: int = 8, alpha: float = 16,
                 dropout: float = 0.0, targets: Sequence[str] | str | None = None):
        self.module = module
        self.family = family or detect_family(module)
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.targets = targets if targets is not None else lora_targets(module, self.family)
        if isinstance(self.targets, tuple):
            self.targets = list(self.targets)
        self.names: list[str] = []
        self.active: str | None = None
        self._enabled = True
        for p in module.parameters():
            p.requires_grad_(False)

    # -- peft layers --------------------------------------------------------------------------
    def _layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.module.modules() if isinstance(m, BaseTunerLayer)]

    def _config(self, r=None, alpha=None):
        from peft import LoraConfig

        return LoraConfig(r=r or self.r, lora_alpha=alpha or self.alpha, lora_dropout=self.dropout,
                          target_modules=self.targets, bias="none")

    # -- API ----------------------------------------------------------------------------------
    def add(self, name: str, r: int | None = None, alpha: float | None = None, activate: bool = True) -> None:
        """Add a fresh adapter (identity at init) and make it the active one."""
        from peft import inject_adapter_in_model

        if name in self.names:
            raise ValueError(f"adapter {name!r} exists already (adapters: {self.names})")
        if any(c in name for c in ".[]"):
            raise ValueError(f"adapter name {name!r}: no dots or brackets")
        # peft freezes everything that is not a LoRA parameter of the injected module; keep our own record
        trainable = {id(p) for p in self.module.parameters() if p.requires_grad}
        dev = next((p.device for p in self.module.parameters()), torch.device("cpu"))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            inject_adapter_in_model(self._config(r, alpha), self.module, adapter_name=name)
        self.module.to(dev)
        for n, p in self.module.named_parameters():
            if "lora_" not in n and id(p) in trainable:
                p.requires_grad_(True)
        self.names.append(name)
        if activate or self.active is None:
            self.switch(name)
        else:
            self.switch(self.active)

    def switch(self, name: str) -> None:
        """Make ``name`` the active adapter: the one used in forward and the only trainable one."""
        if name not in self.names:
            raise KeyError(f"unknown adapter {name!r}; adapters: {self.names}")
        for layer in self._layers():
            if name in layer.lora_A:
                layer.set_adapter(name)  # sets requires_grad on this adapter only
        self.active = name

    @contextlib.contextmanager
    def disabled(self):
        """Context manager: forward through the base weights only (all adapters off)."""
        layers = self._layers()
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield self.module
        finally:
            for layer in layers:
                layer.enable_adapters(True)
            if self.active is not None:
                self.switch(self.active)

    def merge(self, name: str | None = None) -> None:
        """Fold adapter ``name`` (default: the active one) into the base weights and drop it."""
        name = name or self.active
        if name not in self.names:
            raise KeyError(f"unknown adapter {name!r}; adapters: {self.names}")
        with torch.no_grad():
            for layer in self._layers():
                if name in layer.lora_A:
                    base = layer.get_base_layer()
                    base.weight.add_(layer.get_delta_weight(name).to(base.weight.dtype))
        self.delete(name)

    def delete(self, name: str) -> None:
        if name not in self.names:
            raise KeyError(f"unknown adapter {name!r}; adapters: {self.names}")
        others = [n for n in self.names if n != name]
        for layer in self._layers():
            if name in layer.lora_A:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    layer.delete_adapter(name)
        self.names = others
        if self.active == name:
            self.active = others[-1] if others else None
        if self.active is not None:
            self.switch(self.active)

    def parameters(self, name: str | None = None) -> Iterator[nn.Parameter]:
        """The parameters of one adapter (default: the active one)."""
        name = name or self.active
        if name not in self.names:
            raise KeyError(f"unknown adapter {name!r}; adapters: {self.names}")
        pat = re.compile(rf"(^|\.)lora_\w+\.{re.escape(name)}(\.|$)")
        for n, p in self.module.named_parameters():
            if pat.search(n):
                yield p

    def trainable_parameters(self, name: str | None = None) -> int:
        """Trainable parameters of the wrapped module, or the size of adapter ``name``."""
        if name is not None:
            return sum(p.numel() for p in self.parameters(name))
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    def state_dict(self, name: str | None = None) -> dict:
        name = name or self.active
        pat = re.compile(rf"(^|\.)lora_\w+\.{re.escape(name)}(\.|$)")
        return {n: p.detach().clone() for n, p in self.module.named_parameters() if pat.search(n)}

    def load_state_dict(self, name: str, state: dict) -> None:
        if name not in self.names:
            self.add(name, activate=False)
        own = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                own[n].copy_(v)

    def __repr__(self):
        return f"LoraSet(family={self.family!r}, r={self.r}, alpha={self.alpha}, adapters={self.names}, active={self.active!r})"


# -- prompts -------------------------------------------------------------------------------------
class Prompt(nn.Module):
    """One learnable prompt of ``length`` tokens of size ``dim``; ``forward()`` returns ``[length, dim]``."""

    def __init__(self, length: int, dim: int, init_std: float = 0.02):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(length, dim) * init_std)

    def forward(self, batch: int | None = None) -> torch.Tensor:
        return self.tokens if batch is None else self.tokens.unsqueeze(0).expand(batch, -1, -1)


class PromptPool(nn.Module):
    """L2P prompt pool: ``size`` prompts of ``length`` tokens with learnable keys.

    ``forward(query, index=None)`` picks the ``top_k`` prompts whose keys are closest (cosine) to each
    query (or the prompts ``index`` [B] / [B, k] if given) and returns ``(prompts [B, k*length, dim],
    index [B, k], key_loss)`` where ``key_loss`` is the mean ``1 - cos(query, selected key)``
    (L2P's surrogate loss pulling the chosen keys to the queries).

    ``init``: ``"uniform"`` (default) is the official L2P init, flax's ``nn.initializers.uniform()`` =
    U(0, 0.01), for the prompts and the keys; ``"symmetric"`` is U(-1, 1) (this platform's init before
    issue 13: prompt tokens far larger than the embeddings they sit among); ``"normal"`` is N(0, 0.02^2).
    """

    def __init__(self, size: int, length: int, dim: int, key_dim: int | None = None, top_k: int = 1,
                 init: str = "uniform"):
        super().__init__()
        if top_k > size:
            raise ValueError(f"top_k={top_k} is larger than the pool size {size}")
        self.size, self.length, self.dim, self.top_k = size, length, dim, top_k
        kd = key_dim or dim
        if init == "uniform":
            self.prompts = nn.Parameter(torch.empty(size, length, dim).uniform_(0, 0.01))
            self.keys = nn.Parameter(torch.empty(size, kd).uniform_(0, 0.01))
        elif init == "symmetric":
            self.prompts = nn.Parameter(torch.empty(size, length, dim).uniform_(-1, 1))
            self.keys = nn.Parameter(torch.empty(size, kd).uniform_(-1, 1))
        elif init == "normal":
            self.prompts = nn.Parameter(torch.randn(size, length, dim) * 0.02)
            self.keys = nn.Parameter(torch.randn(size, kd) * 0.02)
        else:
            raise ValueError(f"prompt pool init must be 'uniform', 'symmetric' or 'normal', got {init!r}")

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        return F.normalize(query.float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).t()

    def forward(self, query: torch.Tensor, index: torch.Tensor | None = None):
        sim = self.similarity(query)  # [B, size]
        if index is None:
            index = sim.topk(self.top_k, dim=1).indices
        elif index.dim() == 1:
            index = index.unsqueeze(1)
        prompts = self.prompts[index]  # [B, k, length, dim]
        prompts = prompts.reshape(query.shape[0], -1, self.dim)
        key_loss = (1 - sim.gather(1, index)).mean()
        return prompts, index, key_loss


def peft_prompt_tuning(hf_model: nn.Module, n_tokens: int = 10, adapter_name: str = "default"):
    """Wrap an HF encoder (e.g. ``MiniLM(...).model``) in peft prompt tuning (feature extraction).

    Returns a ``PeftModel`` whose forward takes ``input_ids`` / ``attention_mask`` and prepends
    ``n_tokens`` learnable virtual tokens; only those are trainable.  Add more with
    ``peft_model.add_adapter(name, config)`` and pick with ``peft_model.set_adapter(name)``.
    """
    from peft import PromptTuningConfig, TaskType, get_peft_model

    cfg = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=n_tokens)
    return get_peft_model(hf_model, cfg, adapter_name=adapter_name)
