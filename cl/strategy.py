"""Public import path of the strategy protocol (the code lives in :mod:`cl.core.strategy`)."""
from cl.core.strategy import *  # noqa: F401,F403
from cl.core.strategy import RunInfo, Strategy, StrategyConfig, make_optimizer, register  # noqa: F401
