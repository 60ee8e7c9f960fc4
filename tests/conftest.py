import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402




def needs_shared(*names):
    """Skip a test when the shared data folder (``../shared/data``) lacks these files (CI has them)."""
    from cl.data.cache import shared_data_dir

    missing = [n for n in names if not (shared_data_dir() / n).exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data missing: {', '.join(missing)}")


def tiny(strategy="finetune", scenario="gaussian", backbone="mlp", protocol="offline", **kw):
    """A raw config for a run that takes well under a second."""
    raw = {"strategy": strategy if isinstance(strategy, dict) else {"name": strategy},
           "scenario": scenario if isinstance(scenario, dict) else {"name": scenario},
           "backbone": backbone if isinstance(backbone, dict) else {"name": backbone, **({"hidden": 32} if backbone == "mlp" else {})},
           "protocol": protocol if isinstance(protocol, dict) else {"name": protocol},
           "wandb": "off"}
    raw.update(kw)
    return raw


@pytest.fixture
def tiny_cfg():
    return tiny


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: the models here are tiny, and on a 2-core machine that is shared
    (CI, a sweep running beside the tests) two OpenMP threads can be 10x slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def restore_registry():
    """Strategies registered by a test (plugin files) do not leak into other test modules."""
    from cl.core.registry import strategies

    strategies.names()  # load the built-in ones first
    before = dict(strategies.entries)
    yield
    strategies.entries.clear()
    strategies.entries.update(before)
