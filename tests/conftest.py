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

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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
