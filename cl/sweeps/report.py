"""Reports: the result files of a sweep as tables, plots and a CSV.

``cl report DIR`` reads ``DIR/<run_id>/result.json`` (finished runs) and ``failed.json`` (failed ones) and
writes into ``DIR/report/``:

- ``report.md``: rows = strategies, columns = scenarios, cells = mean ± std over seeds of the final average
  accuracy (%), then the same for forgetting and (when any run is online) online accuracy; the failed and
  missing runs are listed;
- ``heatmap_<row>__<column>.png``: the accuracy matrix R (mean over seeds, the number of seeds in the
  title) of each cell; experiences are numbered from 1 as in the curves; in class- and task-incremental
  scenarios the upper triangle (experiences not trained yet, whose classes the model cannot predict) is
  left blank rather than drawn as measured zeros; domain-incremental scenarios keep it (forward transfer);
- ``curves_<column>.png``: average accuracy after each experience, one line per strategy (± std band over
  seeds, the number of seeds in the legend, the legend below the axes);
- ``runs.csv``: one line per run with its status, metrics and flattened config.

Row labels: the strategy name plus its settings that differ from the strategy's registered defaults (so a
strategy run once with a non-default setting shows it), plus the backbone and protocol settings that differ
between runs of that strategy on one scenario; column labels: the scenario name plus the scenario settings
that differ likewise.  With W&B on, the tables are logged as W&B tables too.
"""
from __future__ import annotations

import csv
import json
import math
import re
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from cl.core.files import atomic_write

SUB_METRICS = (("forgetting", "Forgetting (%, lower is better)"), ("online_acc", "Online accuracy (%)"))
CSV_METRICS = ("avg_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "online_acc", "online_acc_window",
               "anytime_auc", "wall_time", "train_time", "train_samples_per_s", "peak_memory_mb", "trainable_params")
SECTIONS = ("strategy", "scenario", "backbone", "protocol")


def _read(path: Path):
    try:
        rec = json.loads(path.read_text())
    except Exception as e:  # a damaged file is reported, not fatal
        return {"status": "unreadable", "error": f"{path}: {type(e).__name__}: {e}"}
    if not isinstance(rec, dict):
        return {"status": "unreadable", "error": f"{path}: JSON of the wrong shape ({type(rec).__name__})"}
    if path.name == "result.json":  # valid JSON is not yet a result: the same test as the sweep's
        from cl.train.results import result_problem

        why = result_problem(rec, None)
        bad_fields = [k for k, t in (("config", dict), ("metrics", dict)) if k in rec and not isinstance(rec[k], t)]
        if why or bad_fields:
            return {"status": "unreadable", "run_id": rec.get("run_id") if isinstance(rec.get("run_id"), str) else None,
                    "error": f"{path}: {why or 'malformed fields ' + ', '.join(bad_fields)}"}
    for k, t in (("config", dict), ("metrics", dict)):
        if k in rec and not isinstance(rec[k], t):
            rec.pop(k)
    return rec


def _write_atomic(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, renamed over it: never a truncated file."""
    atomic_write(path, write, newline="")


def collect(root: str | Path) -> dict:
    """Runs under ``root``: {"runs": [record], "missing": [ids], "ignored": n, "manifest": {...}|None}."""
    root = Path(root)
    manifest = _read(root / "sweep.json") if (root / "sweep.json").exists() else None
    dirs = sorted({p.parent for pat in ("*/result.json", "*/failed.json", "*/checkpoint.pt") for p in root.glob(pat)})
    dirs = sorted(set(dirs) | {p.parent for p in root.glob("*/interrupted.json")})
    if not dirs and (root / "result.json").exists():
        dirs = [root]
    wanted = [r["id"] for r in manifest.get("runs", [])] if isinstance(manifest, dict) and "runs" in manifest else None
    runs, ignored = [], 0
    by_id = {}
    for d in dirs:
        if wanted is not None and d.name not in wanted and d != root:
            ignored += 1
            continue
        if (d / "result.json").exists():
            rec = _read(d / "result.json")
        elif (d / "failed.json").exists() or (d / "interrupted.json").exists():
            f = d / ("interrupted.json" if (d / "interrupted.json").exists() else "failed.json")
            rec = _read(f)
            rec["status"] = rec.get("status") or ("interrupted" if f.name == "interrupted.json" else "failed")
        else:
            rec = {"status": "partial", "error": "interrupted: checkpoint only (rerun the sweep to resume)"}
        if not isinstance(rec.get("run_id"), str):
            rec["run_id"] = d.name
        rec["_dir"] = str(d)
        runs.append(rec)
        by_id[rec["run_id"]] = rec
    missing = [i for i in (wanted or []) if i not in by_id and i not in {Path(r["_dir"]).name for r in runs}]
    return {"runs": runs, "missing": missing, "ignored": ignored, "manifest": manifest}


# ------------------------------------------------------------------------------------------------
# labels


def _flat(cfg: dict) -> dict:
    out = {}
    for sec in SECTIONS:
        for k, v in (cfg.get(sec) or {}).items():
            out[f"{sec}.{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else v
    out["seed"] = cfg.get("seed")
    return out


def _varying(flats: list[dict], prefix: tuple) -> list[str]:
    keys = sorted({k for f in flats for k in f if k.startswith(prefix)})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def _fmt_kv(keys, flat) -> str:
    return ", ".join(f"{k.split('.', 1)[1] if k.split('.', 1)[0] in ('strategy', 'scenario') else k}={flat.get(k)}"
                     for k in keys)


def _strategy_defaults(name: str) -> dict | None:
    """The registered strategy's default config as a flat {strategy.field: value}, or None if unknown."""
    try:
        import dataclasses

        from cl.core.registry import strategies

        entry = strategies.get(name)
        cfg = entry.config() if entry.config is not None else None
        if cfg is None or not dataclasses.is_dataclass(cfg):
            return None
        return {f"strategy.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
                for k, v in dataclasses.asdict(cfg).items()}
    except Exception:
        return None


def _non_default(flat: dict, defaults: dict | None) -> set:
    if defaults is None:
        return set()
    return {k for k, v in flat.items() if k.startswith("strategy.") and k != "strategy.name"
            and k in defaults and repr(defaults[k]) != repr(v)}


def label_runs(runs: list[dict]) -> None:
    """Give each run a row and a column label. The row is the strategy name plus the strategy, backbone and
    protocol settings that differ between runs of that strategy on one scenario (e.g. two learning rates);
    the column is the scenario name plus the scenario settings that differ likewise. Settings that change only
    from one scenario to another (a per-scenario override) do not split rows; runs.csv has every setting."""
    cfgd = [r for r in runs if isinstance(r.get("config"), dict)]
    flats = {id(r): _flat(r["config"]) for r in cfgd}
    pairs = defaultdict(list)
    for r in cfgd:
        pairs[(r["config"]["strategy"]["name"], r["config"]["scenario"]["name"])].append(flats[id(r)])
    row_keys, col_keys = defaultdict(set), defaultdict(set)
    defaults = {}
    for (sname, cname), fl in pairs.items():
        row_keys[sname] |= set(_varying(fl, ("strategy.", "backbone.", "protocol.")))
        col_keys[cname] |= set(_varying(fl, ("scenario.",)))
        if sname not in defaults:
            defaults[sname] = _strategy_defaults(sname)
        for f in fl:
            row_keys[sname] |= _non_default(f, defaults[sname])
    for r in cfgd:
        sname, cname = r["config"]["strategy"]["name"], r["config"]["scenario"]["name"]
        rx = _fmt_kv(sorted(row_keys[sname]), flats[id(r)])
        cx = _fmt_kv(sorted(col_keys[cname]), flats[id(r)])
        r["_row"] = f"{sname} ({rx})" if rx else sname
        r["_col"] = f"{cname} ({cx})" if cx else cname
    for r in runs:
        if r not in cfgd:
            r["_row"], r["_col"] = "?", "?"


# ------------------------------------------------------------------------------------------------
# tables


def _metric(r: dict, key: str):
    v = (r.get("metrics") or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def cell_stats(vals: list[float]) -> tuple[float, float, int]:
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def table(runs, key: str, rows: list[str], cols: list[str], scale: float = 100.0):
    """(markdown, data) of mean ± std over seeds of ``key`` for finished runs."""
    cells = defaultdict(list)
    failed = defaultdict(int)
    for r in runs:
        if r.get("status") == "finished":
            v = _metric(r, key)
            if v is not None:
                cells[(r["_row"], r["_col"])].append(v * scale)
        else:
            failed[(r["_row"], r["_col"])] += 1
    nmax = max([len(v) for v in cells.values()] + [1])
    data = []
    lines = ["| strategy | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in rows:
        out, drow = [], [row]
        for col in cols:
            vals = cells.get((row, col))
            if vals:
                m, s, n = cell_stats(vals)
                m, s = m + 0.0 if abs(m) >= 0.05 else 0.0, s
                txt = f"{m:.1f} ± {s:.1f}" if n > 1 else f"{m:.1f}"
                if n < nmax:
                    txt += f" (n={n})"
                if failed.get((row, col)):
                    txt += f" ({failed[(row, col)]} failed)"
                drow.append(txt)
            else:
                txt = "failed" if failed.get((row, col)) else "–"
                drow.append(None if txt == "–" else txt)
            out.append(txt)
        lines.append(f"| {row} | " + " | ".join(out) + " |")
        data.append(drow)
    return "\n".join(lines), data


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:80] or "x"


# ------------------------------------------------------------------------------------------------
# plots


def _mean_R_n(members):
    """(mean of the members' R matrices of the first one's shape, how many were averaged), or (None, 0)."""
    Rs = [np.asarray(r["R"], dtype=float) for r in members if r.get("R")]
    Rs = [R for R in Rs if R.ndim == 2]
    if not Rs:
        return None, 0
    shape = Rs[0].shape
    Rs = [R for R in Rs if R.shape == shape]
    return np.mean(Rs, axis=0), len(Rs)



def _blank_upper(members) -> bool:
    """Blank the upper triangle unless the runs are domain-incremental (shared classes: measured transfer)."""
    for r in members:
        sc = r.get("scenario")
        setting = sc.get("setting") if isinstance(sc, dict) else None
        if setting is None and isinstance(sc, str):
            m = re.search(r"setting=(\w+)", sc)
            setting = m.group(1) if m else None
        if setting == "domain":
            return False
    return True


def heatmap_matrix(members):
    """(mean R in %, with NaN where nothing meaningful was measured; number of seeds averaged) or None."""
    R, n = _mean_R_n(members)
    if R is None:
        return None
    R = R * 100
    if _blank_upper(members):
        R = R.copy()
        R[np.triu_indices(R.shape[0], k=1, m=R.shape[1])] = np.nan
    return R, n


def _curve(r):
    R = np.asarray(r.get("R") or [], dtype=float)
    if R.ndim != 2 or not len(R):
        return None
    return np.array([R[i, : i + 1].mean() for i in range(R.shape[0])])


def plots(runs, rows, cols, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    files = []
    fin = [r for r in runs if r.get("status") == "finished"]
    for col in cols:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        drew = False
        for row in rows:
            curves = [c for c in (_curve(r) for r in fin if r["_row"] == row and r["_col"] == col) if c is not None]
            if not curves:
                continue
            T = min(len(c) for c in curves)
            C = np.stack([c[:T] for c in curves]) * 100
            x = np.arange(1, T + 1)
            label = textwrap.fill(f"{row} (n={len(C)})", 90, subsequent_indent="    ")
            ax.plot(x, C.mean(0), marker="o", markersize=3, label=label)
            if len(C) > 1:
                ax.fill_between(x, C.mean(0) - C.std(0, ddof=1), C.mean(0) + C.std(0, ddof=1), alpha=0.2)
            drew = True
        if drew:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("experiences learned")
            ax.set_ylabel("avg accuracy on seen experiences (%)")
            ax.set_ylim(0, 100)
            ax.set_title(f"{col}\nmean over seeds (n in the legend), band: ± 1 std", fontsize=9)
            ax.grid(alpha=0.3)
            # below the axes, so it never covers a curve; the saved canvas grows to hold it (no tight_layout:
            # that would shrink the axes instead)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), borderaxespad=0.0, frameon=False)
            p = out / f"curves_{_slug(col)}.png"
            fig.savefig(p, dpi=120, bbox_inches="tight")
            files.append(p.name)
        plt.close(fig)
        for row in rows:
            got = heatmap_matrix([r for r in fin if r["_row"] == row and r["_col"] == col])
            if got is None:
                continue
            R, n_seeds = got
            T, J = R.shape
            cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
            fig, ax = plt.subplots(figsize=(1.6 + 0.55 * J, 1.3 + 0.5 * T))
            im = ax.imshow(np.ma.masked_invalid(R), vmin=0, vmax=100, cmap=cmap)
            for i in range(T):
                for j in range(J):
                    if np.isfinite(R[i, j]):
                        ax.text(j, i, f"{R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                                color="white" if R[i, j] < 60 else "black")
            ax.set_xticks(range(J), [str(j + 1) for j in range(J)], fontsize=7)
            ax.set_yticks(range(T), [str(i + 1) for i in range(T)], fontsize=7)
            ax.set_xlabel("test experience")
            ax.set_ylabel("after training on experience")
            seeds = f"mean of {n_seeds} seed{'s' if n_seeds != 1 else ''}"
            ax.set_title(f"{row}\n{col}\n{seeds}", fontsize=8)
            cb = fig.colorbar(im, ax=ax, fraction=0.046)
            cb.set_label("accuracy (%)", fontsize=8)
            fig.tight_layout()
            p = out / f"heatmap_{_slug(row)}__{_slug(col)}.png"
            fig.savefig(p, dpi=120, bbox_inches="tight")
            plt.close(fig)
            files.append(p.name)
    return files


# ------------------------------------------------------------------------------------------------
# main


def write_csv(runs, path: Path) -> None:
    flats = [_flat(r["config"]) if isinstance(r.get("config"), dict) else {} for r in runs]
    cfg_keys = sorted({k for f in flats for k in f if k != "seed"})
    head = ["run_id", "status", "strategy", "scenario", "row", "column", "seed"] + list(CSV_METRICS) + ["error"] + cfg_keys
    def write(f):
        w = csv.writer(f)
        w.writerow(head)
        for r, fl in zip(runs, flats):
            cfg = r.get("config") or {}
            err = (r.get("error") or "").splitlines()
            w.writerow([r.get("run_id"), r.get("status"), (cfg.get("strategy") or {}).get("name"),
                        (cfg.get("scenario") or {}).get("name"), r.get("_row"), r.get("_col"), cfg.get("seed")]
                       + [_metric(r, k) for k in CSV_METRICS] + [err[0] if err else ""]
                       + [fl.get(k) for k in cfg_keys])

    _write_atomic(path, write)


def _wandb_on(runs) -> bool:
    import os

    if os.environ.get("WANDB_MODE") == "disabled":
        return False
    settings = {(r.get("config") or {}).get("wandb", "auto") for r in runs if r.get("config")}
    return bool(settings) and not settings <= {False, "off", "false", "disabled", None}


def log_wandb(runs, tables: dict, images: list[Path], out_dir: Path | None = None) -> bool:
    """Log the report tables (and plots) to W&B in the sweep's group; never raises."""
    try:
        import wandb

        from cl.train.loggers import _wandb_mode

        cfg = next((r["config"] for r in runs if r.get("config")), {})
        run = wandb.init(project=cfg.get("project") or "cl", group=cfg.get("group"), job_type="report",
                         name=f"report-{cfg.get('group') or 'sweep'}", tags=list(cfg.get("tags") or []) + ["report"],
                         mode=_wandb_mode(), reinit="create_new", settings=wandb.Settings(silent=True, console="off"),
                         dir=str(out_dir) if out_dir else None)
        for key, (columns, data) in tables.items():
            run.log({f"report/{key}": wandb.Table(columns=columns, data=data)})
        for p in images:
            run.log({f"report/{p.stem}": wandb.Image(str(p))})
        run.finish()
        return True
    except Exception as e:  # pragma: no cover - depends on the environment
        print(f"warning: W&B logging of the report failed: {type(e).__name__}: {e}", file=sys.stderr)
        return False


def make_report(root: str | Path, out: str | Path | None = None, wandb: bool | None = None, plots_on: bool = True,
                metric: str = "avg_acc") -> dict:
    root = Path(root)
    if not root.is_dir():
        from cl.core.registry import ConfigError

        raise ConfigError(f"results folder {str(root)!r} does not exist")
    out = Path(out) if out else root / "report"
    got = collect(root)
    runs = got["runs"]
    if not runs and not got["missing"]:
        from cl.core.registry import ConfigError

        raise ConfigError(f"no results in {str(root)!r}: no <run>/result.json, failed.json or checkpoint.pt "
                          f"(run `cl sweep FILE` first, or point cl report at a sweep's results folder)")
    label_runs(runs)
    # rows and columns in the sweep's order (the manifest's), else alphabetical
    order = {rid: i for i, rid in enumerate(r["id"] for r in (got["manifest"] or {}).get("runs", []))}
    ranked = sorted(runs, key=lambda r: (order.get(r.get("run_id"), len(order)), str(r.get("run_id"))))
    # runs with no readable config (interrupted before writing anything) are listed, not tabled
    rows = list(dict.fromkeys(r["_row"] for r in ranked if r["_row"] != "?"))
    cols = list(dict.fromkeys(r["_col"] for r in ranked if r["_col"] != "?"))
    if not order:
        rows, cols = sorted(rows), sorted(cols)
    fin = [r for r in runs if r.get("status") == "finished"]
    bad = [r for r in runs if r.get("status") != "finished"]
    name = (got["manifest"] or {}).get("name") or root.name
    md = [f"# Report: {name}", "",
          f"{len(fin)} finished, {len([r for r in bad if r.get('status') != 'partial'])} failed, "
          f"{len([r for r in bad if r.get('status') == 'partial'])} interrupted, {len(got['missing'])} not run"
          + (f" (results folder: `{root}`)" if True else ""), ""]
    main_md, main_data = table(runs, metric, rows, cols)
    title = "Final average accuracy (%)" if metric == "avg_acc" else metric
    parts = [f"## {title}: mean ± std over seeds", "", main_md, ""]
    tables = {metric: (["strategy"] + cols, main_data)}
    for key, t in SUB_METRICS:
        if any(_metric(r, key) is not None for r in fin):
            tmd, tdata = table(runs, key, rows, cols)
            parts += [f"### {t}", "", tmd, ""]
            tables[key] = (["strategy"] + cols, tdata)
    md += parts
    if bad:
        md += ["## Runs that did not finish", ""]
        for r in bad:
            err = (r.get("error") or "").strip().splitlines()
            md.append(f"- `{r.get('run_id')}` ({r.get('status')}): {err[-1] if err else 'no error recorded'}")
        md.append("")
    if got["missing"]:
        md += ["## Runs not started", ""] + [f"- `{i}`" for i in got["missing"]] + [""]
    if got["ignored"]:
        md += [f"({got['ignored']} result folders not in this sweep's manifest were ignored)", ""]
    written = True
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(runs, out / "runs.csv")
    except OSError as e:  # read-only folder, full disk: the report is printed, not written
        import sys

        print(f"warning: cannot write the report to {out}: {e.strerror or e}", file=sys.stderr)
        written, plots_on = False, False
    images = plots(runs, rows, cols, out) if plots_on and fin else []
    if images:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in images] + [""]
    md += ["All runs: [runs.csv](runs.csv)", ""]
    text = "\n".join(md)
    if written:
        try:
            _write_atomic(out / "report.md", lambda f: f.write(text))
        except OSError as e:
            import sys

            print(f"warning: cannot write {out / 'report.md'}: {e.strerror or e}", file=sys.stderr)
            written = False
    main_text = "\n".join([md[0], "", md[2], ""] + parts)
    if bad or got["missing"]:
        main_text += "\n" + "\n".join(l for l in md if l.startswith("- `") or l.startswith("## Runs"))
    logged = False
    if (wandb if wandb is not None else _wandb_on(runs)) and fin:
        logged = log_wandb(runs, tables, [out / p for p in images], out)
    return {"path": str(out / "report.md") if written else None, "markdown": text, "markdown_main": main_text, "rows": rows, "cols": cols,
            "failed": [r.get("run_id") for r in bad], "missing": got["missing"], "images": images,
            "csv": str(out / "runs.csv") if written else None, "tables": tables, "wandb": logged}


def add_cli(sub) -> None:
    p = sub.add_parser("report", help="tables, plots and CSV from a folder of run results",
                       description="Read DIR/<run>/result.json (and failed.json) and write DIR/report/: report.md, "
                                   "heatmaps and curves (PNG), runs.csv.")
    p.add_argument("dir", help="results folder of a sweep (e.g. results/quickstart)")
    p.add_argument("--out", "-o", help="where to write the report (default DIR/report)")
    p.add_argument("--metric", default="avg_acc", help="metric of the main table (default avg_acc)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-wandb", action="store_true", help="do not log the tables to W&B")
    p.add_argument("--wandb", action="store_true", help="log the tables to W&B even if the runs had it off")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    wb = False if args.no_wandb else (True if args.wandb else None)
    rep = make_report(args.dir, args.out, wandb=wb, plots_on=not args.no_plots, metric=args.metric)
    print(rep["markdown_main"])
    if rep["path"]:
        print(f"report: {rep['path']} ({len(rep['images'])} plots, CSV {rep['csv']})")
    return 0
