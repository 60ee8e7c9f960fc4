"""Every committed result record (``runs/records/<sweep>/`` and ``runs/reproduce/records/<sweep>/``) is a run of
its sweep as the sweep expands today.  A record is matched by its run id, a hash of the resolved config: a field
added to a strategy, scenario or protocol without being listed in ``cl.core.config.ID_IMPLICIT_FIELDS`` at its
default changes the ids of every run of that section, and the committed evidence silently stops counting (the
board shows "not run", a fresh results folder reruns hours of work).  Records kept on purpose for runs that no
longer exist live in a ``superseded/`` subfolder and are not checked."""
from __future__ import annotations

from pathlib import Path

import pytest

from cl.core.config import load_yaml
from cl.sweeps.reproduce_records import record_problem
from cl.sweeps.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = [*(ROOT / "runs").glob("*.yaml"), *(ROOT / "runs" / "paper").glob("*.yaml"),
               *(ROOT / "runs" / "reproduce" / "sweeps").glob("*.yaml")]
RECORD_DIRS = sorted(d for base in (ROOT / "runs" / "records", ROOT / "runs" / "reproduce" / "records")
                     if base.is_dir() for d in base.iterdir() if d.is_dir() and any(d.glob("*.json")))


def _sweeps_by_name() -> dict:
    out = {}
    for f in SWEEP_FILES:
        raw = load_yaml(str(f))
        if "grid" not in raw and "base" not in raw:  # a single run's config (`cl run FILE`), as test_run_files
            continue
        sw = load_sweep(str(f))
        out.setdefault(sw.name, []).append(sw)
    return out


@pytest.fixture(scope="module")
def sweeps():
    return _sweeps_by_name()


def test_there_are_records_to_check():
    assert len(RECORD_DIRS) >= 3  # runs/records/baselines2-online-cifar10 and the board's folders


@pytest.mark.parametrize("folder", RECORD_DIRS, ids=lambda d: f"{d.parent.parent.name}/{d.parent.name}/{d.name}")
def test_each_record_is_a_run_of_its_sweep_today(folder, sweeps):
    import json

    assert folder.name in sweeps, f"{folder}: no sweep file in runs/ is named {folder.name!r}"
    ids = {r.id for sw in sweeps[folder.name] for r in sw.runs}
    for rec in sorted(folder.glob("*.json")):
        why = record_problem(json.loads(rec.read_text()), rec.stem)  # the board's own check of a record
        assert why is None, f"{rec.relative_to(ROOT)}: {why}"
        assert rec.stem in ids, (f"{rec.relative_to(ROOT)} is no run of sweep {folder.name!r} any more: a config "
                                 f"field added without an entry in ID_IMPLICIT_FIELDS, or a changed sweep file "
                                 f"(move superseded records to {folder.name}/superseded/)")
