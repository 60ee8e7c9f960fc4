"""The reproduction board: published results, the sweeps that reproduce them, and the comparison.

An *entry* is a YAML file in ``runs/reproduce/`` (one per published result or per published table; format in
``docs/reproducing.md``).  It names a sweep file (the paper's protocol, usually in ``runs/paper/``), the
published values with their spread and source, the metric exactly, a tolerance with its reason, the hardware
class and an estimated cost.  ``cl reproduce run`` runs the entries' sweeps through the sweep runner (finished
runs are skipped, interrupted ones resume, ``--executor ray`` works as for ``cl sweep``); ``cl reproduce
report`` reads the result files and writes the board (``docs/reproduction.md``) and a PNG beside it.

Entry files are read with the sweep loader's YAML (``cl.sweeps.yaml_lines``: safe YAML, no code execution)
and every mistake is a ``FILE:LINE:`` error naming the valid choices, before anything runs."""
from __future__ import annotations

import json
import math
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cl.core.registry import ConfigError, unknown
from cl.sweeps.reproduce_records import archive, archived, records_root, restore
from cl.sweeps.yaml_lines import LDict, LList, SweepError, load_yaml_lines, plain

ENTRY_KEYS = ("name", "method", "strategies", "benchmark", "sweep", "hardware", "cost_hours", "metric",
              "tolerance", "reduced_of", "results", "notes")
ROW_KEYS = ("id", "label", "select", "metric", "published", "source", "tolerance", "compare_with", "notes")
METRIC_KEYS = ("name", "setting", "memory")
# metric name on the board -> the key in result.json's metrics (a fraction; the board shows %)
METRICS = {"final_avg_acc": "avg_acc", "avg_inc_acc": "avg_inc_acc", "final_forgetting": "forgetting",
           "online_acc": "online_acc"}
METRIC_TEXT = {"final_avg_acc": "final average accuracy", "avg_inc_acc": "average incremental accuracy",
               "final_forgetting": "final forgetting", "online_acc": "online (test-then-train) accuracy"}
SETTINGS = {"class-il": "class", "task-il": "task", "domain-il": "domain"}
MEMORY_KEYS = ("per_class", "total")
HARDWARE = ("cpu", "gpu", "gpu+weights")
PROVENANCE = ("PAPER", "CODE", "IMG", "3P", "SEC-R", "SEC-D", "NONE")
SECONDARY = ("SEC-R", "SEC-D")
PUBLISHED_KEYS = ("value", "sd", "n", "spread")
# what the printed ± is: a standard deviation (the default), a standard error, two standard errors (MIR's code
# prints mean ± 2 std / sqrt(n)), or not stated; `sd` holds the printed number whatever its kind
SPREADS = ("sd", "se", "2se", "unknown")
SOURCE_KEYS = ("ref", "provenance", "checked", "note")
TOLERANCE_KEYS = ("points", "reason")
NOT_VERIFIED = "not-verified"
SECTIONS = ("strategy", "scenario", "backbone", "protocol")
SIDE_FILE = "reproduce.json"  # <results>/reproduce.json: commit, host, CPU and date of the runs finished here


@dataclass
class Row:
    """One published value and the runs of the entry's sweep that reproduce it."""

    id: str
    label: str
    select: dict  # {"strategy": name, "strategy.buffer_size": 200, ...}
    metric: dict  # {"name", "setting", "memory"}
    published: dict | None  # {"value", "sd", "n"}; None: not verified / compared with our own number
    source: dict | None
    tolerance: dict | None
    compare_with: str | None = None  # reduced entries: "<row id of the full-size entry>" or "none"
    notes: str = ""
    line: int = 0
    run_ids: list = field(default_factory=list)  # filled when the sweep is loaded


@dataclass
class Entry:
    path: str
    name: str
    method: str
    strategies: list
    benchmark: str
    sweep_path: str | None
    hardware: str
    cost_hours: float
    rows: list
    reduced_of: str | None = None
    notes: str = ""
    missing: list = field(default_factory=list)  # strategies not registered: "strategy not available"
    sweep: object = None  # the loaded cl.sweeps.spec.Sweep (None when a strategy is missing)

    @property
    def available(self) -> bool:
        return not self.missing

    @property
    def out(self) -> str | None:
        return self.sweep.out if self.sweep is not None else None


# ------------------------------------------------------------------------------------------------
# loading and validation


class _EntryLoader:
    def __init__(self, path: str):
        self.path = str(path)

    def err(self, line: int, msg: str) -> SweepError:
        return SweepError(f"{self.path}:{line}: {msg}")

    def keys(self, d, valid, what: str) -> None:
        for k in d:
            if k not in valid:
                raise self.err(d.lineof(k), str(unknown(what, k, valid)))

    def mapping(self, parent, key, what: str, required=True):
        v = parent.get(key)
        if v is None:
            if required:
                raise self.err(parent.line, f"{what}: missing `{key}`")
            return None
        if not isinstance(v, dict):
            raise self.err(parent.lineof(key), f"{what}.{key}: expected a mapping, got {plain(v)!r}")
        return v

    def text(self, parent, key, what: str, required=True) -> str:
        v = parent.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            if required:
                raise self.err(parent.lineof(key) if key in parent else parent.line,
                               f"{what}: `{key}` is required (a non-empty string)")
            return ""
        if not isinstance(v, str):
            raise self.err(parent.lineof(key), f"{what}.{key}: expected a string, got {plain(v)!r}")
        return v.strip()

    def number(self, parent, key, what, minimum=0.0, required=True, integer=False, exclusive=False):
        v = parent.get(key)
        if v is None:
            if required:
                raise self.err(parent.lineof(key) if key in parent else parent.line, f"{what}: `{key}` is required")
            return None
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)) \
                or v < minimum or (exclusive and v == minimum):
            kind = "an integer" if integer else "a number"
            bound = f"> {minimum}" if exclusive else f">= {minimum}"
            raise self.err(parent.lineof(key), f"{what}.{key}: expected {kind} {bound}, got {plain(v)!r}")
        return v

    def metric(self, m, line, what, base=None) -> dict:
        if m is None:
            m = LDict()
            m.line, m.key_lines = line, {}
        if not isinstance(m, dict):
            raise self.err(line, f"{what}: expected a mapping with keys {', '.join(METRIC_KEYS)}")
        self.keys(m, METRIC_KEYS, f"{what} key")
        out = dict(base or {})
        if "name" in m:
            if m["name"] not in METRICS:
                raise self.err(m.lineof("name"), str(unknown("metric", m["name"], list(METRICS))))
            out["name"] = m["name"]
        if "setting" in m:
            if m["setting"] not in SETTINGS:
                raise self.err(m.lineof("setting"), str(unknown("setting", m["setting"], list(SETTINGS))))
            out["setting"] = m["setting"]
        if "memory" in m:
            mem = m["memory"]
            if mem == "none":
                out["memory"] = "none"
            elif isinstance(mem, dict) and mem:
                self.keys(mem, MEMORY_KEYS, "memory key")
                for k in mem:
                    self.number(mem, k, f"{what}.memory", minimum=1, integer=True)
                out["memory"] = plain(mem)
            else:
                raise self.err(m.lineof("memory"), f"{what}.memory: expected `none` or a mapping with "
                                                   f"{' and/or '.join(MEMORY_KEYS)} (samples), got {plain(mem)!r}")
        return out

    def tolerance(self, t, line, what):
        if t is None:
            return None
        if not isinstance(t, dict):
            raise self.err(line, f"{what}: expected {{points: X, reason: ...}}")
        self.keys(t, TOLERANCE_KEYS, "tolerance key")
        return {"points": float(self.number(t, "points", what, exclusive=True)),
                "reason": self.text(t, "reason", what)}

    def load(self) -> Entry:
        d = load_yaml_lines(self.path, ENTRY_KEYS)
        self.keys(d, ENTRY_KEYS, "entry key")
        name = str(d.get("name") or Path(self.path).stem)
        method = self.text(d, "method", "entry")
        benchmark = self.text(d, "benchmark", "entry")
        strategies = d.get("strategies")
        if isinstance(strategies, str):
            strategies = [strategies]
        if not isinstance(strategies, list) or not strategies or not all(isinstance(s, str) for s in strategies):
            raise self.err(d.lineof("strategies") if "strategies" in d else d.line,
                           "entry: `strategies` is required: the registry names the sweep needs (a list of strings)")
        hw = d.get("hardware")
        if hw not in HARDWARE:
            raise self.err(d.lineof("hardware") if "hardware" in d else d.line,
                           str(unknown("hardware class", hw, HARDWARE)))
        cost = float(self.number(d, "cost_hours", "entry"))
        sweep = d.get("sweep")
        if not isinstance(sweep, str) or not sweep.strip():
            raise self.err(d.lineof("sweep") if "sweep" in d else d.line,
                           "entry: `sweep` is required: the path of a sweep file, relative to this entry file "
                           "(e.g. ../paper/er-ace-online-cifar10.yaml)")
        sweep_path = str((Path(self.path).parent / sweep).resolve()) if not Path(sweep).is_absolute() else sweep
        if not Path(sweep_path).is_file():
            raise self.err(d.lineof("sweep"), f"sweep file {sweep!r} does not exist ({sweep_path})")
        reduced_of = d.get("reduced_of")
        if reduced_of is not None and not isinstance(reduced_of, str):
            raise self.err(d.lineof("reduced_of"), "reduced_of: expected the name of the full-size entry")
        metric = self.metric(d.get("metric"), d.lineof("metric"), "metric")
        tol = self.tolerance(d.get("tolerance"), d.lineof("tolerance"), "tolerance")
        rows_raw = d.get("results")
        if not isinstance(rows_raw, list) or not rows_raw:
            raise self.err(d.lineof("results") if "results" in d else d.line,
                           "entry: `results` is required: a list of published values (id, select, published, source)")
        rows, ids = [], {}
        for i, r in enumerate(rows_raw):
            rows.append(self.row(r, rows_raw.lineof(i), metric, tol, reduced_of, ids))
        notes = d.get("notes") or ""
        if not isinstance(notes, str):
            raise self.err(d.lineof("notes"), "notes: expected a string")
        return Entry(path=self.path, name=name, method=method, strategies=list(strategies), benchmark=benchmark,
                     sweep_path=sweep_path, hardware=hw, cost_hours=cost, rows=rows, reduced_of=reduced_of,
                     notes=notes.strip())

    def row(self, r, line, metric, tol, reduced_of, ids) -> Row:
        if not isinstance(r, dict):
            raise self.err(line, f"results: each item is a mapping with keys {', '.join(ROW_KEYS)}")
        self.keys(r, ROW_KEYS, "result key")
        rid = r.get("id")
        if not isinstance(rid, str) or not rid:
            raise self.err(r.lineof("id") if "id" in r else r.line, "result: `id` is required (a string)")
        if rid in ids:
            raise self.err(r.lineof("id"), f"duplicate result id {rid!r} (first at line {ids[rid]})")
        ids[rid] = r.lineof("id")
        where = f"result {rid!r}"
        sel = self.mapping(r, "select", where)
        for k in sel:
            sec = k.split(".", 1)[0] if isinstance(k, str) else None
            if sec not in SECTIONS and k != "seed":
                raise self.err(sel.lineof(k), str(unknown("select key", k, list(SECTIONS) + ["<section>.<field>"])))
        m = self.metric(r.get("metric"), r.lineof("metric"), f"{where}.metric", base=metric)
        for k in METRIC_KEYS:
            if k not in m:
                raise self.err(r.line, f"{where}: the metric's `{k}` is not given (here or in the entry's `metric`)")
        t = self.tolerance(r.get("tolerance"), r.lineof("tolerance"), f"{where}.tolerance") or tol
        pub, src, cw = r.get("published"), r.get("source"), r.get("compare_with")
        if reduced_of is not None:
            if pub is not None:
                raise self.err(r.lineof("published"), f"{where}: a reduced entry (reduced_of: {reduced_of}) is "
                                                      f"compared only with our own full-size number: use "
                                                      f"`compare_with: <result id of {reduced_of}>` (or none)")
            if not isinstance(cw, str):
                raise self.err(r.lineof("compare_with") if "compare_with" in r else r.line,
                               f"{where}: `compare_with` is required in a reduced entry: a result id of "
                               f"{reduced_of}, or `none`")
            return Row(rid, str(r.get("label") or rid), plain(sel), m, None, None, t, cw,
                       str(r.get("notes") or ""), r.line)
        if cw is not None:
            raise self.err(r.lineof("compare_with"), f"{where}: compare_with is for reduced entries (reduced_of)")
        if pub is None:
            raise self.err(r.line, f"{where}: `published` is required: {{value, sd, n}} or `{NOT_VERIFIED}`")
        if pub == NOT_VERIFIED:
            published = None
        elif isinstance(pub, dict):
            self.keys(pub, PUBLISHED_KEYS, "published key")
            published = {"value": float(self.number(pub, "value", f"{where}.published", minimum=-1e9)),
                         "sd": self.number(pub, "sd", f"{where}.published", required=False),
                         "n": self.number(pub, "n", f"{where}.published", minimum=1, required=False, integer=True),
                         "spread": pub.get("spread", "sd")}
            if published["spread"] not in SPREADS:
                raise self.err(pub.lineof("spread"), f"{where}.published: "
                                                     f"{unknown('spread', published['spread'], SPREADS)}")
        else:
            raise self.err(r.lineof("published"), f"{where}.published: expected {{value, sd, n}} or "
                                                  f"`{NOT_VERIFIED}`, got {plain(pub)!r}")
        if published is not None and t is None:
            raise self.err(r.line, f"{where}: a published value needs a tolerance ({{points, reason}}, here or "
                                   f"in the entry)")
        if not isinstance(src, dict):
            raise self.err(r.lineof("source") if "source" in r else r.line,
                           f"{where}: `source` is required: {{ref, provenance, checked, note}}")
        self.keys(src, SOURCE_KEYS, "source key")
        self.text(src, "ref", f"{where}.source")
        prov = src.get("provenance")
        if prov not in PROVENANCE:
            raise self.err(src.lineof("provenance") if "provenance" in src else src.line,
                           str(unknown("provenance", prov, PROVENANCE)))
        if (prov == "NONE") != (published is None):
            raise self.err(src.lineof("provenance"), f"{where}: provenance NONE goes with `published: "
                                                     f"{NOT_VERIFIED}` and only with it")
        for k in ("checked", "note"):
            if k in src:
                self.text(src, k, f"{where}.source")
        return Row(rid, str(r.get("label") or rid), plain(sel), m, published, plain(src), t, None,
                   str(r.get("notes") or ""), r.line)


def load_entry(path: str | Path, results: str | Path | None = None, check_sweep: bool = True) -> Entry:
    """Parse and validate one entry. With every strategy registered, its sweep is loaded too (output folder:
    ``results/<sweep name>`` when ``results`` is given, else the sweep's own ``out``) and each result's
    ``select`` must pick runs of one configuration over seeds, in the stated setting."""
    from cl.core.registry import strategies

    e = _EntryLoader(str(path)).load()
    names = strategies.names()
    e.missing = [s for s in e.strategies if s not in names]
    if e.missing or not check_sweep:
        return e
    from cl.sweeps.spec import load_sweep

    sweep = load_sweep(e.sweep_path)
    # as `cl sweep FILE` loads it, so that both give the same run ids and share finished runs
    overrides = [f"threads={sweep.executor['threads']}"] if sweep.executor.get("threads") is not None else []
    if results is not None or overrides:
        out = str(Path(results) / sweep.name) if results is not None else None
        sweep = load_sweep(e.sweep_path, overrides, out)
    e.sweep = sweep
    used = {r.config["strategy"]["name"] for r in sweep.runs}
    for s in sorted(used - set(e.strategies)):
        raise SweepError(f"{e.path}: the sweep runs strategy {s!r}, not in the entry's `strategies` "
                         f"({', '.join(e.strategies)}): list it there")
    for row in e.rows:
        row.run_ids = [r.id for r in sweep.runs if _matches(r.config, row.select)]
        where = f"{e.path}:{row.line}: result {row.id!r}"
        if not row.run_ids:
            raise SweepError(f"{where}: select {row.select} matches no run of the sweep {e.sweep_path}")
        specs = [r for r in sweep.runs if r.id in set(row.run_ids)]
        seeds = [r.config["seed"] for r in specs]
        if len(set(seeds)) != len(seeds):
            diff = _differing(specs)
            raise SweepError(f"{where}: select {row.select} matches {len(specs)} runs but only {len(set(seeds))} "
                             f"seeds: narrow it (the runs differ in {', '.join(diff) or '?'})")
        want = SETTINGS[row.metric["setting"]]
        for r in specs:
            have = _setting_of(r.config)
            if have is not None and have != want:
                raise SweepError(f"{where}: the metric says {row.metric['setting']} but run {r.id} is "
                                 f"setting={have}: add scenario.setting to select, or fix the metric")
    return e


def _setting_of(cfg: dict) -> str | None:
    """class | task | domain | data from a resolved scenario config; None when the scenario has no such field."""
    sc = cfg.get("scenario") or {}
    if sc.get("task_labels"):
        return "task"
    if "setting" in sc:
        return sc["setting"]
    return "class" if "task_labels" in sc else None


def _matches(cfg: dict, select: dict) -> bool:
    for k, want in select.items():
        if k == "seed":
            have = cfg.get("seed")
        elif "." in k:
            sec, fld = k.split(".", 1)
            have = (cfg.get(sec) or {}).get(fld, _Missing)
        else:
            have = (cfg.get(k) or {}).get("name")
        wants = want if isinstance(want, list) else [want]
        if have not in wants:
            return False
    return True


class _Missing:
    pass


def _differing(specs) -> list[str]:
    from cl.sweeps.report import _flat

    flats = [_flat(s.config) for s in specs]
    keys = sorted({k for f in flats for k in f if k != "seed"})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def entry_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"entries folder {str(folder)!r} does not exist")
    return sorted(folder.glob("*.yaml"))


def load_entries(folder: str | Path, results=None, names=None) -> list[Entry]:
    """Every entry file is parsed and validated; the sweeps are expanded for the entries named (and the full-size
    entries they are reduced from), or for all of them when no names are given."""
    entries = [load_entry(p, results, check_sweep=False) for p in entry_files(folder)]
    seen = {}
    for e in entries:
        if e.name in seen:
            raise SweepError(f"{e.path}:1: entry name {e.name!r} is also the name of {seen[e.name]}")
        seen[e.name] = e.path
    by_name = {e.name: e for e in entries}
    for e in entries:
        if e.reduced_of is not None:
            full = by_name.get(e.reduced_of)
            if full is None:
                raise SweepError(f"{e.path}: reduced_of: {str(unknown('entry', e.reduced_of, list(by_name)))}")
            ids = [r.id for r in full.rows]
            for r in e.rows:
                if r.compare_with != "none" and r.compare_with not in ids:
                    raise SweepError(f"{e.path}:{r.line}: compare_with: "
                                     f"{unknown(f'result of {full.name}', r.compare_with, ids + ['none'])}")
    if names:
        for n in names:
            if n not in by_name:
                raise unknown("entry", n, list(by_name))
    wanted = list(dict.fromkeys(names)) if names else [e.name for e in entries]
    need = set(wanted) | {by_name[n].reduced_of for n in wanted if by_name[n].reduced_of}
    loaded = {}
    for e in entries:
        if e.name in need:
            full = load_entry(e.path, results)
            for old, new in zip(e.rows, full.rows):  # keep the parsed rows, add their run ids
                old.run_ids = new.run_ids
            e.sweep, e.missing = full.sweep, full.missing
        loaded[e.name] = e
    return [loaded[n] for n in wanted]


# ------------------------------------------------------------------------------------------------
# status and results


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _states(e: Entry, records: Path | None = None, runs=None) -> list[str]:
    """Each run's status in the results folder; a run not finished there but with a valid archived record
    under ``records`` counts as finished (``cl reproduce run`` / ``report`` restore it before anything else)."""
    from cl.sweeps.status import run_status

    runs = e.sweep.runs if runs is None else runs
    sts = [run_status(e.out, r.id) for r in runs]
    if records is not None:  # only the runs not finished in the results folder have their records read
        have = archived(e, records, [r.id for r, s in zip(runs, sts) if s != "finished"])
        sts = ["finished" if r.id in have else s for r, s in zip(runs, sts)]
    return sts


def entry_status(e: Entry, records: Path | None = None) -> dict:
    """{"state": ..., "finished": k, "total": n, "last": date or None} of the entry's sweep on disk (with the
    archived records under ``records`` counted as finished runs)."""
    if not e.available:
        return {"state": "strategy not available", "finished": 0, "total": 0, "last": None,
                "text": f"strategy not available: {', '.join(e.missing)}"}
    sts = _states(e, records)
    fin = sts.count("finished")
    last = None
    for r in e.sweep.runs:
        p = Path(e.out) / r.id / "result.json"
        if p.exists():
            last = max(last or 0.0, p.stat().st_mtime)
    n = len(sts)
    if fin == n:
        state = "finished"
    elif fin == 0 and all(s == "pending" for s in sts):
        state = "not run"
    else:
        state = "partial"
    bad = sum(1 for s in sts if s == "failed")
    text = state if state != "partial" else f"partial: {fin}/{n} runs finished" + (f", {bad} failed" if bad else "")
    if state == "finished":
        text = f"finished ({n} runs)"
    if last:
        text += f", last {time.strftime('%Y-%m-%d', time.gmtime(last))}"
    return {"state": state, "finished": fin, "total": n, "last": last, "text": text}


def remaining_cost(e: Entry, runs=None, records: Path | None = None) -> float:
    """Estimated device-hours of the unfinished runs: of the whole sweep, or of ``runs`` (a --where part),
    at the entry's cost per run (a run with an archived record under ``records`` is not unfinished)."""
    if runs is not None:
        total = len(e.sweep.runs) or 1
        return e.cost_hours * sum(s != "finished" for s in _states(e, records, runs)) / total
    st = entry_status(e, records)
    return e.cost_hours * (st["total"] - st["finished"]) / st["total"] if st["total"] else e.cost_hours


def run_records(e: Entry, row: Row) -> list[dict]:
    """The result records of the row's runs (finished, parsed), with ``_dir`` and the side file's record."""
    from cl.train.results import result_problem

    side = _read_json(Path(e.out) / SIDE_FILE) or {}
    out = []
    for rid in row.run_ids:
        d = Path(e.out) / rid
        rec = _read_json(d / "result.json")
        if result_problem(rec, rid) is None:
            rec["_dir"] = str(d)
            rec["_mtime"] = (d / "result.json").stat().st_mtime
            rec["_side"] = side.get("runs", {}).get(rid) if isinstance(side.get("runs"), dict) else None
            out.append(rec)
    return out


def _git_commit() -> str:
    from cl.train.engine import code_commit  # lazy: torch is not needed to list or report entries

    return code_commit() or "unknown"


def _cpu_model() -> str:
    from cl.train.engine import cpu_model

    return cpu_model()


def record_side(e: Entry, run_ids: list[str], commit: str) -> None:
    """Record commit, host, CPU and date for runs finished now (result.json has its own commit and date since
    they were added to the result header; the side file also covers older result files)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    merge_side(e, {rid: {"commit": commit, "host": socket.gethostname(), "cpu": _cpu_model(), "date": now,
                         "entry": e.name} for rid in run_ids})


def side_of(e: Entry) -> dict:
    return _read_json(Path(e.out) / SIDE_FILE) or {}


def merge_side(e: Entry, records: dict) -> None:
    """Add {run id: side record} to the results folder's side file."""
    from cl.train.loggers import atomic_write_json

    path = Path(e.out) / SIDE_FILE
    side = side_of(e)
    runs = side.get("runs") if isinstance(side.get("runs"), dict) else {}
    runs.update(records)
    try:
        atomic_write_json(path, {"runs": runs})
    except OSError as err:
        print(f"warning: cannot write {path}: {err.strerror or err}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# the command


def cmd_list(args) -> int:
    entries = load_entries(args.entries, args.results)
    root = records_root(args.entries, args.records)
    hdr = f"{'entry':<34} {'hardware':<11} {'cost h':>7} {'results':>7}  status"
    print(hdr)
    print("-" * len(hdr))
    for e in entries:
        st = entry_status(e, root)
        print(f"{e.name:<34} {e.hardware:<11} {e.cost_hours:>7.1f} {len(e.rows):>7}  {st['text']}")
    total = sum(e.cost_hours for e in entries)
    print(f"{len(entries)} entries, {total:.1f} device-hours in all "
          f"({sum(1 for e in entries if not e.available)} with a strategy not available)")
    return 0


def select_entries(entries, only=None, names=None, budget=None, log=print, selected=None, records=None):
    """The entries to run: by hardware class, name and a budget of device-hours (remaining cost, in order).
    ``selected``: {entry name: its runs chosen by --where}; the budget then counts those runs' cost only."""
    chosen = [e for e in entries if (not only or e.hardware in only)]
    out, spent = [], 0.0
    for e in chosen:
        if not e.available:
            log(f"skip {e.name}: strategy not available ({', '.join(e.missing)})")
            continue
        cost = remaining_cost(e, (selected or {}).get(e.name), records)
        if budget is not None and spent + cost > budget + 1e-9:
            log(f"skip {e.name}: {cost:.2f} device-hours left to run, over the budget "
                f"({budget - spent:.2f} of {budget:.2f} left)")
            continue
        spent += cost
        out.append(e)
    return out, spent


def cmd_run(args) -> int:
    from cl.sweeps.executors import make_executor
    from cl.sweeps.runner import run_sweep
    from cl.sweeps.spec import select_runs
    from cl.sweeps.status import print_dry_run

    entries = load_entries(args.entries, args.results, names=args.entry or None)
    picks, unmatched = {}, []
    if args.where:  # a part of each entry's sweep (e.g. 3 of its 10 seeds); an entry with no match is skipped
        for e in entries:
            try:
                picks[e.name] = select_runs(e.sweep, args.where, "--where")
            except ConfigError as err:
                if not str(err).startswith("no run of sweep"):  # a malformed expression or an unknown key
                    raise
                unmatched.append(e.name)
        if unmatched:
            print(f"--where {' --where '.join(args.where)} matches no run of {len(unmatched)} entries: "
                  + ", ".join(unmatched))
        entries = [e for e in entries if e.name in picks]
    root = records_root(args.entries, args.records)
    todo, spent = select_entries(entries, args.only, args.entry, args.budget, selected=picks, records=root)
    if not todo:
        print("nothing to run")
        return 0
    print(f"{len(todo)} entries, {spent:.2f} device-hours (estimated) left to run: "
          + ", ".join(e.name for e in todo))
    if args.dry_run:
        for e in todo:
            part = f", {len(picks[e.name])} runs selected by --where" if e.name in picks else ""
            left = remaining_cost(e, picks.get(e.name), root)
            print(f"\nentry {e.name} ({e.hardware}, {e.cost_hours:g} h in all, {left:.2f} h left{part})")
            print_dry_run(e.sweep, only=picks.get(e.name), flag="--where")
        return 0
    commit = _git_commit()  # the code that runs (cl.train.engine.code_commit), not the entries' folder
    rc, done = 0, set()
    for e in todo:
        key = (e.sweep_path, e.out)
        if key in done:  # two entries on one sweep: run it once
            continue
        done.add(key)
        _restore(e, root)
        ex = dict(e.sweep.executor)
        ex.pop("threads", None)
        for k in ("workers", "address"):
            v = getattr(args, k)
            if v is not None:
                ex[k] = v
        kind = args.executor or ex.pop("kind", "local")
        ex.pop("kind", None)
        executor = make_executor(kind, plugins=list(e.sweep.plugins), **ex)
        print(f"\nentry {e.name}: sweep {e.sweep_path}")
        summary = run_sweep(e.sweep, executor, log=lambda s: print(s, flush=True), only=picks.get(e.name),
                            only_flag="--where")
        now = [rid for rid, s in summary["statuses"].items() if s == "finished"]
        if now:
            record_side(e, now, commit)
        _archive(e, root)
        if summary["failed"]:
            rc = 1
        from cl.sweeps.report import make_report

        try:
            make_report(e.out, wandb=False)
        except ConfigError as err:
            print(f"warning: no run report for {e.name}: {err}", file=sys.stderr)
    return rc


def _restore(e: Entry, root: Path) -> None:
    try:
        back = restore(e, root)
    except OSError as err:
        print(f"warning: cannot put the archived records of {e.name} back into {e.out}: {err.strerror or err}",
              file=sys.stderr)
        return
    if back:
        print(f"entry {e.name}: {len(back)} finished runs put back from {root / e.sweep.name}")


def _archive(e: Entry, root: Path) -> int:
    try:
        n = archive(e, root, side_of(e))
    except OSError as err:
        print(f"warning: cannot archive the records of {e.name} in {root}: {err.strerror or err}", file=sys.stderr)
        return 0
    if n:
        print(f"entry {e.name}: {n} records written to {root / e.sweep.name} (commit them: the board's evidence)")
    return n


def cmd_archive(args) -> int:
    entries = [e for e in load_entries(args.entries, args.results, names=args.entry or None) if e.available]
    root = records_root(args.entries, args.records)
    n = sum(_archive(e, root) for e in entries)
    print(f"{n} records written or updated under {root}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("reproduce", help="the reproduction board: published results, re-run and compared",
                       description="Entries in runs/reproduce/*.yaml: published results and the sweeps that "
                                   "reproduce them (docs/reproducing.md).")
    ps = p.add_subparsers(dest="action", required=True)

    def common(q):
        q.add_argument("--entries", default="runs/reproduce", help="folder of entry files (default runs/reproduce)")
        q.add_argument("--results", help="results root: each entry's sweep writes to RESULTS/<sweep name> "
                                         "(default: the sweep file's own `out`, results/<name>)")
        q.add_argument("--records", help="folder of the archived result records, committed with the entries "
                                         "(default ENTRIES/records)")

    q = ps.add_parser("list", help="the entries with hardware class, cost and status")
    common(q)
    q.set_defaults(func=cmd_list)
    q = ps.add_parser("run", help="run entries' sweeps (finished runs skipped, interrupted ones resumed)")
    common(q)
    q.add_argument("--only", action="append", choices=HARDWARE, help="hardware classes to run (repeatable)")
    q.add_argument("--entry", action="append", metavar="NAME", help="entry to run (repeatable; default all)")
    q.add_argument("--budget", type=float, metavar="HOURS",
                   help="run entries in order while their estimated remaining device-hours fit")
    q.add_argument("--workers", "-j", type=int, help="local worker processes (as in cl sweep)")
    q.add_argument("--executor", "-e", choices=("local", "ray"))
    q.add_argument("--address", help="ray: address of an existing cluster")
    q.add_argument("--where", action="append", default=[], metavar="KEY=V[,V...]",
                   help="run only the runs of each entry's sweep whose KEY is one of the values (as cl sweep --only: "
                        "seed=0,1,2, strategy.buffer_size=200); repeat to combine; the board counts the seeds that ran")
    q.add_argument("--dry-run", "-n", action="store_true", help="print what would run, run nothing")
    q.set_defaults(func=cmd_run)
    q = ps.add_parser("archive", help="copy the entries' finished results to the records folder (to commit)")
    common(q)
    q.add_argument("--entry", action="append", metavar="NAME", help="entry to archive (repeatable; default all)")
    q.set_defaults(func=cmd_archive)
    q = ps.add_parser("report", help="write the board (docs/reproduction.md) and its PNG from the result files")
    common(q)
    q.add_argument("--out", "-o", default="docs/reproduction.md", help="board file (default docs/reproduction.md)")
    q.add_argument("--no-run-reports", action="store_true", help="do not (re)write each run folder's report")
    q.set_defaults(func=cmd_board)


def cmd_board(args) -> int:
    from cl.sweeps.reproduce_board import write_board

    entries = load_entries(args.entries, args.results)
    root = records_root(args.entries, args.records)
    for e in entries:
        if e.available:
            _restore(e, root)
    got = write_board(entries, args.out, run_reports=not args.no_run_reports, records=root)
    print(f"board: {got['path']} ({len(got['rows'])} results, {got['counts']}); plot: {got['png']}")
    return 0

