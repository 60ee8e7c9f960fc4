"""GPU validation (issue 18): every GPU claim of the platform measured in one go, in at most 8 minutes.

    python3 benchmarks/gpu.py                      # on the device machine (see docs/gpu-validation.md)
    python benchmarks/gpu.py --small               # CPU rehearsal: every check tiny, the whole path runs
    python benchmarks/gpu.py --only online,sweep   # some checks
    python benchmarks/gpu.py --list                # the checks and their budgets

Checks (each in its own process with its own time budget; ``benchmarks/gpu_checks/<name>.py``):
  env            card, driver, torch, CUDA, timm, peft, avalanche, wandb
  overhead       engine vs hand loop vs Avalanche Replay, batch 10 and 128, MLP and timm resnet18 at 32 px
  online         online ER step at batch 10, eager and CUDA graphs; graphs on/off equality per strategy
  pretrained     ViT-B/16 224 px bf16 batch 128: frozen forward (cache fill) and LoRA step vs plain timm/peft
  feature_cache  strategies x seeds on frozen EfficientNet-Lite0 features, cache off and on
  sweep          16 online runs with 1, 4 and 8 local workers on the one GPU: runs/hour, GPU utilisation

First the carried wheels (``--wheels``, default ``.whl``; avalanche-lib, wandb and their dependencies,
which the GPU machine lacks) are installed with pip into ``--site`` (default /tmp/site), which is put on
the checks' PYTHONPATH; a failed install is logged and the checks that need those packages are skipped.

Writes under ``--out`` (default ``$OUT``, else ``results/gpu``), rewritten after every check so that a
timeout keeps what finished: ``gpu-results.json`` (every figure, target, memory peak, skip and error),
``gpu-results.md`` (the same as tables), ``gpu-profiles.md`` (torch.profiler tables of what missed its
target) and ``gpu.log`` (every check's output).  Four files: the device returns at most eight.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_checks import CHECKS  # noqa: E402

# seconds per check on the device; they sum to 420 s, under the 8 minutes with the install and
# process start-ups (a check that ends early leaves its time unused, not moved to the next)
BUDGETS = {"env": 15, "overhead": 75, "online": 90, "pretrained": 80, "feature_cache": 60, "sweep": 100}
SMALL_BUDGETS = {"sweep": 90}  # --small: caps (the work takes seconds on an idle CPU; a loaded one is slower)
SMALL_BUDGET = 60
GRACE = 15  # seconds past its budget before a check is killed (it watches its own budget)
FILES = ("gpu-results.json", "gpu-results.md", "gpu-profiles.md", "gpu.log")


class Log:
    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg: str = "") -> None:
        print(msg, flush=True)
        self.f.write(msg + "\n")

    def raw(self, text: str) -> None:
        self.f.write(text if text.endswith("\n") else text + "\n")


def install_wheels(wheels: Path, site: Path, log: Log) -> dict:
    files = sorted(glob.glob(str(wheels / "*.whl")))
    if not files:
        log(f"wheels: none in {wheels} (avalanche / wandb comparisons are skipped unless already installed)")
        return {"dir": str(wheels), "wheels": [], "installed": False}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site)] + files
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    ok = p.returncode == 0
    log(f"wheels: {'installed' if ok else 'INSTALL FAILED'} {len(files)} from {wheels} into {site} "
        f"in {time.perf_counter() - t0:.1f} s")
    if not ok:
        log((p.stderr or p.stdout)[-2000:])
    return {"dir": str(wheels), "wheels": [Path(f).name for f in files], "installed": ok,
            "site": str(site), "error": None if ok else (p.stderr or p.stdout)[-1000:]}


def run_check(name: str, budget: float, small: bool, work: Path, env: dict, log: Log) -> dict:
    res_file = work / f"{name}.json"
    res_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.gpu_checks", name, "--budget", str(budget), "--result", str(res_file)]
    cmd += ["--small"] if small else []
    out_file = work / f"{name}.out"
    t0 = time.perf_counter()
    status = None
    with open(out_file, "w") as out:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=budget + GRACE)
        except subprocess.TimeoutExpired:
            status = "timeout"
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
    wall = time.perf_counter() - t0
    text = out_file.read_text(errors="replace")
    log.raw(f"\n===== check {name} (budget {budget:.0f} s, wall {wall:.1f} s, exit {rc}) =====\n{text}")
    try:
        data = json.loads(res_file.read_text())
    except (OSError, ValueError):
        data = {"check": name, "figures": [], "skipped": [], "errors": [], "notes": [], "memory_mb": {},
                "profiles": {}, "info": {}, "done": False}
    if status is None:
        status = "ok" if rc == 0 and data.get("done") and not data.get("errors") else (
            "errors" if rc == 0 or data.get("done") else "crashed")
    if status == "crashed" and not data.get("errors"):
        data.setdefault("errors", []).append({"what": name, "error": f"exit code {rc}; output tail: {text[-600:]}"})
    data.update(status=status, wall_s=round(wall, 1), budget_s=budget, exit_code=rc)
    met = [f for f in data["figures"] if f.get("met") is True]
    miss = [f for f in data["figures"] if f.get("met") is False]
    log(f"check {name}: {status} in {wall:.1f} s (budget {budget:.0f} s): {len(data['figures'])} figures, "
        f"{len(met)} targets met, {len(miss)} missed, {len(data['skipped'])} skipped, {len(data['errors'])} errors")
    return data


# -- reports ----------------------------------------------------------------------------------------------
def _fmt(v, unit) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        if unit == "bool":
            return "yes" if v else "no"
        if unit == "x":
            return f"{v:.2f}x"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


def _verdict(f, cuda: bool) -> str:
    if f.get("met") is None:
        return ""
    word = "met" if f["met"] else "**missed**"
    return word if cuda else f"({word} on CPU: target is for the GPU)"


def markdown(report: dict) -> str:
    env = report["checks"].get("env", {}).get("info", {})
    cuda = bool(env.get("cuda_available"))
    card = env.get("gpu") or "no GPU (CPU rehearsal)"
    smi = (env.get("nvidia_smi") or {}).get("gpus") or [{}]
    pk = env.get("packages") or {}
    lines = [f"# GPU validation: `benchmarks/gpu.py{' --small' if report['small'] else ''}`", "",
             f"- date: {report['started']} (UTC); total wall {report.get('wall_s', 0):.0f} s"
             f"{'; reduced work (--small): not a measurement' if report['small'] else ''}",
             f"- card: {card}; driver {smi[0].get('driver_version', '-')}; torch {env.get('torch', '-')} "
             f"(CUDA {env.get('torch_cuda', '-')}), Python {env.get('python', '-')}, {env.get('cpu_count', '-')} CPU cores",
             "- packages: " + "; ".join(f"{k} {str(v).split(' (')[0]}" for k, v in pk.items()),
             "- wheels: " + (f"installed: {report['wheels'].get('installed')} ({len(report['wheels'].get('wheels', []))} "
                             f"from {report['wheels'].get('dir')})" if report["wheels"] else "not installed (--no-install)"),
             ""]
    lines += ["## Targets", "", "| check | figure | value | target | reference (H200, gpu-anchors.md) | verdict |",
              "|---|---|---|---|---|---|"]
    for name, c in report["checks"].items():
        for f in c.get("figures", []):
            if f.get("target"):
                lines.append(f"| {name} | {f['label']} | {_fmt(f['value'], f['unit'])} | {f['target'][0]} "
                             f"{_fmt(f['target'][1], f['unit'])} | {_fmt(f.get('ref'), f['unit'])} | {_verdict(f, cuda)} |")
    lines += ["", "## Checks", "", "| check | status | wall s | budget s | figures | skipped | errors | peak memory MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for name, c in report["checks"].items():
        mem = c.get("memory_mb") or {}
        lines.append(f"| {name} | {c.get('status')} | {c.get('wall_s', 0):.0f} | {c.get('budget_s', 0):.0f} | "
                     f"{len(c.get('figures', []))} | {len(c.get('skipped', []))} | {len(c.get('errors', []))} | "
                     f"{max(mem.values()) if mem else '-'} |")
    for name, c in report["checks"].items():
        if name == "env":
            continue
        lines += ["", f"### {name} ({c.get('device') or '-'})", ""]
        if c.get("info"):
            for k, v in c["info"].items():
                if isinstance(v, (str, int, float)) or (isinstance(v, list) and len(str(v)) < 200):
                    lines.append(f"- {k}: {v}")
            lines.append("")
        if c.get("figures"):
            lines += ["| figure | value | unit | reference | target | note |", "|---|---|---|---|---|---|"]
            for f in c["figures"]:
                tgt = f"{f['target'][0]} {_fmt(f['target'][1], f['unit'])}: {_verdict(f, cuda)}" if f.get("target") else ""
                lines.append(f"| {f['label']} | {_fmt(f['value'], f['unit'])} | {f['unit']} | "
                             f"{_fmt(f.get('ref'), f['unit'])} | {tgt} | {f.get('note') or ''} |")
        if c.get("memory_mb"):
            lines += ["", "Peak memory (MiB; " + ("torch max allocated per measurement" if c.get("cuda") else
                                                  "process peak RSS on CPU") + "): " +
                      "; ".join(f"{k} {v:,.0f}" for k, v in c["memory_mb"].items())]
        for s in c.get("skipped", []):
            lines.append(f"- skipped: {s['what']}: {s['reason']}")
        for e in c.get("errors", []):
            lines.append(f"- ERROR: {e['what']}: {e['error']}")
        for n in c.get("notes", []):
            lines.append(f"- note: {n}")
    miss = [(n, f) for n, c in report["checks"].items() for f in c.get("figures", []) if f.get("met") is False]
    lines += ["", "## Missed targets", ""]
    if not miss:
        lines.append("None." if report["checks"] else "No checks ran.")
    for n, f in miss:
        lines.append(f"- {n}: {f['label']}: {_fmt(f['value'], f['unit'])} (target {f['target'][0]} "
                     f"{_fmt(f['target'][1], f['unit'])}){'' if cuda else ' [CPU rehearsal]'}")
    profs = [p for c in report["checks"].values() for p in c.get("profiles", {})]
    if profs:
        lines += ["", f"Profiler tables (top ops) in gpu-profiles.md: {'; '.join(profs)}."]
    return "\n".join(lines) + "\n"


def profiles_md(report: dict) -> str:
    out = ["# torch.profiler tables of the measurements that missed their target", ""]
    for name, c in report["checks"].items():
        for label, table in c.get("profiles", {}).items():
            out += [f"## {label}", "", "```", table.rstrip(), "```", ""]
    if len(out) == 2:
        out.append("No target was missed (or no profile could be taken).")
    return "\n".join(out) + "\n"


def write(out: Path, report: dict) -> None:
    for fname, text in (("gpu-results.json", json.dumps(report, indent=1, default=str)),
                        ("gpu-results.md", markdown(report)), ("gpu-profiles.md", profiles_md(report))):
        tmp = out / f".{fname}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / fname)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--small", action="store_true", help="tiny work in every check (CPU rehearsal)")
    ap.add_argument("--only", default="", help=f"comma-separated checks among {', '.join(CHECKS)}")
    ap.add_argument("--skip", default="", help="comma-separated checks to leave out")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu"))
    ap.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder of wheels to install first")
    ap.add_argument("--site", default="/tmp/site", help="pip --target folder for the wheels")
    ap.add_argument("--no-install", action="store_true", help="do not install the wheels")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every check's budget")
    ap.add_argument("--budget", action="append", default=[], metavar="CHECK=SECONDS", help="one check's budget")
    ap.add_argument("--hide", default=os.environ.get("CL_GPU_HIDE", ""),
                    help="comma-separated modules the checks must not import (rehearse a machine without them)")
    ap.add_argument("--list", action="store_true", help="print the checks and their budgets, run nothing")
    a = ap.parse_args(argv)
    only = [c for c in a.only.split(",") if c]
    bad = [c for c in only + [c for c in a.skip.split(",") if c] if c not in CHECKS]
    if bad:
        ap.error(f"unknown check(s) {bad}; valid: {', '.join(CHECKS)}")
    budgets = {c: (SMALL_BUDGETS.get(c, SMALL_BUDGET) if a.small else BUDGETS[c]) * a.scale for c in CHECKS}
    for item in a.budget:
        k, _, v = item.partition("=")
        if k not in CHECKS:
            ap.error(f"--budget {item!r}: unknown check {k!r}; valid: {', '.join(CHECKS)}")
        budgets[k] = float(v)
    todo = [c for c in CHECKS if (not only or c in only or c == "env") and c not in a.skip.split(",")]
    if a.list:
        for c in CHECKS:
            print(f"{c:14s} {budgets[c]:5.0f} s{'' if c in todo else '  (not selected)'}")
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"cl-gpu-work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    (out / "gpu.log").unlink(missing_ok=True)
    log = Log(out / "gpu.log")
    t0 = time.perf_counter()
    report = {"schema": 1, "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "small": a.small,
              "argv": sys.argv[1:] if argv is None else list(argv), "budgets_s": {c: budgets[c] for c in todo},
              "hidden_modules": a.hide, "checks": {}, "wheels": {}}
    log(f"benchmarks/gpu.py: checks {', '.join(todo)}; total budget {sum(budgets[c] for c in todo):.0f} s; "
        f"out {out}{'; --small' if a.small else ''}")
    env = dict(os.environ)
    paths = [str(ROOT)]
    if not a.no_install:
        report["wheels"] = install_wheels(Path(a.wheels), Path(a.site), log)
        if report["wheels"].get("installed"):
            paths.insert(0, a.site)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if a.hide:
        env["CL_GPU_HIDE"] = a.hide
    write(out, report)
    for name in todo:
        report["checks"][name] = run_check(name, budgets[name], a.small, work, env, log)
        if name == "env":  # the environment at the top of the output: card, driver, torch, timm, peft, ...
            for line in markdown(report).splitlines()[3:7]:
                log(line)
        report["wall_s"] = time.perf_counter() - t0
        write(out, report)
    report["wall_s"] = time.perf_counter() - t0
    report["finished"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    write(out, report)
    bad_checks = [n for n, c in report["checks"].items() if c["status"] not in ("ok",)]
    log(f"done in {report['wall_s']:.0f} s; results in {out}/ ({', '.join(FILES)})"
        + (f"; checks with errors or timeouts: {', '.join(bad_checks)}" if bad_checks else ""))
    return 1 if bad_checks else 0


if __name__ == "__main__":
    sys.exit(main())
