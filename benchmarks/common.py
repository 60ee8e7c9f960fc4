"""Shared helpers for the benchmarks: machine description and table printing."""
from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:,.0f}" if isinstance(r[c], float) and r[c] > 100 else
                                     (f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for c in cols) + " |")
    return "\n".join(out)
