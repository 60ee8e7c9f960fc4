"""Tests written from the mutation run of strategies/_boundaries.py (issue 19): the name a strategy is
reported under, and that ``require_boundaries`` passes on visible boundaries and refuses each task-free kind
with a message naming the strategy, the reason, the value and the way out."""
from __future__ import annotations

import types

import pytest

from cl.core.registry import ConfigError
from cl.data.settings import BOUNDARIES
from strategies._boundaries import registered_name, require_boundaries
from strategies.center_loss import CenterLoss
from strategies.finetune import Finetune
from strategies.kalman import Kalman, KalmanFinetune


def _bare(cls, boundaries="visible"):
    s = cls.__new__(cls)  # only the type and info matter here
    s.info = types.SimpleNamespace(boundaries=boundaries)
    return s


def test_registered_name_is_the_registry_name_not_the_class_name():
    assert registered_name(_bare(Finetune)) == "finetune"
    assert registered_name(_bare(CenterLoss)) == "center-loss"
    assert registered_name(_bare(KalmanFinetune)) == "kalman-ft"  # a subclass is its own entry, not its base's
    assert registered_name(_bare(Kalman)) == "kalman"

    class Unregistered(Finetune):
        pass

    assert registered_name(_bare(Unregistered)) == "Unregistered"  # not the base class's name


def test_require_boundaries_passes_on_visible_boundaries_only():
    assert set(BOUNDARIES) == {"visible", "hidden", "blurry", "gradual"}
    require_boundaries(_bare(CenterLoss, "visible"), "a reason")  # no error
    for kind in ("hidden", "blurry", "gradual"):
        with pytest.raises(ConfigError) as e:
            require_boundaries(_bare(CenterLoss, kind), "it freezes centres", "; or strategy.freeze=false")
        assert str(e.value) == (f"strategy 'center-loss' needs experience boundaries (it freezes centres), got "
                                f"scenario.boundaries={kind!r}; valid choice: scenario.boundaries=visible; "
                                f"or strategy.freeze=false")
    with pytest.raises(ConfigError, match=r"valid choice: scenario.boundaries=visible$"):
        require_boundaries(_bare(Finetune, "hidden"), "why")  # no alternative: nothing appended
