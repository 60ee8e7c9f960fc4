"""Public import path of the heads (the code lives in :mod:`cl.models.heads`)."""
from cl.models.heads import *  # noqa: F401,F403
