"""Tests written from the mutation run of strategies/xder.py (issue 19): the defaults and their source, the
logit-update rule at a tie, the step's objective as the sum of its terms (present CE, alpha MSE, beta CE on the
past classes, future and past constraints over the samples where they are positive), the training-time update
probability 1 / count, the class-balanced memory and the checkpointed state, each on a constructed case."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.core.streams import Experience
from strategies.xder import XDERConfig, past_constraint, update_logits

from test_baselines_replay import build


def _exp(i, classes, y):
    return Experience(torch.zeros(len(y), 3), y, torch.zeros(1, 3), torch.zeros(1), classes, i, i)


def test_validation_bounds():
    build("xder", buffer_size=0, replay_batch_size=1, eta=0.0, gamma=1.0)  # the smallest / largest valid values
    build("xder", gamma=1e-3)
    for bad in ({"buffer_size": -1}, {"replay_batch_size": 0}, {"buffer_size": -1, "replay_batch_size": 0}):
        with pytest.raises(ConfigError, match="buffer_size must be >= 0 and strategy.replay_batch_size >= 1"):
            build("xder", **bad)
    for bad in ({"eta": -0.1}, {"gamma": 0.0}, {"gamma": 1.01}, {"eta": -1.0, "gamma": 2.0}):
        with pytest.raises(ConfigError, match=r"eta must be >= 0 and strategy.gamma in \(0, 1\]"):
            build("xder", **bad)
