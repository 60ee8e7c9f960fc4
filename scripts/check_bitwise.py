"""Check that a refactor changed no number: run a sweep and compare every run's accuracy matrix R, bit for bit,
with a reference recorded earlier.

    python scripts/check_bitwise.py --save tests/data/quickstart_R.json     # before the change
    python scripts/check_bitwise.py --check tests/data/quickstart_R.json    # after: exit 1 on any difference
    python scripts/check_bitwise.py --check tests/data/quickstart_R.json --evaluated-only
        # only the entries the new run evaluated (R's upper triangle is not evaluated by default since
        # protocol.eval_future): each must match; the diagonal and below must all be evaluated

Runs are keyed by (strategy, scenario, seed), not by run id, so that a change of the id scheme does not hide a
change of numbers. Every run uses one torch thread (the result of a CPU run depends on its thread count).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collect(sweep: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cl.cli", "sweep", sweep, "--out", str(out), "-j", "1", "--threads", "1",
           "--no-wandb"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    got = {}
    for f in sorted(out.glob("*/result.json")):
        r = json.loads(f.read_text())
        c = r["config"]
        key = f"{c['strategy']['name']}|{c['scenario']['name']}|{c['seed']}"
        got[key] = [[None if v is None else float(v).hex() for v in row] for row in r["R"]]
    return got


def _same_evaluated(ref, got) -> bool:
    """Every entry evaluated in ``got`` equals ``ref``'s; every entry on or below the diagonal is evaluated."""
    if ref is None or got is None or len(ref) != len(got):
        return False
    for i, (r, g) in enumerate(zip(ref, got)):
        if len(r) != len(g) or any(g[j] is None for j in range(min(i + 1, len(g)))):
            return False
        if any(gv is not None and gv != rv for rv, gv in zip(r, g)):
            return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default="runs/quickstart.yaml")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", metavar="FILE")
    g.add_argument("--check", metavar="FILE")
    ap.add_argument("--evaluated-only", action="store_true",
                    help="compare only the entries evaluated now (None = not evaluated); the lower triangle "
                         "and diagonal must be evaluated")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        got = collect(a.sweep, Path(d))
    if a.save:
        Path(a.save).parent.mkdir(parents=True, exist_ok=True)
        Path(a.save).write_text(json.dumps({"sweep": a.sweep, "R": got}, indent=1, sort_keys=True) + "\n")
        print(f"saved R of {len(got)} runs to {a.save}")
        return 0
    ref = json.loads(Path(a.check).read_text())["R"]
    same = _same_evaluated if a.evaluated_only else (lambda r, g: r == g)
    bad = [k for k in sorted(set(ref) | set(got)) if not same(ref.get(k), got.get(k))]
    for k in bad:
        print(f"DIFFERENT: {k}\n  reference {ref.get(k)}\n  now       {got.get(k)}")
    what = " in every evaluated entry" if a.evaluated_only else ""
    print(f"{len(ref) - len(bad)} of {len(ref)} runs bitwise identical{what}" + ("" if not bad else f"; {len(bad)} differ"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
