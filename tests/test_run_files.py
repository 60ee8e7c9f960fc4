"""Every YAML file under runs/ is valid: sweep files load (every run's strategy, scenario, backbone and
protocol fields resolved and checked, as `cl sweep --dry-run` does) and single-run files resolve (as
`cl run -c` does).  A misspelt field in a shipped file fails here, not hours into a user's sweep."""
from __future__ import annotations

from pathlib import Path

import pytest

from cl.core.config import load_yaml, resolve
from cl.sweeps.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "runs").glob("*.yaml"), *(ROOT / "runs" / "paper").glob("*.yaml")])


def test_the_runs_folder_has_files():
    assert len(FILES) > 20 and "runs/baselines-ptm-clinc150-minilm.yaml" in FILES


@pytest.mark.parametrize("path", FILES)
def test_run_file_is_valid(path):
    raw = load_yaml(str(ROOT / path))
    if "grid" in raw or "base" in raw:
        sw = load_sweep(str(ROOT / path))
        assert sw.runs, f"{path} expands to no run"
    else:
        cfg = resolve(raw)
        assert cfg["strategy"]["name"]


def test_a_misspelt_field_in_a_sweep_file_names_file_line_and_choices(tmp_path):
    text = (ROOT / "runs" / "baselines-ptm-clinc150-minilm.yaml").read_text()
    assert "lae: {freeze_epochs: 1}" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("lae: {freeze_epochs: 1}", "lae: {freeze_epoch: 1}"))
    with pytest.raises(Exception) as e:
        load_sweep(str(bad))
    msg = str(e.value)
    assert "bad.yaml:" in msg and "freeze_epoch" in msg and "freeze_epochs" in msg


@pytest.mark.parametrize("loader", ["run", "sweep"])
def test_a_python_tag_in_a_run_or_sweep_file_is_refused_and_never_executed(tmp_path, loader):
    """Run files load with a SafeLoader subclass (cl.core.config.UniqueKeyLoader), sweep files with a SafeLoader
    (cl.sweeps.yaml_lines): a python/* tag is an error naming the file, and the code it names does not run."""
    from cl.core.registry import ConfigError

    marker = tmp_path / "ran"
    f = tmp_path / "evil.yaml"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    f.write_text(f"strategy: {tag}\n" if loader == "run" else f"name: x\nbase:\n  strategy: {tag}\ngrid: {{seed: [0]}}\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml.*python/object/apply"):
        load_yaml(str(f)) if loader == "run" else load_sweep(str(f))
    assert not marker.exists()
