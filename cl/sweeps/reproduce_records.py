"""The board's evidence: committed copies of the result records behind every number on it.

A results folder (``results/<sweep name>/``) is scratch: it is not in git, a fresh machine or clone does not
have it, and a board regenerated without it would show every entry as ``not run``.  So ``cl reproduce run``
copies the record of each finished run (its ``result.json``, with the commit, host, CPU and date of the side
file under ``reproduce``) to ``<entries folder>/records/<sweep name>/<run id>.json``, a file small enough to
commit (a few KB), and ``cl reproduce run`` / ``report`` put the records back into the results folder of any
run that has no finished result there: the sweep then skips that run instead of recomputing it, and the board
and the run reports count it.  ``cl reproduce archive`` copies runs finished by a plain ``cl sweep``.  Any sweep
keeps the same evidence with ``cl sweep FILE --records DIR`` (records in ``DIR/<sweep name>/``: put back before
the sweep runs, written after it; the entry is then the sweep itself, with no side file).

A record is trusted only as far as it can be checked: it must parse as JSON (never code), be finished, carry
its accuracy matrix, name the run, and its ``config`` must hash to that run id (``cl.core.config.run_id``),
so that a record edited by hand, or made by another configuration, is refused with a one-line warning and
the run counts as not run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

RECORDS = "records"  # <entries folder>/records/<sweep name>/<run id>.json
SIDE_KEY = "reproduce"  # the side file's record of the run (commit, host, cpu, date, entry), kept in the copy


def records_root(entries_folder: str | Path, records: str | Path | None = None) -> Path:
    return Path(records) if records is not None else Path(entries_folder) / RECORDS


def _folder(root: Path, e) -> Path:
    return root / e.sweep.name


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_problem(rec, rid: str) -> str | None:
    """Why an archived record does not count as run ``rid``'s result (None: it does)."""
    from cl.core.config import run_id
    from cl.train.results import result_problem

    why = result_problem(rec, rid)
    if why is not None:
        return why
    try:
        got = run_id(rec["config"])
    except (KeyError, TypeError, AttributeError):
        return "no resolved config to check its run id against"
    if got != rid:
        return f"its config hashes to {got!r}, not to its run id (edited, or made by another configuration)"
    return _metrics_problem(rec)


CHECKED_METRICS = ("avg_acc", "avg_inc_acc", "forgetting")  # the board's numbers that R determines


def _metrics_problem(rec: dict) -> str | None:
    """The stored task metrics must be those of the stored accuracy matrix (a number edited by hand is not)."""
    from cl.core.metrics import summary

    try:
        want = summary(rec["R"])
    except (TypeError, ValueError, IndexError):
        return "its accuracy matrix R is not a matrix of accuracies"
    have = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    for k in CHECKED_METRICS:
        v = have.get(k)
        if v is not None and (not isinstance(v, (int, float)) or not abs(float(v) - float(want[k])) <= 1e-9):
            return f"its metric {k} = {v!r} is not that of its accuracy matrix ({want[k]!r})"
    return None


def archive(e, root: Path, side: dict | None = None) -> int:
    """Copy the finished results of entry ``e``'s sweep to ``root/<sweep name>/``; returns how many records
    were written or changed (an identical record is left as it is)."""
    from cl.train.loggers import atomic_write_json
    from cl.train.results import finished_result

    runs = (side or {}).get("runs") if isinstance((side or {}).get("runs"), dict) else {}
    n = 0
    for spec in e.sweep.runs:
        rec = finished_result(Path(e.out) / spec.id, spec.id, move=False)
        if rec is None or record_problem(rec, spec.id) is not None:
            continue
        rec = dict(rec)
        if spec.id in runs:
            rec[SIDE_KEY] = runs[spec.id]
        path = _folder(root, e) / f"{spec.id}.json"
        if _read(path) == json.loads(json.dumps(rec, allow_nan=True)):
            continue
        atomic_write_json(path, rec)
        n += 1
    return n


def archived(e, root: Path | None, ids) -> set[str]:
    """Those of the run ids ``ids`` (of ``e``'s sweep) with a valid archived record under ``root`` (read only:
    nothing is restored), so that ``cl reproduce list`` and the budget of ``cl reproduce run`` count them as run."""
    if root is None or not _folder(root, e).is_dir():
        return set()
    out = set()
    for rid in ids:
        path = _folder(root, e) / f"{rid}.json"
        if path.exists() and record_problem(_read(path), rid) is None:
            out.add(rid)
    return out


def restore(e, root: Path, log=None) -> list[str]:
    """Put the archived records of ``e``'s sweep back as ``result.json`` of each run that has no finished
    result in the results folder (and is not running elsewhere); returns the run ids restored."""
    from cl.sweeps.status import run_status
    from cl.train.loggers import atomic_write_json

    log = log or (lambda s: print(s, file=sys.stderr))
    folder = _folder(root, e)
    if not folder.is_dir():
        return []
    done, side = [], {}
    for spec in e.sweep.runs:
        path = folder / f"{spec.id}.json"
        if not path.exists() or run_status(e.out, spec.id) in ("finished", "running"):
            continue
        rec = _read(path)
        why = record_problem(rec, spec.id)
        if why is not None:
            log(f"warning: archived record {path} is not used: {why}")
            continue
        if isinstance(rec.get(SIDE_KEY), dict):
            side[spec.id] = rec[SIDE_KEY]
        atomic_write_json(Path(e.out) / spec.id / "result.json", {k: v for k, v in rec.items() if k != SIDE_KEY})
        done.append(spec.id)
    if side:
        from cl.sweeps.reproduce import merge_side

        merge_side(e, side)
    return done
