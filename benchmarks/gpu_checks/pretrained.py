"""Check ``pretrained``: ViT-B/16 at 224 px, bf16 autocast, batch 128, random init (no weights there).

- frozen forward: the platform's feature-cache fill (``cl.models.features.extract`` on a ``timm:`` backbone
  with ``compile: true``; uint8 images in, preprocessing included) against plain timm eager under
  ``inference_mode``; target >= 1.2x (H200: plain eager 8,835 img/s, compiled 10,694);
- LoRA r=8 on ``qkv``, AdamW step: the platform's adapter path (``cl.models.adapters.LoraSet``) against
  plain peft (``inject_adapter_in_model``); target >= 1.0x (H200: plain peft 3,085 img/s).
"""
from __future__ import annotations

import time

from benchmarks.gpu_checks.common import device, peak_mb, reset_peak, sync

QKV = r"(.*\.)?blocks\.\d+\.attn\.qkv"
REF = {"frozen_plain": 8835, "frozen_plain_compiled": 10694, "lora_plain": 3085}


def rate(fn, n_images, warmup, iters, dev) -> float:
    for _ in range(warmup):
        fn()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(dev)
    return n_images * iters / (time.perf_counter() - t0)


def run(rec) -> None:
    import torch
    import torch.nn.functional as F

    dev = device()
    rec.set_device(dev)
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    small = rec.small
    name, size, bs = ("vit_base_patch16_224", 224, 128) if not small else ("vit_tiny_patch16_224", 32, 4)
    warmup, iters = (5, 20) if not small else (1, 2)
    import timm
    from peft import LoraConfig, inject_adapter_in_model

    from cl.models.adapters import LoraSet
    from cl.models.backbones.timm_models import TimmConfig, create_timm
    from cl.models.features import extract

    kw = {} if size == 224 else {"img_size": size}
    rec.info("model", f"{name}, {size} px, batch {bs}, bf16 autocast on CUDA, random init")
    x_u8 = torch.randint(0, 256, (bs * iters, 3, size, size), dtype=torch.uint8, device=dev)
    xf = (x_u8[:bs].float() / 255 - 0.5) / 0.5
    y = torch.randint(0, 100, (bs,), device=dev)

    def amp():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda)

    res = {}
    labels = {"frozen_plain": "plain timm eager, inference_mode", "frozen_platform": "platform cache fill (extract, compile)",
              "frozen_plain_compiled": "plain timm + torch.compile", "lora_plain": "plain peft LoRA AdamW step",
              "lora_platform": "platform LoraSet AdamW step"}

    # -- frozen forward ------------------------------------------------------------------------------
    def measure(key, fn, n_img, w=warmup, it=iters):
        reset_peak(dev)
        v = rec.attempt(key, rate, fn, n_img, w, it, dev)
        if v is not None:
            res[key] = v
            rec.memory(key, peak_mb(dev))
            rec.figure(f"vit.{key}", v, "img/s", f"{name.split('_')[1]} {size}px bs {bs}: {labels[key]}",
                       ref=REF.get(key))
        return v

    plain = timm.create_model(name, num_classes=0, **kw).to(dev).eval()

    def plain_fwd():
        with torch.inference_mode(), amp():
            plain(xf)

    measure("frozen_plain", plain_fwd, bs)
    b = create_timm(name, TimmConfig(img_size=0 if size == 224 else size, compile=cuda)).to(dev).eval()
    pp = b.make_preprocess(None, dev)
    # one call extracts iters batches (a cache fill: features copied back to the host in large chunks)
    if rec.has(30 if cuda else 2, "platform frozen forward (compile included in the warm-up)"):
        t0 = time.perf_counter()
        measure("frozen_platform", lambda: extract(b, x_u8, pp, dev, bs), bs * iters, w=1, it=2 if not small else 1)
        rec.info("frozen_platform_seconds_incl_compile", round(time.perf_counter() - t0, 1))
    fig = None
    if "frozen_plain" in res and "frozen_platform" in res:
        fig = rec.figure("vit.frozen.platform_vs_plain", res["frozen_platform"] / res["frozen_plain"], "x",
                         f"{name} frozen forward: platform (cache fill, compile) / plain timm eager",
                         target=(">=", 1.2), ref=round(REF["frozen_plain_compiled"] / REF["frozen_plain"], 2))
    rec.profile_if_missed(fig, "pretrained: platform frozen forward (extract, one batch per call)",
                          lambda: extract(b, x_u8[:bs], pp, dev, bs), dev, steps=3)
    comp = None
    if cuda and rec.has(45, "plain timm + torch.compile frozen forward (reference)"):
        comp = torch.compile(plain)

        def comp_fwd():
            with torch.inference_mode(), amp():
                comp(xf)

        measure("frozen_plain_compiled", comp_fwd, bs)
    b = plain = comp = None  # free the frozen models before the training steps

    # -- LoRA step --------------------------------------------------------------------------------------
    def trainer(model, head, params):
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with amp():
                loss = F.cross_entropy(head(model(xf)).float(), y)
            loss.backward()
            opt.step()

        return step

    if rec.has(15 if cuda else 2, "plain peft LoRA step"):
        m = timm.create_model(name, num_classes=0, **kw).to(dev).train()
        m = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=QKV), m)
        head = torch.nn.Linear(m.num_features, 100).to(dev)
        measure("lora_plain", trainer(m, head, [p for p in m.parameters() if p.requires_grad]
                                      + list(head.parameters())), bs)
        del m
    if rec.has(15 if cuda else 2, "platform LoRA step"):
        b = create_timm(name, TimmConfig(img_size=0 if size == 224 else size)).to(dev).train()
        lora = LoraSet(b, r=8, alpha=16, targets=QKV)
        lora.add("t0")
        head = torch.nn.Linear(b.out_dim, 100).to(dev)
        step = trainer(b, head, list(lora.parameters("t0")) + list(head.parameters()))
        measure("lora_platform", step, bs)
        fig = None
        if "lora_plain" in res and "lora_platform" in res:
            fig = rec.figure("vit.lora.platform_vs_plain", res["lora_platform"] / res["lora_plain"], "x",
                             f"{name} LoRA r=8 step: platform adapters / plain peft", target=(">=", 1.0))
        rec.profile_if_missed(fig, "pretrained: platform LoRA step", step, dev, steps=3)
