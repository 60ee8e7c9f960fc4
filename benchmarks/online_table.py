"""The issue-15 table of a finished online sweep: one row per (strategy, memory), mean ± sample sd over seeds.

    python benchmarks/online_table.py results/baselines2-online-cifar10 [--ref er]

Columns: final average accuracy, average forgetting, online (test-then-train) accuracy, A_auc (the anytime
accuracy averaged over the evaluation points, ``protocol.eval_every``), anytime forgetting, training samples/s
and the real-time cost ratio against the reference strategy at the same memory (its training samples/s over
this row's; a row without memory, such as LwF's, against the reference's memory with the most seeds: Ghunaim
et al.'s C, from the runs' own timings, so it is only as steady as the machine was while
they ran; benchmarks/online.py measures the step cost in one process).  Finished runs only; the seeds are
listed.  Numbers are read from each run's ``result.json`` through the report's reader (cl/sweeps/report.py).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cl.sweeps.report import cell_stats, collect  # noqa: E402

COLUMNS = [("avg_acc", "final acc. (%)", 100.0), ("forgetting", "forgetting (%)", 100.0),
           ("online_acc", "online acc. (%)", 100.0), ("anytime_auc", "A_auc (%)", 100.0),
           ("anytime_forgetting", "anytime forgetting (%)", 100.0),
           ("train_samples_per_s", "train samples/s", 1.0)]


def rows_of(root: str | Path) -> dict:
    """{(strategy, buffer size or None): {"seeds": [...], metric: [values]}} of the finished runs."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in collect(root)["runs"]:
        if r.get("status") != "finished":
            continue
        cfg, m = r.get("config") or {}, r.get("metrics") or {}
        st = cfg.get("strategy") or {}
        key = (st.get("name"), st.get("buffer_size"))
        out[key]["seeds"].append(cfg.get("seed"))
        for k, _, _ in COLUMNS:
            if isinstance(m.get(k), (int, float)):
                out[key][k].append(float(m[k]))
    return out


def markdown(rows: dict, ref: str = "er") -> str:
    head = ["strategy", "M", "seeds"] + [c[1] for c in COLUMNS] + [f"cost vs {ref}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(vals, scale, digits):
        if not vals:
            return "–"
        mean, sd, n = cell_stats([v * scale for v in vals])
        return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 else "")

    for (name, m), d in sorted(rows.items(), key=lambda kv: (kv[0][1] or 0, str(kv[0][0]))):
        cells = [str(name), str(m) if m is not None else "–", ",".join(str(s) for s in sorted(d["seeds"]))]
        cells += [fmt(d[k], scale, 1 if scale != 1.0 else 0) for k, _, scale in COLUMNS]
        base = rows.get((ref, m)) or {}
        if m is None and not base:  # no memory (finetune, LwF): against the reference's best-seeded memory
            refs = [d2 for (n2, _), d2 in rows.items() if n2 == ref]
            base = max(refs, key=lambda d2: len(d2["seeds"])) if refs else {}
        sps, ref_sps = d["train_samples_per_s"], base.get("train_samples_per_s") if base else None
        ratio = (cell_stats(ref_sps)[0] / cell_stats(sps)[0]) if sps and ref_sps else None
        cells.append(f"{ratio:.2f}" if ratio else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a sweep's results folder")
    ap.add_argument("--ref", default="er", help="the strategy of the cost ratio (default er)")
    args = ap.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f"error: no results folder {args.results!r}", file=sys.stderr)
        return 2
    print(markdown(rows_of(args.results), args.ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
