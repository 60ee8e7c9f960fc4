"""Public import path of the replay buffers (the code lives in :mod:`cl.models.buffers`)."""
from cl.models.buffers import *  # noqa: F401,F403
