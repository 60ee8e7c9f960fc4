"""The layout the code assumes: the project root it computes is the real one (a file move once broke it, and
every test that reads ../shared/data then skipped silently)."""
from pathlib import Path

from cl.data.cache import PROJECT_ROOT, shared_data_dir

ROOT = Path(__file__).resolve().parents[1]


def test_project_root_is_the_repository_root():
    assert PROJECT_ROOT == ROOT
    assert (PROJECT_ROOT / "pyproject.toml").is_file()
    assert shared_data_dir() == ROOT.parent / "shared" / "data"
