"""Benchmark: training speed of the platform's adapter paths on a ViT against plain timm / peft (issue 16, Speed).

For every parameter-efficient module that a strategy trains on a timm ViT, one training step (forward,
backward, AdamW step over the trainable parameters only, cross-entropy on a linear head) through the
platform path, built the way the strategy builds it, against a plain reference in the same process:

==============  =====================================  ==================================================
method          platform path (as the strategy)        plain reference (written here)
==============  =====================================  ==================================================
adaptformer     SSIAT ``make_adapter(adaptformer)``:   timm ViT, each ``Block`` wrapped: the same bottleneck
                ``cl.models.petl.attach_adaptformer``  adapter added in parallel to the block's MLP
adapter-bank    APER ``petl=adapter`` / EASE: an       the same wrapped blocks
                ``AdapterBank`` with one active set
ssf             APER ``petl=ssf`` (``SSF``, hooks)     each site wrapped: ``op(x) * gamma + beta``
vpt-deep        APER ``petl=vpt`` (deep, 5 tokens)     ViT forward written out, prompts concatenated
vpt-shallow     APER ``petl=vpt, vpt_type=shallow``    before each block (deep) / before the blocks
lora            SSIAT ``make_adapter(lora)``:          peft ``get_peft_model(LoraConfig(...))``, the
                ``LoraSet`` r 8, alpha 16, qkv + proj  same targets, r and alpha
lora-qkv        ``LoraSet`` r 8 on ``qkv`` only        the same (the setting of gpu-anchors.md)
==============  =====================================  ==================================================

Both paths start from the same backbone weights, head and trainable weights (copied), have the same
trainable-parameter count (asserted) and dtype; before timing, two steps of each from the same seed must
give the same losses (the "same step" column: the largest loss difference).  Then interleaved rounds
(the order of the paths alternates from round to round, so load from other processes hits both alike);
images/s is the median over rounds, the ratio is platform / reference.

    python benchmarks/adapters.py --threads 1                    # CPU: vit_tiny_patch16_224, 96 px, batch 16
    python benchmarks/adapters.py --rounds 3 --methods ssf lora  # a subset
    python benchmarks/adapters.py --gpu                          # ViT-B/16, 224 px, batch 128, bf16 autocast, CUDA

Results go to ``benchmarks/results/ptm-speed.md`` (``--out``; the CPU and GPU sections are kept apart, a
run replaces only its own), with the machine and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics as st
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parameters_to_vector, vector_to_parameters  # noqa: E402

from benchmarks.common import table  # noqa: E402
from benchmarks.feature_cache import _rate, machine  # noqa: E402

METHODS = ("adaptformer", "adapter-bank", "ssf", "vpt-deep", "vpt-shallow", "lora", "lora-qkv")
CPU_DEFAULT = ("adaptformer", "adapter-bank", "ssf", "vpt-deep", "vpt-shallow", "lora")
USED_BY = {"adaptformer": "SSIAT", "adapter-bank": "APER, EASE", "ssf": "APER", "vpt-deep": "APER",
           "vpt-shallow": "APER", "lora": "SSIAT (adapter=lora)", "lora-qkv": "(gpu-anchors.md setting)"}
QKV = r"(.*\.)?blocks\.\d+\.attn\.qkv"
N_CLASSES = 100


# -- the platform path, built as the strategies build it ------------------------------------------------
def platform_path(method: str, backbone: nn.Module) -> nn.Module | None:
    """Attach ``method`` to ``backbone`` (a ``TimmBackbone``) through the strategies' own builders; returns
    the module that holds the new parameters (None where they live in the backbone: LoRA)."""
    from strategies.aper import APERConfig, petl_module
    from strategies.ssiat import SSIATConfig, make_adapter

    if method == "adaptformer":
        return make_adapter(backbone, "adaptformer", SSIATConfig())
    if method == "lora":
        return make_adapter(backbone, "lora", SSIATConfig())
    if method == "lora-qkv":
        from cl.models.adapters import LoraSet

        c = SSIATConfig()
        LoraSet(backbone, r=c.lora_r, alpha=c.lora_alpha, targets=QKV).add("t0")
        return None
    kind = {"adapter-bank": ("adapter", "deep"), "ssf": ("ssf", "deep"), "vpt-deep": ("vpt", "deep"),
            "vpt-shallow": ("vpt", "shallow")}[method]
    mod = petl_module(kind[0], backbone, APERConfig(petl=kind[0], vpt_type=kind[1]), "benchmark")
    if method == "adapter-bank":
        mod.activate(0)  # as APERModel.adapted / EASE's training forward: the set being trained is the active one
    return mod


# -- plain references, written by hand on a plain timm VisionTransformer --------------------------------
class RefAdapterBlock(nn.Module):
    """A timm ``Block`` with a bottleneck adapter parallel to its MLP:
    x <- x + attn(LN1 x);  x <- x + ls2(MLP(LN2 x) + s * up(drop(relu(down(x)))))."""

    def __init__(self, block: nn.Module, dim: int, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.block = block
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        self.drop, self.scale = nn.Dropout(dropout), scale

    def forward(self, x):
        b = self.block
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        a = self.scale * self.up(self.drop(F.relu(self.down(x))))
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x)) + a.to(x.dtype)))


class RefSSF(nn.Module):
    """``op`` followed by a per-channel scale and shift (channel axis 1 for the patch convolution)."""

    def __init__(self, op: nn.Module, dim: int, conv: bool):
        super().__init__()
        self.op, self.conv = op, conv
        self.scale, self.shift = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        y = self.op(x)
        g, b = self.scale.to(y.dtype), self.shift.to(y.dtype)  # keep the op's dtype (bf16 under autocast)
        if self.conv:
            g, b = g[:, None, None], b[:, None, None]
        return y * g + b


class RefVPT(nn.Module):
    """The ViT forward written out with ``length`` prompt tokens concatenated after the patch tokens:
    before every block and dropped after it (deep), or once before the blocks and dropped after them."""

    def __init__(self, vit: nn.Module, length: int, deep: bool):
        super().__init__()
        self.vit, self.deep = vit, deep
        self.prompts = nn.Parameter(torch.zeros(len(vit.blocks) if deep else 1, length, vit.embed_dim))

    def forward(self, x):
        m, n = self.vit, self.prompts.shape[1]
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        p = self.prompts.to(x.dtype)
        if self.deep:
            for blk, pb in zip(m.blocks, p):
                x = blk(torch.cat([x, pb.expand(x.shape[0], -1, -1)], 1))[:, :-n]
        else:
            x = m.blocks(torch.cat([x, p[0].expand(x.shape[0], -1, -1)], 1))[:, :-n]
        return m.forward_head(m.norm(x), pre_logits=True)


def reference_path(method: str, vit: nn.Module) -> nn.Module:
    """The plain reference for ``method`` around the plain timm ``vit`` (its weights frozen)."""
    from strategies.aper import APERConfig
    from strategies.ssiat import SSIATConfig

    for p in vit.parameters():
        p.requires_grad_(False)
    if method in ("adaptformer", "adapter-bank"):
        c = SSIATConfig() if method == "adaptformer" else APERConfig()
        for i, blk in enumerate(vit.blocks):
            vit.blocks[i] = RefAdapterBlock(blk, vit.embed_dim, c.bottleneck, c.adapter_scale, c.adapter_dropout)
        return vit
    if method == "ssf":
        names = ["patch_embed.proj"] + [f"blocks.{i}.{s}" for i in range(len(vit.blocks)) for s in
                                        ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")] + ["norm"]
        for name in names:
            parent, _, leaf = name.rpartition(".")
            op = vit.get_submodule(name)
            dim = op.out_channels if isinstance(op, nn.Conv2d) else (
                op.out_features if isinstance(op, nn.Linear) else op.normalized_shape[-1])
            setattr(vit.get_submodule(parent) if parent else vit, leaf, RefSSF(op, dim, isinstance(op, nn.Conv2d)))
        return vit
    if method.startswith("vpt"):
        return RefVPT(vit, APERConfig().vpt_length, deep=method == "vpt-deep")
    from peft import LoraConfig, get_peft_model

    c = SSIATConfig()
    targets = QKV if method == "lora-qkv" else r"(.*\.)?blocks\.\d+\.attn\.(qkv|proj)"
    return get_peft_model(vit, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0,
                                          target_modules=targets))


# -- one training step ------------------------------------------------------------------------------------
class Path_:
    """A network, its linear head, its trainable parameters and an AdamW over them; ``step()`` is one step."""

    def __init__(self, net: nn.Module, extra: nn.Module | None, head: nn.Linear, x, y, amp):
        self.net, self.extra, self.head, self.x, self.y, self.amp = net, extra, head, x, y, amp
        mods = [net] + ([extra] if extra is not None else []) + [head]  # the head last on both paths
        seen, self.params = set(), []
        for m in mods:
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    self.params.append(p)
        self.opt = torch.optim.AdamW(self.params, lr=1e-3)
        net.train()

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with self.amp():
            loss = F.cross_entropy(self.head(self.net(self.x)).float(), self.y)
        loss.backward()
        self.opt.step()
        return loss.detach()


def build_pair(method: str, args, dev, x, y, amp):
    """(platform, reference) for ``method``: same backbone weights, head and initial trainable weights."""
    import copy

    import timm

    from cl.models.backbones.timm_models import TimmConfig, create_timm

    torch.manual_seed(0)
    backbone = create_timm(args.model, TimmConfig(img_size=args.img, depth=args.depth)).to(dev)
    kw = dict(num_classes=0, img_size=args.img, **({"depth": args.depth} if args.depth else {}))
    vit = timm.create_model(args.model, pretrained=False, **kw).to(dev)
    vit.load_state_dict(backbone.model.state_dict())
    head = nn.Linear(backbone.out_dim, N_CLASSES).to(dev)
    extra = platform_path(method, backbone)
    if extra is not None:
        extra.to(dev)
    plat = Path_(backbone, extra, head, x, y, amp)
    ref = Path_(reference_path(method, vit).to(dev), None, copy.deepcopy(head), x, y, amp)
    if plat.n_trainable != ref.n_trainable:
        raise AssertionError(f"{method}: {plat.n_trainable} trainable parameters on the platform path, "
                             f"{ref.n_trainable} on the reference")
    with torch.no_grad():  # the reference starts from the platform's initial trainable weights
        vector_to_parameters(parameters_to_vector(plat.params), ref.params)
    return plat, ref


def same_step(plat: Path_, ref: Path_, steps: int = 2) -> tuple[list[float], list[float]]:
    """Losses of ``steps`` steps of each path from the same seed (dropout masks drawn alike)."""
    out = []
    for p in (plat, ref):
        torch.manual_seed(1)
        out.append([float(p.step()) for _ in range(steps)])
    return out[0], out[1]


# -- the benchmark ----------------------------------------------------------------------------------------
def measure(args) -> tuple[list[dict], str]:
    dev = torch.device("cuda" if args.gpu else "cpu")
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    def amp():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.img, args.img, generator=g).to(dev)
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=g).to(dev)
    pairs, checks = {}, {}
    for m in args.methods:
        pairs[m] = build_pair(m, args, dev, x, y, amp)
        checks[m] = same_step(*pairs[m])
        for p in pairs[m]:  # warm-up
            for _ in range(args.warmup):
                p.step()
        sync()
    rates = {(m, s): [] for m in args.methods for s in (0, 1)}
    for r in range(args.rounds):
        for m in args.methods:
            for s in ((0, 1) if r % 2 == 0 else (1, 0)):
                rates[(m, s)].append(_rate(pairs[m][s].step, args.batch, 0, args.iters, sync))
    rows = []
    for m in args.methods:
        pr, rr = rates[(m, 0)], rates[(m, 1)]
        ratios = [a / b for a, b in zip(pr, rr)]
        lp, lr_ = checks[m]
        rows.append({"method": m, "used by": USED_BY[m], "trainable": pairs[m][0].n_trainable,
                     "trainable_ref": pairs[m][1].n_trainable, "platform img/s": st.median(pr),
                     "reference img/s": st.median(rr), "ratio": st.median(pr) / st.median(rr),
                     "ratio per round": f"{min(ratios):.2f}-{max(ratios):.2f}",
                     "same step": f"{max(abs(a - b) for a, b in zip(lp, lr_)):.1e}",
                     "loss_platform": lp, "loss_reference": lr_})
    what = (f"{args.model}, {args.img} px{f', depth {args.depth}' if args.depth else ''}, batch {args.batch}, "
            f"{'bf16 autocast on ' + torch.cuda.get_device_name(dev) if cuda else 'fp32 on the CPU'}, random init; "
            f"{args.rounds} rounds x {args.iters} steps after {args.warmup} warm-up steps (and the 2 steps of the check)")
    return rows, what


def _versions() -> str:
    import peft
    import timm

    return f"timm {timm.__version__}, peft {peft.__version__}, Python {sys.version.split()[0]}"


def write_section(path: Path, key: str, body: str) -> None:
    """Replace the ``key`` section (``<!-- key -->`` ... ``<!-- /key -->``) of ``path``, keeping the rest."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    head = "# Adapter training speed: the platform's ViT path against plain timm / peft (issue 16)\n\n"
    text = path.read_text() if path.exists() else head
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> list[dict] | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="ViT-B/16, 224 px, batch 128, bf16 autocast on CUDA")
    ap.add_argument("--model", default=None, help="timm ViT (default vit_tiny_patch16_224; --gpu: vit_base_patch16_224)")
    ap.add_argument("--img", type=int, default=None, help="image size (default 96; --gpu: 224)")
    ap.add_argument("--depth", type=int, default=0, help="number of blocks (0: the model's)")
    ap.add_argument("--batch", type=int, default=None, help="default 16; --gpu: 128")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=None, help="steps per round (default 3; --gpu: 10)")
    ap.add_argument("--warmup", type=int, default=None, help="default 1; --gpu: 5")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                    help=f"default: {' '.join(CPU_DEFAULT)} (--gpu: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ptm-speed.md"), help="'' for none")
    args = ap.parse_args(argv)
    gpu = args.gpu
    for k, cpu_v, gpu_v in (("model", "vit_tiny_patch16_224", "vit_base_patch16_224"), ("img", 96, 224),
                            ("batch", 16, 128), ("iters", 3, 10), ("warmup", 1, 5),
                            ("methods", list(CPU_DEFAULT), list(METHODS))):
        if getattr(args, k) is None:
            setattr(args, k, gpu_v if gpu else cpu_v)
    if gpu and not torch.cuda.is_available():
        print("--gpu: not measured, no CUDA device on this machine (the GPU mode runs only where CUDA is available)")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    load0, t0, mach = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine()
    rows, what = measure(args)
    load1 = os.getloadavg()
    cols = ["method", "used by", "trainable", "platform img/s", "reference img/s", "ratio", "ratio per round",
            "same step"]
    tab = table(rows, cols)
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    body = [f"## {'GPU' if gpu else 'CPU'}: {what}", "",
            f"Machine: {mach}; {_versions()}. Date: {t0}. Command: `python benchmarks/adapters.py {cmd}`.",
            f"Load average (1, 5, 15 min) {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} at the start and "
            f"{load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f} at the end"
            + (": the machine was shared with other jobs, so absolute images/s are low and noisy; the ratio "
               "(both paths interleaved in the same process) is the figure to read." if load0[0] > 0.5 * (os.cpu_count() or 1)
               else "."), "",
            ("images/s: median over rounds of one training step (forward, backward, AdamW over the trainable "
            "parameters, cross-entropy on a linear head to 100 classes); ratio = platform / reference (median "
            "rates), with the range of the per-round ratios; same step = largest |loss difference| over two steps "
            "of both paths from the same weights and seed; trainable = trainable parameters (equal on both paths, "
            "head included)."), "", tab]
    text = "\n".join(body) + "\n"
    print(text)
    if args.out:
        write_section(Path(args.out), "gpu" if gpu else "cpu", text)
    return rows


if __name__ == "__main__":
    main()
