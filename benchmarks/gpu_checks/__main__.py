"""Entry point of one check: ``python -m benchmarks.gpu_checks NAME --budget S --result FILE [--small]``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_checks import CHECKS  # noqa: E402
from benchmarks.gpu_checks.common import Recorder, hide_modules  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("check", choices=CHECKS)
    ap.add_argument("--budget", type=float, required=True, help="seconds this check may take")
    ap.add_argument("--result", required=True, help="JSON file, rewritten after every figure")
    ap.add_argument("--small", action="store_true", help="tiny work sizes (CPU rehearsal)")
    a = ap.parse_args(argv)
    hide_modules(os.environ.get("CL_GPU_HIDE", ""))
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rec = Recorder(a.check, a.result, a.budget, a.small)
    try:
        importlib.import_module(f"benchmarks.gpu_checks.{a.check}").run(rec)
    except Exception as e:  # noqa: BLE001 - recorded; the driver reads the file
        rec.error(a.check, e, traceback.format_exc())
        rec.save(done=True)
        return 1
    rec.save(done=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
