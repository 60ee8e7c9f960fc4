"""Benchmark: the feature cache, and pretrained-backbone speed on a GPU.

CPU part (always): four frozen-backbone strategies x three seeds on split CIFAR-10 with the pretrained
EfficientNet-Lite0, run through the engine (``cl.train.engine.Run``) twice: with the feature cache off
(``CL_FEATURE_CACHE=0``: every run encodes the images again) and on (a fresh cache folder: the first
run encodes, the other eleven read the memory-mapped features).  Accuracies must agree; the table gives
wall times side by side.

GPU part (only when CUDA is available): ViT-B/16 (random init, 224 px, batch 128, bf16 autocast) frozen
forward, LoRA (r=8 on qkv) AdamW step and full fine-tuning AdamW step in images/s, through this
platform (``cl.features.extract`` with ``compile``, ``LoraSet``) against plain timm in the same process.

    python benchmarks/feature_cache.py                         # defaults: 100 train / 50 test per class, 96 px
    python benchmarks/feature_cache.py --train-per-class 20 --test-per-class 10 --input-size 64   # quick
    python benchmarks/feature_cache.py --input-size 224 --train-per-class 500    # the faithful setting
    python benchmarks/feature_cache.py --gpu-only                                # just the GPU part

Results go to ``benchmarks/results/backbones.md`` (``--out``), with the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

STRATEGIES = {  # four frozen-backbone strategies (name in the table -> strategy section)
    "ncm": {"name": "ncm"},
    "simplecil": {"name": "ncm", "metric": "cosine", "normalize": False},
    "kalman": {"name": "kalman"},
    "linear-probe": {"name": "linear-probe"},
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} logical cores (load average {load:.1f} at the start), torch "
            f"{torch.__version__}, {torch.get_num_threads()} intra-op threads; GPU: {gpu}")


def cpu_part(args) -> tuple[list[str], dict]:
    from cl.core.config import resolve
    from cl.train.engine import Run
    from cl.core.registry import strategies

    names = [s for s in args.strategies if s in STRATEGIES]
    avail = set(strategies.names())
    names = [s for s in names if STRATEGIES[s]["name"] in avail]
    rows, accs, times = [], {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-cache-"))
    # mode warm-up: one untimed run first (imports, the CIFAR decode cache, allocator warm-up)
    for mode in ("warm-up", "off", "on"):
        os.environ["CL_FEATURE_CACHE"] = "1" if mode == "on" else "0"
        os.environ["CL_CACHE"] = str(tmp / "cache")  # a fresh, empty cache for the "on" pass
        for s in (names[:1] if mode == "warm-up" else names):
            for seed in (args.seeds[:1] if mode == "warm-up" else args.seeds):
                raw = {"strategy": STRATEGIES[s],
                       "scenario": {"name": "split-cifar10", "n_tasks": 5, "train_per_class": args.train_per_class,
                                    "test_per_class": args.test_per_class},
                       "backbone": {"name": "efficientnet-lite0", "input_size": args.input_size},
                       "protocol": {"name": "offline", "epochs": 1}, "seed": seed, "wandb": "off",
                       "out": str(tmp / f"runs-{mode}"), "device": args.device}
                t0 = time.perf_counter()
                r = Run(resolve(raw), progress=False).execute()
                dt = time.perf_counter() - t0
                if r["status"] != "finished":
                    raise RuntimeError(f"{s} seed {seed} ({mode}): {r.get('error')}")
                times.setdefault(mode, {}).setdefault(s, []).append(dt)
                accs.setdefault(mode, {}).setdefault(s, []).append(r["metrics"]["avg_acc"])
                print(f"cache {mode:3s} {s:13s} seed {seed}: {dt:6.1f}s  avg_acc {r['metrics']['avg_acc']:.4f}",
                      flush=True)
    import statistics as st

    rows.append("| strategy | runs | wall s, cache off | wall s, cache on | speed-up | avg acc (mean over seeds), off / on |")
    rows.append("|---|---|---|---|---|---|")
    tot = {"off": 0.0, "on": 0.0}
    for s in names:
        off, on = sum(times["off"][s]), sum(times["on"][s])
        tot["off"] += off
        tot["on"] += on
        a_off, a_on = st.mean(accs["off"][s]), st.mean(accs["on"][s])
        rows.append(f"| {s} | {len(args.seeds)} | {off:.1f} | {on:.1f} | {off / on:.1f}x | {a_off:.4f} / {a_on:.4f} |")
    rows.append(f"| **all** | {len(args.seeds) * len(names)} | **{tot['off']:.1f}** | **{tot['on']:.1f}** | "
                f"**{tot['off'] / tot['on']:.1f}x** | |")
    first_on = times["on"][names[0]][0]
    rest_on = (tot["on"] - first_on) / max(1, len(args.seeds) * len(names) - 1)
    rows.append("")
    rows.append(f"With the cache, the first run (which fills it) took {first_on:.1f}s and each of the others "
                f"{rest_on:.1f}s on average; without it every run takes about {tot['off'] / (len(args.seeds) * len(names)):.1f}s.")
    same = all(abs(a - b) < 1e-6 for s in names for a, b in zip(accs["off"][s], accs["on"][s]))
    rows.append(f"Accuracies with and without the cache are {'identical' if same else 'NOT identical'} run by run.")
    return rows, {"speedup": tot["off"] / tot["on"], "same": same}


def _rate(fn, n_images, warmup, iters, sync):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return n_images * iters / (time.perf_counter() - t0)


def gpu_part(args) -> list[str]:
    import timm

    from cl.models.adapters import LoraSet
    from cl.models.backbones.timm_models import TimmConfig, create_timm
    from cl.models.features import extract

    dev = torch.device(args.gpu_device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    bs, name, size = args.gpu_batch, args.vit, args.gpu_img
    kw = {} if size == 224 else {"img_size": size}
    x_u8 = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 100, (bs,), device=dev)
    amp = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")  # noqa: E731
    res = {}

    # plain timm references
    plain = timm.create_model(name, num_classes=0, **kw).to(dev).eval()
    xf = (x_u8.float() / 255 - 0.5) / 0.5

    def plain_fwd():
        with torch.inference_mode(), amp():
            plain(xf)

    res[("frozen forward", "plain")] = _rate(plain_fwd, bs, args.warmup, args.iters, sync)

    def train_rate(model, head, params):
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with amp():
                loss = torch.nn.functional.cross_entropy(head(model(xf)).float(), y)
            loss.backward()
            opt.step()

        return _rate(step, bs, args.warmup, args.iters, sync)

    qkv = r"(.*\.)?blocks\.\d+\.attn\.qkv"
    from peft import LoraConfig, inject_adapter_in_model

    m = timm.create_model(name, num_classes=0, **kw).to(dev).train()
    m = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=qkv), m)
    head = torch.nn.Linear(m.num_features, 100).to(dev)
    res[("LoRA r=8 step", "plain")] = train_rate(m, head, [p for p in m.parameters() if p.requires_grad] + list(head.parameters()))
    del m
    m = timm.create_model(name, num_classes=0, **kw).to(dev).train()
    res[("full fine-tuning step", "plain")] = train_rate(m, head, list(m.parameters()) + list(head.parameters()))
    del m, plain

    # this platform
    cfg = TimmConfig(img_size=0 if size == 224 else size, compile=args.compile and dev.type == "cuda")
    b = create_timm(name, cfg).to(dev).eval()
    pp = b.make_preprocess(None, dev)
    res[("frozen forward", "platform")] = _rate(lambda: extract(b, x_u8, pp, dev, bs), bs, args.warmup + 2, args.iters, sync)
    del b
    b = create_timm(name, TimmConfig(img_size=0 if size == 224 else size)).to(dev).train()
    lora = LoraSet(b, r=8, alpha=16, targets=qkv)
    lora.add("t0")
    res[("LoRA r=8 step", "platform")] = train_rate(lambda x: b(x), head, list(lora.parameters("t0")) + list(head.parameters()))
    del b
    b = create_timm(name, TimmConfig(img_size=0 if size == 224 else size)).to(dev).train()
    res[("full fine-tuning step", "platform")] = train_rate(b, head, list(b.parameters()) + list(head.parameters()))

    ref = {"frozen forward": 8835, "LoRA r=8 step": 3085, "full fine-tuning step": 2565}
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    rows = [f"{name}, {size} px, batch {bs}, bf16 autocast, on {card} (images/s; "
            f"compile={'on' if cfg.compile else 'off'} for the platform's frozen forward)", "",
            "| mode | plain timm (same process) | platform | ratio | H200 reference (gpu-anchors.md) |", "|---|---|---|---|---|"]
    for k in ref:
        p, q = res[(k, "plain")], res[(k, "platform")]
        rows.append(f"| {k} | {p:,.0f} | {q:,.0f} | {q / p:.2f}x | {ref[k]:,} |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--input-size", type=int, default=96, help="EfficientNet input size (224 = the weights' own)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--skip-gpu", action="store_true")
    ap.add_argument("--gpu-device", default="cuda")
    ap.add_argument("--vit", default="vit_base_patch16_224")
    ap.add_argument("--gpu-img", type=int, default=224)
    ap.add_argument("--gpu-batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backbones.md"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = ["# Pretrained backbones and the feature cache", "",
             f"Machine: {machine()}.", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             f"Command: `python benchmarks/feature_cache.py {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    if not args.gpu_only:
        rows, info = cpu_part(args)
        lines += ["## Feature cache: 4 frozen-backbone strategies x 3 seeds, split CIFAR-10 (5 tasks), EfficientNet-Lite0", "",
                  f"{args.train_per_class} train / {args.test_per_class} test images per class, resized to "
                  f"{args.input_size} px, device {args.device}; wall time per run through `cl.train.engine.Run` "
                  f"(scenario, featurize, training, evaluation).", ""] + rows + [""]
    gpu_ok = (args.gpu_device != "cuda" or torch.cuda.is_available()) and not args.skip_gpu
    lines += ["## GPU: ViT-B/16 frozen forward, LoRA step, full fine-tuning", ""]
    if gpu_ok:
        lines += gpu_part(args)
    else:
        lines += ["Not measured: no CUDA device on this machine (the GPU part runs only when CUDA is available)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
