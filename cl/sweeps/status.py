"""The status of a sweep's runs on disk (finished, partial, failed, pending), the sweep manifest and the dry-run listing."""
from __future__ import annotations

import sys
from pathlib import Path
from cl.sweeps.spec import Sweep


def run_status(out: str | Path, rid: str) -> str:
    """finished | running | partial | interrupted | failed | pending (cl.train.results.run_state): finished
    only if result.json parses and names this run, finished."""
    from cl.train.results import run_state

    return run_state(Path(out) / rid, rid)


def write_manifest(sweep: Sweep) -> None:
    """The sweep's manifest; best effort (a read-only results folder of finished runs still reports)."""
    from cl.train.loggers import atomic_write_json

    try:
        _write_manifest(sweep, atomic_write_json)
    except OSError as e:
        print(f"warning: cannot write {Path(sweep.out) / 'sweep.json'}: {e.strerror or e}", file=sys.stderr)


def _write_manifest(sweep: Sweep, atomic_write_json) -> None:
    atomic_write_json(Path(sweep.out) / "sweep.json", {
        "name": sweep.name, "file": sweep.path, "group": sweep.group, "tags": sweep.tags,
        "paper": sweep.paper, "description": sweep.description,
        "runs": [{"id": r.id, "strategy": r.config["strategy"]["name"], "scenario": r.config["scenario"]["name"],
                  "backbone": r.config["backbone"]["name"], "seed": r.config["seed"], "axes": r.axes}
                 for r in sweep.runs]})


def print_dry_run(sweep: Sweep, file=None, only=None, flag: str = "--only") -> None:
    file = file or sys.stdout
    runs = sweep.runs if only is None else only
    picked = "" if only is None else f" ({len(runs)} selected by {flag})"
    print(f"sweep {sweep.name!r} from {sweep.path}: {len(sweep.runs)} runs{picked} -> {sweep.out}/ "
          f"(W&B group {sweep.group!r}, tags {sweep.tags})", file=file)
    if sweep.excluded or sweep.merged:
        print(f"  ({sweep.excluded} combinations excluded, {sweep.merged} identical to another run and merged)",
              file=file)
    w = max([len(r.id) for r in runs] + [6])
    print(f"  {'#':>3}  {'run id':<{w}}  {'status':<8}  run", file=file)
    for i, r in enumerate(runs):
        print(f"  {i + 1:>3}  {r.id:<{w}}  {run_status(sweep.out, r.id):<8}  {r.label}", file=file)
