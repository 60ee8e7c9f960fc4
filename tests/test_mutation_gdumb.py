"""Tests written from the mutation run of strategies/gdumb.py (issue 19): defaults, validation bounds, the
task-free declaration, and how many samples of an experience the greedy memory is offered under each
protocol and boundary kind."""
from __future__ import annotations

import pytest
import torch

from cl.core.registry import ConfigError
from cl.core.streams import Experience, HiddenBoundary
from strategies.gdumb import GDumb, GDumbConfig

from test_baselines_replay import build


def test_defaults_are_the_papers():
    """GDumb (Prabhu et al. 2020) / its code: 256 epochs of SGDR, batch 32; 500 samples in total here."""
    c = GDumbConfig()
    assert (c.buffer_size, c.fit_epochs, c.fit_batch_size, c.max_lr, c.min_lr) == (500, 256, 32, 0.05, 5e-4)
    assert GDumb.runs_task_free()


def test_validation_bounds():
    build("gdumb", buffer_size=1, fit_epochs=0, fit_batch_size=1)  # the smallest valid values
    for bad in ({"buffer_size": 0}, {"fit_epochs": -1}, {"fit_batch_size": 0},
                {"buffer_size": 0, "fit_epochs": 5}, {"fit_epochs": -1, "fit_batch_size": 4}):
        with pytest.raises(ConfigError, match="gdumb needs strategy.buffer_size >= 1, fit_epochs >= 0"):
            build("gdumb", **{"buffer_size": 4, "fit_epochs": 1, "fit_batch_size": 2, **bad})


def _exp(n):
    x, y = torch.randn(n, 3), torch.arange(n) % 2
    return Experience(x, y, x, y, [0, 1], 0, 0)


@pytest.mark.parametrize("protocol,boundaries,offered", [("offline", "visible", 5), ("online", "visible", None),
                                                         ("offline", "hidden", None), ("online", "hidden", None)])
def test_samples_offered_per_experience(protocol, boundaries, offered):
    """Offline with visible boundaries: each sample once (the first pass); online, or a task-free stream
    (whose size the strategy may not read): every sample it is shown."""
    s = build("gdumb", buffer_size=50, fit_epochs=0)
    s.info.protocol, s.info.boundaries = protocol, boundaries
    e = _exp(5)
    s.before_experience(e if boundaries == "visible" else HiddenBoundary(0, boundaries))
    assert s.to_offer == (offered if offered is not None else float("inf"))
    s.train_step(e.train_x[:4], e.train_y[:4])
    s.train_step(e.train_x[4:], e.train_y[4:])  # the one sample left of the first pass is offered too
    s.train_step(e.train_x[:4], e.train_y[:4])  # a second pass
    assert len(s.buffer.items()["y"]) == (5 if offered else 9)


def test_unused_stream_optimiser_settings_draw_a_warning_naming_them():
    """GDumb takes no step on the stream: an lr / optimiser set for it (a sweep's base) is named in one
    warning with the retraining fields that apply; at the defaults nothing is said."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("gdumb", buffer_size=4, fit_epochs=0)
    with pytest.warns(RuntimeWarning, match=r"gdumb: strategy.lr=0.05, strategy.momentum=0.9 not used: .*"
                                            r"strategy.max_lr, min_lr, fit_momentum, fit_weight_decay"):
        build("gdumb", buffer_size=4, fit_epochs=0, lr=0.05, momentum=0.9)
    with pytest.warns(RuntimeWarning, match=r"strategy.optimizer='adam', strategy.weight_decay=0.001 not used"):
        build("gdumb", buffer_size=4, fit_epochs=0, optimizer="adam", weight_decay=1e-3)
