"""benchmarks/gpu.py (GPU validation, issue 18): the CPU rehearsal runs end to end and writes its files.

The whole ``--small`` run takes about a minute on an idle 2-core machine (one subprocess per check, each
importing torch); avalanche and wandb are hidden, as on the GPU machine before its wheels are installed,
so the script's skip path is what runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu  # noqa: E402
from benchmarks.gpu_checks import CHECKS  # noqa: E402


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-out")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--small", "--no-install",
                        "--hide", "avalanche,wandb", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    return p, out


def test_small_run_writes_every_file(small_run):
    p, out = small_run
    assert sorted(f.name for f in out.iterdir()) == sorted(gpu.FILES), p.stdout + p.stderr
    report = json.loads((out / "gpu-results.json").read_text())
    assert report["small"] is True and list(report["checks"]) == list(CHECKS)
    for name, c in report["checks"].items():
        assert c["status"] in ("ok", "errors", "timeout", "crashed")
        assert c["budget_s"] > 0 and c["wall_s"] > 0
        for f in c["figures"]:
            assert {"key", "label", "value", "unit", "target", "met"} <= set(f)
            if f["target"] is not None and f["value"] is not None:
                op, thr = f["target"]
                assert f["met"] == (f["value"] >= thr if op == ">=" else f["value"] <= thr)
    assert report["checks"]["env"]["status"] == "ok"
    assert report["checks"]["env"]["info"]["packages"]["avalanche-lib"].startswith("missing")
    md = (out / "gpu-results.md").read_text()
    assert "## Targets" in md and "## Missed targets" in md
    for name in CHECKS[1:]:
        assert f"### {name}" in md
    assert "gpu-profiles.md" not in md or (out / "gpu-profiles.md").read_text().startswith("# torch.profiler")


def test_small_run_skips_avalanche_with_the_reason(small_run):
    _, out = small_run
    ov = json.loads((out / "gpu-results.json").read_text())["checks"]["overhead"]
    assert any("Avalanche" in s["what"] and "not importable" in s["reason"] for s in ov["skipped"])
    assert not any(f["key"].endswith(".avalanche") for f in ov["figures"])


def test_small_run_measures_each_check(small_run):
    """Each check ran its measurements (none crashed on the way); on a loaded machine a check can stop
    at its budget, but the figures it had measured stay in the JSON."""
    _, out = small_run
    checks = json.loads((out / "gpu-results.json").read_text())["checks"]
    assert checks["overhead"]["figures"], checks["overhead"]
    assert any(f["key"] == "resnet18r.plain" or f["key"].startswith("graphs.") for f in checks["online"]["figures"])
    assert checks["pretrained"]["figures"] or checks["pretrained"]["status"] == "timeout", checks["pretrained"]
    for name in ("overhead", "online", "pretrained", "feature_cache", "sweep"):
        assert not checks[name]["errors"], (name, checks[name]["errors"])


def test_report_lists_misses_and_profiles():
    fig = {"key": "a", "label": "engine / loop", "value": 0.5, "unit": "x", "target": [">=", 0.95], "met": False,
           "ref": None, "note": None}
    rep = {"started": "2026-12-01 00:00", "small": False, "wheels": {}, "wall_s": 1.0,
           "checks": {"env": {"info": {"cuda_available": True, "gpu": "NVIDIA H200"}, "figures": []},
                      "overhead": {"status": "ok", "wall_s": 1, "budget_s": 2, "figures": [fig], "skipped": [],
                                   "errors": [], "notes": [], "memory_mb": {"x": 12.0}, "info": {},
                                   "profiles": {"overhead: engine": "TABLE"}}}}
    md = gpu.markdown(rep)
    assert "NVIDIA H200" in md and "**missed**" in md and "- overhead: engine / loop: 0.50x (target >= 0.95x)" in md
    assert "## overhead: engine" in gpu.profiles_md(rep) and "TABLE" in gpu.profiles_md(rep)


def test_hide_modules_makes_a_module_look_absent():
    code = ("from benchmarks.gpu_checks.common import hide_modules; hide_modules('wave');"
            "import importlib.util; assert importlib.util.find_spec('wave') is None\n"
            "try:\n import wave\nexcept ModuleNotFoundError: print('hidden')")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "hidden", p.stderr
