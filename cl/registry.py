"""Public import path of the registries (the code lives in :mod:`cl.core.registry`)."""
from cl.core.registry import *  # noqa: F401,F403
from cl.core.registry import ConfigError, Registry, backbones, config_fields, load_plugin_file, scenarios, strategies, unknown  # noqa: F401
