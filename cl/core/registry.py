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


BUILTIN_PACKAGES = ("strategies", "scenarios", "cl")  # modules of these packages are the platform's own code

#: modules the user named explicitly (``--plugin FILE.py`` / ``--plugin module``, a sweep file's ``plugins:``);
#: only these (and avalanche.benchmarks) may provide a scenario factory (scenarios/avalanche_adapter.py)
USER_MODULES: set[str] = set()


def _is_builtin(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in BUILTIN_PACKAGES


def code_identity(obj) -> str | None:
    """None for the platform's own code; else the defining module and a hash of its source file, so that a
    plugin's runs never share a run id with a built-in's, nor with an edited version of the same file."""
    import hashlib

    module = getattr(obj, "__module__", None)
    if _is_builtin(module):
        return None
    mod = sys.modules.get(module or "")
    path = getattr(mod, "__file__", None)
    digest = "nofile"
    if path:
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        except OSError:
            pass
    return f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}@{digest}"


@dataclass
class Entry:
    name: str
    obj: Any
    config: type | None
    description: str

    @property
    def module(self) -> str:
        return getattr(self.obj, "__module__", "?")

    @property
    def builtin(self) -> bool:
        return _is_builtin(self.module)

    def identity(self) -> str | None:
        return code_identity(self.obj)


def _same_code(a, b) -> bool:
    """The same object, or the same module and name re-executed (a plugin file imported twice)."""
    return a is b or (getattr(a, "__module__", 1) == getattr(b, "__module__", 2)
                      and getattr(a, "__qualname__", 1) == getattr(b, "__qualname__", 2))


@dataclass
class Registry:
    kind: str  # "strategy", "scenario", "backbone"
    group: str  # entry point group
    entries: dict[str, Entry] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # module -> import error
    conflicts: dict[str, str] = field(default_factory=dict)  # name -> why it is registered twice
    _loaded: bool = False
    _loading: bool = False

    def register(self, name: str, config: type | None = None, description: str | None = None,
                 override: bool = False) -> Callable:
        """Register ``obj`` under ``name``. A name that another object holds already is an error, unless
        ``override=True`` (then the new one replaces it, and its runs get their own run ids)."""
        def deco(obj):
            cfg = config if config is not None else getattr(obj, "Config", None)
            desc = description or (obj.__doc__ or "").strip().split("\n")[0]
            old = self.entries.get(name)
            if old is not None and not _same_code(old.obj, obj):
                if old.builtin is False and _is_builtin(getattr(obj, "__module__", None)) and self._loading:
                    # a user's object registered before the built-ins were imported: never let either win silently
                    if not getattr(old, "override", False):
                        self.conflicts[name] = (f"{self.kind} {name!r} is registered by {old.module} and by the "
                                                f"built-in {obj.__module__}; register({name!r}, override=True) "
                                                f"to replace the built-in, or choose another name")
                    return obj
                if not override:
                    raise ConfigError(f"{self.kind} {name!r} is already registered (by {old.module}); "
                                      f"register({name!r}, override=True) replaces it, or choose another name")
            entry = Entry(name, obj, cfg, desc)
            entry.override = override  # type: ignore[attr-defined]
            self.entries[name] = entry
            self.conflicts.pop(name, None)
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = self._loading = True
        try:
            self._load_modules()
        finally:
            self._loading = False

    def _load_modules(self) -> None:
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
        if name in self.conflicts:
            raise ConfigError(self.conflicts[name])
        if name in self.entries:
            return self.entries[name]
        # prefix families such as "timm:<model>" or "split-cifar10/5"
        for key, e in self.entries.items():
            if key.endswith("*") and name.startswith(key[:-1]):
                return e
        err = unknown(self.kind, name, self.entries)
        if self.kind == "strategy":
            err = ConfigError(f"{err}. A strategy in your own file: --plugin my_strategy.py (cl run / cl sweep), "
                              f"or plugins: [my_strategy.py] in a sweep file (README: 'your own strategy')")
        if self.broken:
            err = ConfigError(f"{err} (could not import: " +
                              "; ".join(f"{m}: {e}" for m, e in self.broken.items()) + ")")
        raise err


strategies = Registry("strategy", "cl.strategies")
scenarios = Registry("scenario", "cl.scenarios")
backbones = Registry("backbone", "cl.backbones")


def plugin_module_name(path: str | Path) -> str:
    return f"cl_user_plugin_{Path(path).stem}"


def load_plugin_file(path: str | Path) -> None:
    """Import a user's Python file (or an importable module name) so that its ``@register`` decorators run.
    The built-ins are loaded first, so that a plugin registering a name that exists is an error at once.
    Any failure of the file (syntax error, exception on import, a name clash) is a ConfigError naming it."""
    for reg in (strategies, scenarios, backbones):
        reg._load()
    spath = str(path)
    p = Path(path)
    if not p.is_file():
        if not spath.endswith(".py") and all(part.isidentifier() for part in spath.split(".")):
            try:
                importlib.import_module(spath)
            except ConfigError as e:
                raise ConfigError(f"plugin module {spath!r}: {e}") from None
            except Exception as e:
                raise ConfigError(f"plugin module {spath!r} failed to import: {type(e).__name__}: {e}") from None
            USER_MODULES.add(spath)
            return
        raise ConfigError(f"plugin file {spath!r} does not exist")
    name = plugin_module_name(p)
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise ConfigError(f"plugin file {spath}:{e.lineno}: syntax error: {e.msg}") from None
    except ConfigError as e:
        sys.modules.pop(name, None)
        raise ConfigError(f"plugin file {spath}: {e}") from None
    except BaseException as e:  # noqa: BLE001 - a plugin raising anything (even SystemExit) is the user's error
        if isinstance(e, KeyboardInterrupt):
            raise
        sys.modules.pop(name, None)
        import traceback

        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{f.filename}:{f.lineno}" for f in reversed(tb) if f.filename == str(p)), spath)
        raise ConfigError(f"plugin file {spath} raised on import at {where}: {type(e).__name__}: {e}") from None
    USER_MODULES.update({name, p.stem})


def config_fields(cfg_cls) -> list[tuple[str, Any, str]]:
    """(name, default, type) of each field of a config dataclass."""
    if cfg_cls is None or not is_dataclass(cfg_cls):
        return []
    inst = cfg_cls()
    return [(f.name, getattr(inst, f.name), str(f.type)) for f in fields(cfg_cls)]
