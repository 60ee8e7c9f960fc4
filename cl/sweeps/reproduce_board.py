"""The reproduction board: ``docs/reproduction.md`` and ``reproduction.png`` from the entries' result files.

One line per published value (an entry's ``results`` item): method, benchmark, metric, published value with its
spread and source, ours (mean ± sample std over the seeds that finished, and how many), the difference, the
verdict against the tolerance, the commit / hardware / date of our runs, and a link to the run folder's report.
An entry never run is listed as ``not run``; one whose strategy is not registered as ``strategy not
available``; a published value that was not verified at its source as such.  Nothing is left out."""
from __future__ import annotations

import os
import time
from pathlib import Path

from cl.core.files import atomic_write
from cl.sweeps.reproduce import METRIC_TEXT, METRICS, SECONDARY, Entry, Row, entry_status, run_records

VERDICTS = ("within", "outside", "not run", "partial", "failed", "strategy not available",
            "published value not verified", "full-size not run", "not compared")


def _stats(vals):
    from cl.sweeps.report import cell_stats

    return cell_stats(vals)


def _metric_values(records, metric_name):
    key = METRICS[metric_name]
    out = []
    for r in records:
        v = (r.get("metrics") or {}).get(key)
        if isinstance(v, (int, float)) and v == v:
            out.append(float(v) * 100.0)
    return out


def sd_of(p: dict) -> float | None:
    """The published spread as a standard deviation over runs (the plot's error bar): a standard error times
    sqrt(n), two standard errors halved first; as printed when n or the kind is not stated."""
    v, n, kind = p.get("sd"), p.get("n"), p.get("spread", "sd")
    if v is None or kind in ("sd", "unknown") or n is None:
        return v
    return (v / 2.0 if kind == "2se" else v) * n ** 0.5


def _fmt(m, s, n):
    return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"


def _failed_count(e: Entry, row: Row) -> int:
    return sum(1 for rid in row.run_ids if (Path(e.out) / rid / "failed.json").exists()
               and not (Path(e.out) / rid / "result.json").exists())


def _provenance(records) -> dict:
    commits, hw, dates = [], [], []
    for r in records:
        side = r.get("_side") or {}
        commits.append(side.get("commit") or r.get("commit") or f"not recorded (cl-platform {(r.get('versions') or {}).get('cl-platform', '?')})")
        dev = str(r.get("device") or "?")
        cpu = side.get("cpu") or r.get("cpu")  # the result record names its CPU model too
        hw.append(f"{dev}, {r.get('threads', '?')} thread(s)" + (f", {cpu}" if cpu and dev.startswith("cpu") else ""))
        dates.append(side.get("date", "")[:10] or str(r.get("date") or "")[:10] or time.strftime("%Y-%m-%d", time.gmtime(r["_mtime"])))
    uniq = lambda xs: "; ".join(dict.fromkeys(xs))  # noqa: E731
    d = sorted(set(dates))
    return {"commit": uniq(commits), "hardware": uniq(hw), "date": d[0] if len(d) == 1 else f"{d[0]} to {d[-1]}"}


def ours_of(e: Entry, row: Row) -> dict:
    """Our number for one row: {"mean", "std", "n", "expected", "records"} (mean None when nothing finished)."""
    if not e.available:
        return {"mean": None, "std": None, "n": 0, "expected": 0, "records": []}
    recs = run_records(e, row)
    vals = _metric_values(recs, row.metric["name"])
    out = {"n": len(vals), "expected": len(row.run_ids), "records": recs, "mean": None, "std": None}
    if vals:
        out["mean"], out["std"], _ = _stats(vals)
    return out


def board_rows(entries: list[Entry]) -> list[dict]:
    by_name = {e.name: e for e in entries}
    ours_cache = {}

    def ours(e, row):
        k = (e.name, row.id)
        if k not in ours_cache:
            ours_cache[k] = ours_of(e, row)
        return ours_cache[k]

    out = []
    for e in entries:
        for row in e.rows:
            o = ours(e, row)
            ref, ref_sd, ref_txt, src_txt = None, None, "", ""
            if e.reduced_of is not None:
                full = by_name.get(e.reduced_of)
                if row.compare_with == "none" or full is None:
                    ref_txt = "not compared (reduced pipeline check)"
                else:
                    frow = next(r for r in full.rows if r.id == row.compare_with)
                    fo = ours(full, frow)
                    if fo["mean"] is not None:
                        ref, ref_sd = fo["mean"], fo["std"]
                        ref_txt = f"ours full-size {_fmt(fo['mean'], fo['std'], fo['n'])} (n={fo['n']})"
                    else:
                        ref_txt = "ours full-size: not run"
                    src_txt = f"{full.name} / {frow.id}"
            elif row.published is not None:
                p = row.published
                ref, ref_sd = p["value"], sd_of(p)
                kind = "" if p.get("spread", "sd") == "sd" else f"{p['spread']}, "
                ref_txt = f"{p['value']:g}" + (f" ± {p['sd']:g}" if p["sd"] is not None else " (spread not printed)") \
                          + f" ({kind}n={p['n'] if p['n'] is not None else 'n/s'})"
            else:
                ref_txt = "published value not verified"
            if row.source is not None:
                s = row.source
                src_txt = f"{s['ref']} [{s['provenance']}]"
                if s["provenance"] in SECONDARY:
                    src_txt += " (secondary transcription" + ("; checked: " + s["checked"] if s.get("checked")
                                                              else ", not checked at the paper") + ")"
                elif s.get("checked"):
                    src_txt += f"; checked: {s['checked']}"
            diff = o["mean"] - ref if (o["mean"] is not None and ref is not None) else None
            tol = row.tolerance["points"] if row.tolerance else None
            if not e.available:
                verdict = "strategy not available"
            elif o["mean"] is None:
                verdict = "failed" if _failed_count(e, row) else "not run"
            elif e.reduced_of is not None and row.compare_with == "none":
                verdict = "not compared"
            elif e.reduced_of is not None and ref is None:
                verdict = "full-size not run"
            elif ref is None:
                verdict = "published value not verified"
            elif tol is None:
                verdict = "not compared"
            else:
                verdict = "within" if abs(diff) <= tol + 1e-9 else "outside"
            if o["mean"] is not None and o["n"] < o["expected"] and verdict in ("within", "outside"):
                verdict_txt = f"{verdict} (partial: {o['n']}/{o['expected']} seeds)"
            else:
                verdict_txt = verdict
            prov = _provenance(o["records"]) if o["records"] else {"commit": "", "hardware": "", "date": ""}
            out.append({"entry": e.name, "row": row.id, "label": row.label, "method": e.method,
                        "benchmark": e.benchmark, "metric": row.metric, "hardware_class": e.hardware,
                        "published": ref_txt, "source": src_txt, "ref": ref, "ref_sd": ref_sd,
                        "ours": o["mean"], "ours_std": o["std"], "n": o["n"], "expected": o["expected"],
                        "diff": diff, "tolerance": tol,
                        "tolerance_reason": row.tolerance["reason"] if row.tolerance else "",
                        "verdict": verdict, "verdict_text": verdict_txt, "reduced": e.reduced_of is not None,
                        "missing": list(e.missing), "out": e.out,
                        "sweep": e.sweep.name if e.sweep is not None else None, **prov})
    return out


def metric_text(m: dict) -> str:
    mem = m["memory"]
    if mem == "none":
        mtxt = "no memory"
    else:
        mtxt = "memory " + ", ".join(f"{v} {'per class' if k == 'per_class' else 'in total'}" for k, v in mem.items())
    return f"{METRIC_TEXT[m['name']]}, {m['setting']}, {mtxt}"


def _md_cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _link(board_dir: Path, out: str | None, records: Path | None = None) -> str:
    """The run folder's report (scratch, on the machine that ran it) and the committed records folder."""
    links = []
    rep = Path(out) / "report" / "report.md" if out else None
    if rep is not None and rep.exists():
        links.append(f"[report]({os.path.relpath(rep.resolve(), board_dir.resolve())})")
    if records is not None and records.is_dir() and any(records.glob("*.json")):
        links.append(f"[records]({os.path.relpath(records.resolve(), board_dir.resolve())})")
    return ", ".join(links) or "–"


def render(entries: list[Entry], rows: list[dict], board: Path, png_name: str | None,
           records: Path | None = None) -> str:
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    lines = ["# Reproduction board", "",
             "Generated by `cl reproduce report` from `runs/reproduce/*.yaml` and the result files of their "
             "sweeps; do not edit by hand. The format of an entry, how to add one and how to run the board: "
             "[reproducing.md](reproducing.md).", "",
             f"{len(rows)} published results in {len(entries)} entries: "
             + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".", "",
             "Ours: mean ± sample std over the seeds that finished (n). Difference: ours − published, in "
             "percentage points. A reduced entry is compared with our own full-size number, never with a "
             "published one. Sources tagged SEC-R / SEC-D are secondary transcriptions of the paper.", ""]
    if png_name:
        lines += [f"![ours against published]({png_name})", ""]
    hdr = ["entry", "method", "benchmark", "result", "metric", "published", "source", "ours (n)", "diff",
           "tolerance", "verdict", "commit", "hardware", "date", "run report, records"]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for r in rows:
        ours = f"{_fmt(r['ours'], r['ours_std'], r['n'])} (n={r['n']})" if r["ours"] is not None else "–"
        if r["ours"] is not None and r["n"] < r["expected"]:
            ours += f" of {r['expected']}"
        diff = f"{r['diff']:+.2f}" if r["diff"] is not None else "–"
        tol = f"± {r['tolerance']:g}" if r["tolerance"] is not None else "–"
        verdict = r["verdict_text"]
        if r["verdict"] == "strategy not available":
            verdict += f" ({', '.join(r['missing'])})"
        cells = [r["entry"], r["method"], r["benchmark"], r["label"], metric_text(r["metric"]), r["published"],
                 r["source"], ours, diff, tol, verdict, r["commit"] or "–", r["hardware"] or "–", r["date"] or "–",
                 _link(board.parent, r["out"], records / r["sweep"] if records is not None and r["sweep"] else None)]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines += ["", "## Entries", ""]
    for e in entries:
        st = entry_status(e, records)
        lines.append(f"### {e.name}")
        lines.append("")
        lines.append(f"- {e.method}: {e.benchmark}. Hardware `{e.hardware}`, about {e.cost_hours:g} device-hours; "
                     f"status: {st['text']}.")
        lines.append(f"- Entry: {_rel(e.path, board.parent)}; sweep: {_rel(e.sweep_path, board.parent)}"
                     + (f"; results: `{e.out}`" if e.out else "") + ".")
        if e.reduced_of:
            lines.append(f"- Reduced version of `{e.reduced_of}`: compared only with our own full-size number.")
        tols = {(r.tolerance["points"], r.tolerance["reason"]) for r in e.rows if r.tolerance}
        for p, why in sorted(tols):
            lines.append(f"- Tolerance ± {p:g} points: {why}")
        if e.notes:
            lines.append(f"- Notes: {' '.join(e.notes.split())}")
        for r in e.rows:
            if r.notes:
                lines.append(f"- `{r.id}`: {' '.join(r.notes.split())}")
        lines.append("")
    return "\n".join(lines)


def _rel(p: str | None, board_dir: Path) -> str:
    """A link to a file, relative to the board's folder; shown by its name under the folder runs/."""
    if not p:
        return "–"
    parts = Path(p).resolve().parts
    shown = "/".join(parts[len(parts) - 1 - parts[::-1].index("runs"):]) if "runs" in parts else Path(p).name
    try:
        return f"[`{shown}`]({os.path.relpath(Path(p).resolve(), board_dir.resolve())})"
    except ValueError:
        return f"`{p}`"


def plot(rows: list[dict], path: Path) -> bool:
    """Ours against published (or against our full-size number for reduced entries), identity line, bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["ours"] is not None and r["ref"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    lo, hi = 0.0, 100.0
    if pts:
        vals = [r["ours"] for r in pts] + [r["ref"] for r in pts]
        lo, hi = max(0.0, min(vals) - 10), min(100.0, max(vals) + 10)
        if hi - lo < 20:
            lo, hi = max(0.0, lo - 10), min(100.0, hi + 10)
    xs = [lo, hi]
    ax.plot(xs, xs, color="black", lw=1, label="identity (ours = published)")
    for i, t in enumerate(sorted({r["tolerance"] for r in pts if r["tolerance"] is not None})):
        ax.fill_between(xs, [x - t for x in xs], [x + t for x in xs], alpha=0.12, color=f"C{i % 10}",
                        label=f"tolerance ± {t:g} points")
    for r in pts:
        color = "tab:green" if r["verdict"] == "within" else ("tab:red" if r["verdict"] == "outside" else "tab:gray")
        ax.errorbar(r["ref"], r["ours"], xerr=r["ref_sd"] or 0.0, yerr=r["ours_std"] or 0.0, linestyle="none",
                    color=color, ms=4, capsize=2, marker="s" if r["reduced"] else "o")
        ax.annotate(f"{r['entry']}/{r['row']}", (r["ref"], r["ours"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("published (%)  [reduced entries: our full-size number]")
    ax.set_ylabel("ours (%), mean ± std over seeds")
    n_missing = len(rows) - len(pts)
    ax.set_title(f"Reproduction board: {len(pts)} results compared, {n_missing} not comparable yet\n"
                 "green: within tolerance, red: outside, gray: not compared", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    if not pts:
        ax.text(0.5, 0.5, "no result compared yet", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)
    return True


def write_board(entries: list[Entry], board: str | Path, run_reports: bool = True,
                records: str | Path | None = None) -> dict:
    board = Path(board)
    board.parent.mkdir(parents=True, exist_ok=True)
    if run_reports:
        from cl.core.registry import ConfigError
        from cl.sweeps.report import make_report

        done = set()
        for e in entries:
            if e.out and e.out not in done and Path(e.out).is_dir():
                done.add(e.out)
                try:
                    make_report(e.out, wandb=False)
                except ConfigError:
                    pass  # an empty results folder: nothing to report
    rows = board_rows(entries)
    png = board.with_suffix(".png")
    plot(rows, png)
    text = render(entries, rows, board, png.name, Path(records) if records is not None else None)
    atomic_write(board, lambda f: f.write(text + "\n"))
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    return {"path": str(board), "png": str(png), "rows": rows, "counts": {k: v for k, v in counts.items() if v},
            "markdown": text}
