"""Run configuration: nested dicts resolved against typed dataclasses.

A run config has four named sections, each ``{"name": ..., <fields>}``, plus a
few run-level keys::

    strategy: {name: er, buffer_size: 500, lr: 0.1}
    scenario: {name: split-mnist, n_tasks: 5}
    backbone: {name: mlp, hidden: 256}
    protocol: {name: offline, epochs: 1, batch_size: 32}
    seed: 0
    device: auto

``resolve`` fills every default, checks every key and returns a plain dict
(the *resolved config*), from which the run id is derived.
"""
from __future__ import annotations

import copy
import hashlib
import json
import typing
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any

import yaml

from cl.core.registry import ConfigError, backbones, scenarios, strategies, unknown

RUN_KEYS = {"seed": 0, "device": "auto", "out": "results", "wandb": "auto", "project": "cl",
            "group": None, "tags": [], "name": None}
SECTIONS = ("strategy", "scenario", "backbone", "protocol")
#: the registry that names each plugin section's choices (the protocol section has a fixed set, PROTOCOLS)
SECTION_REGISTRIES = {"strategy": strategies, "scenario": scenarios, "backbone": backbones}


def section_registry(section: str):
    """The registry of a plugin section (``strategy``, ``scenario``, ``backbone``); None for others."""
    return SECTION_REGISTRIES.get(section)


@dataclass
class ProtocolConfig:
    """How the engine consumes a scenario."""

    name: str = "offline"  # offline | online
    epochs: int = 1  # offline only
    batch_size: int = 0  # 0: 32 offline, 10 online
    eval_batch_size: int = 1000
    eval_every: int = 0  # online: anytime evaluation every k samples on the test data of the classes seen so far (0: off)
    eval_subsample: int = 0  # online: anytime evaluation on at most this many test samples per experience (0: all)
    window: int = 1000  # online: sliding-window size (samples) for windowed online accuracy
    near_future_shift: int = 0  # online: also predict the batch this many batches ahead, before learning (0: off)
    realtime: bool = False  # online: Ghunaim et al. real-time accounting (a step costing C batches skips batches)
    realtime_cost: float = 0.0  # online, realtime: known step cost C in stream intervals (0: measure it)
    realtime_reference: str = "er"  # online, realtime: the step that costs 1: er (SGD on batch + equal replay) | sgd
    log_every: int = 500  # online: samples between online-curve points and W&B logs (0: only at boundaries)
    graphs: bool = False  # online: capture the train/predict steps as CUDA graphs (static shapes; no-op on CPU)
    shuffle_within_experience: bool = True  # online: shuffle each experience's samples once (seeded)
    fwt: bool = False  # also evaluate the random-init model on every experience (FWT reference)
    eval_future: bool = False  # after each experience, also evaluate the experiences not trained yet (on with fwt);
    # otherwise R's upper triangle R[i][j], j > i, is not evaluated: None (null in result.json)
    amp: bool = True  # bf16 autocast on CUDA
    checkpoint: bool = True  # save a checkpoint at every experience boundary


PROTOCOLS = ("offline", "online")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert strings from the CLI to the field's declared type."""
    if isinstance(typ, str):
        typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ.split(" ")[0], Any)
    origin = typing.get_origin(typ)
    if typ is Any or value is None:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        return _coerce(value, args[0], where) if args else value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        (inner,) = typing.get_args(typ)[:1] or (Any,)
        return [_coerce(v, inner, where) for v in value]
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot read {value!r} as {getattr(typ, '__name__', typ)}") from None
    return value


def build_dataclass(cls, values: dict, where: str):
    """Instantiate a config dataclass, rejecting unknown keys with a close match."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            raise unknown(f"config key in {where}", k, names)
        kwargs[k] = _coerce(v, hints.get(k, Any), f"{where}.{k}")
    return cls(**kwargs)


def _section(value: Any, section: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"{section}: expected a name or a mapping, got {value!r}")


DEFAULTS = {"strategy": "finetune", "scenario": "split-mnist", "backbone": "mlp", "protocol": "offline"}


def resolve(raw: dict) -> dict:
    """Fill defaults, validate names and keys, return the resolved config dict."""
    raw = copy.deepcopy(raw or {})
    for k in raw:
        if k not in RUN_KEYS and k not in SECTIONS:
            raise unknown("config key", k, list(RUN_KEYS) + list(SECTIONS))
    out: dict[str, Any] = {}
    for section in SECTIONS:
        sec = _section(raw.get(section), section)
        name = str(sec.pop("name", DEFAULTS[section]))
        if section == "protocol":
            if name not in PROTOCOLS:
                raise unknown("protocol", name, PROTOCOLS)
            cfg = build_dataclass(ProtocolConfig, {**sec, "name": name}, "protocol")
            if cfg.batch_size == 0:
                cfg.batch_size = 10 if name == "online" else 32
            out[section] = asdict(cfg)
            continue
        entry = SECTION_REGISTRIES[section].get(name)
        cfg_cls = entry.config
        if cfg_cls is None:
            if sec:
                raise unknown(f"config key in {section} {name!r}", next(iter(sec)), [])
            out[section] = {"name": name}
        else:
            cfg = build_dataclass(cfg_cls, sec, f"{section} {name!r}")
            out[section] = {"name": name, **asdict(cfg)}
    for k, default in RUN_KEYS.items():
        out[k] = copy.deepcopy(raw.get(k, default))
    out["seed"] = _coerce(out["seed"], int, "seed")
    return out


def section_config(resolved: dict, section: str):
    """The typed dataclass instance of one section of a resolved config."""
    sec = dict(resolved[section])
    name = sec.pop("name")
    if section == "protocol":
        return ProtocolConfig(name=name, **sec)
    cls = SECTION_REGISTRIES[section].get(name).config
    return build_dataclass(cls, sec, f"{section} {name!r}") if cls else None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set key=value`` overrides. Keys are ``section.field``, a run key,
    or a bare field name that belongs to exactly one section."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in RUN_KEYS:
            raw[key] = yaml.safe_load(value) if key in ("tags",) else value
            continue
        if "." in key:
            section, fld = key.split(".", 1)
            if section not in SECTIONS:
                raise unknown("config section", section, SECTIONS)
        elif key in SECTIONS:
            sec = _section(raw.get(key), key)
            sec["name"] = value
            raw[key] = sec
            continue
        else:
            # bare field: find the sections that have it
            probe = resolve(raw)
            owners = [s for s in SECTIONS if key in probe[s] and key != "name"]
            if len(owners) != 1:
                valid = sorted({f"{s}.{f}" for s in SECTIONS for f in probe[s] if f != "name"} | set(RUN_KEYS))
                if not owners:
                    raise unknown("config key", key, valid)
                raise ConfigError(f"config key {key!r} is ambiguous: use one of {', '.join(o + '.' + key for o in owners)}")
            section, fld = owners[0], key
        sec = _section(raw.get(section), section)
        sec[fld] = value
        raw[section] = sec
    return raw


def load_yaml(path: str) -> dict:
    """Read a YAML run file; errors name the file."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"run file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


ID_EXCLUDE = ("out", "wandb", "project", "group", "tags", "name", "device")


def run_id(resolved: dict) -> str:
    """Stable id of a resolved config: strategy-scenario-seed-<hash of everything that changes results>."""
    key = {k: v for k, v in resolved.items() if k not in ID_EXCLUDE}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))  # noqa: E731
    return f"{safe(resolved['strategy']['name'])}-{safe(resolved['scenario']['name'])}-s{resolved['seed']}-{digest}"


def is_config(obj) -> bool:
    return is_dataclass(obj) and not isinstance(obj, type)
