"""Named registries for strategies, scenarios and backbones, with helpful errors.

A registry maps a name to an entry (a class or a builder function) plus a typed
config dataclass and a one-line description.  Third-party code registers with
the same decorators or through the ``cl.strategies`` / ``cl.scenarios`` /
``cl.backbones`` entry-point groups; nothing in the project has to be edited.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable


class ConfigError(ValueError):
    """A bad name, key or value in a run or sweep configuration."""


def unknown(kind: str, value: Any, choices) -> ConfigError:
    """Error naming the bad value, the closest match and every valid choice."""
    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {value!r}.{hint} Valid choices: {', '.join(choices)}")


@dataclass
class Entry:
    name: str
    obj: Any
    config: type | None
    description: str


@dataclass
class Registry:
    kind: str  # "strategy", "scenario", "backbone"
    group: str  # entry point group
    entries: dict[str, Entry] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # module -> import error
    _loaded: bool = False

    def register(self, name: str, config: type | None = None, description: str | None = None) -> Callable:
        def deco(obj):
            cfg = config if config is not None else getattr(obj, "Config", None)
            desc = description or (obj.__doc__ or "").strip().split("\n")[0]
            self.entries[name] = Entry(name, obj, cfg, desc)
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = {"strategy": "strategies", "scenario": "scenarios", "backbone": "cl.models.backbones"}[self.kind]
        mod = importlib.import_module(pkg)
        if hasattr(mod, "__path__"):
            for p in sorted(Path(mod.__path__[0]).glob("*.py")):
                if not p.name.startswith("_"):
                    try:
                        importlib.import_module(f"{pkg}.{p.stem}")
                    except Exception as e:  # one broken module must not hide the others
                        self.broken[f"{pkg}.{p.stem}"] = f"{type(e).__name__}: {e}"
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group=self.group):
                try:
                    ep.load()
                except Exception as e:  # a broken third-party plugin must not break the platform
                    self.broken[f"entry point {ep.name}"] = f"{type(e).__name__}: {e}"
        except Exception:  # pragma: no cover - very old importlib
            pass

    def names(self) -> list[str]:
        self._load()
        return sorted(self.entries)

    def get(self, name: str) -> Entry:
        self._load()
        if name in self.entries:
            return self.entries[name]
        # prefix families such as "timm:<model>" or "split-cifar10/5"
        for key, e in self.entries.items():
            if key.endswith("*") and name.startswith(key[:-1]):
                return e
        err = unknown(self.kind, name, self.entries)
        if self.broken:
            err = ConfigError(f"{err} (could not import: " +
                              "; ".join(f"{m}: {e}" for m, e in self.broken.items()) + ")")
        raise err


strategies = Registry("strategy", "cl.strategies")
scenarios = Registry("scenario", "cl.scenarios")
backbones = Registry("backbone", "cl.backbones")


def load_plugin_file(path: str | Path) -> None:
    """Import a user's Python file so that its ``@register`` decorators run."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"plugin file {str(path)!r} does not exist")
    name = f"cl_user_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def config_fields(cfg_cls) -> list[tuple[str, Any, str]]:
    """(name, default, type) of each field of a config dataclass."""
    if cfg_cls is None or not is_dataclass(cfg_cls):
        return []
    inst = cfg_cls()
    return [(f.name, getattr(inst, f.name), str(f.type)) for f in fields(cfg_cls)]
