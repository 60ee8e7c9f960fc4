"""Settings that only fail when a run is set up, checked for every sweep file before hours of CPU are spent on it.

``strategy.mask_unseen: false`` (an unmasked head, as the authors' code of several online-CL papers) is refused
at setup by a strategy that scores classes with a head of its own (``cl.models.model.check_mask_unseen``): a
sweep that sets it in its ``base`` for every strategy fails those runs only when they start.  Each strategy
that a committed sweep runs with ``mask_unseen: false`` is set up here with its section of that sweep, on a
tiny image scenario."""
from __future__ import annotations

import pytest

from cl.core.config import load_yaml, resolve
from cl.sweeps.spec import load_sweep
from cl.train.engine import Run
from conftest import tiny
from test_records_match_sweeps import ROOT, SWEEP_FILES


def _unmasked_sections() -> dict:
    """(sweep file, strategy name) -> that strategy's section in the sweep's first such run."""
    out = {}
    for f in sorted(SWEEP_FILES):
        raw = load_yaml(str(f))
        if "grid" not in raw and "base" not in raw:
            continue
        for r in load_sweep(str(f)).runs:
            s = r.config["strategy"]
            if s.get("mask_unseen") is False:
                out.setdefault((f.relative_to(ROOT).as_posix(), s["name"]), dict(s))
    return out


UNMASKED = _unmasked_sections()


def test_some_sweeps_run_unmasked_heads():
    assert {"er", "mir", "agem"} <= {name for _, name in UNMASKED}


@pytest.mark.parametrize("key", sorted(UNMASKED), ids=lambda k: f"{k[0]}:{k[1]}")
def test_each_strategy_a_sweep_runs_unmasked_sets_up(key, tmp_path):
    section = {k: v for k, v in UNMASKED[key].items() if k != "buffer_size"}
    raw = tiny({**section, "buffer_size": 20}, scenario={"name": "split-digits"},
               backbone={"name": "resnet18r", "nf": 4}, protocol={"name": "online", "batch_size": 10})
    Run(resolve(raw), progress=False, out_dir=tmp_path / "r").setup()
