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
import math
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any

import yaml

from cl.core.registry import ConfigError, backbones, scenarios, strategies, unknown

RUN_KEYS = {"seed": 0, "device": "auto", "out": "results", "wandb": "auto", "project": "cl",
            "group": None, "tags": [], "name": None,
            # torch intra-op threads of the run: part of the run id, because a CPU result depends on it
            # (the same id gives bitwise the same R whatever the executor and the number of workers)
            "threads": 1}
#: set by resolve, never by the user: the code identity of non-built-in strategies/scenarios/backbones
CODE_KEY = "code"
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
    epochs: int = field(default=1, metadata={"min": 1})  # offline only
    batch_size: int = field(default=0, metadata={"min": 1})  # 0: 32 offline, 10 online
    eval_batch_size: int = field(default=1000, metadata={"min": 1})
    eval_every: int = 0  # online: anytime evaluation every k samples on the test data of the classes seen so far (0: off)
    eval_subsample: int = 0  # online: anytime evaluation on at most this many test samples per experience (0: all)
    window: int = field(default=1000, metadata={"min": 1})  # online: sliding-window size (samples) for windowed online accuracy
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
    eval_amp: bool = False  # bf16 autocast for evaluation on a CPU (fast with AMX/AVX512-BF16); CUDA: `amp` covers it
    checkpoint: bool = True  # save a checkpoint at every experience boundary


PROTOCOLS = ("offline", "online")


# -- validation of every value ----------------------------------------------------------------------
# Every field of every config dataclass is checked when a config is resolved (``validate_dataclass``):
#   floats finite and >= 0, ints >= 0, learning rates (``lr``, ``*_lr``) > 0, fractions (``*_fraction``,
#   ``*_share``, ``dropout``, ``*_dropout``, ``p``) <= 1. A field declares other bounds with
#   ``dataclasses.field(default=..., metadata={"min": a, "max": b, "min_exclusive": True, "finite": False})``
#   (metadata={"bounds": None} turns the checks off). A default outside the bounds is a sentinel (0 = auto)
#   and stays valid.
_FRACTION = re.compile(r"(^|_)(fraction|share|dropout)$|^p$")


def _bounds(f, value) -> dict:
    md = dict(f.metadata or {})
    if "bounds" in md and md["bounds"] is None:
        return {}
    b: dict = {}
    if isinstance(value, float):
        b = {"min": 0.0, "finite": True}
        if f.name == "lr" or f.name.endswith("_lr"):
            b["min_exclusive"] = True
        if _FRACTION.search(f.name):
            b["max"] = 1.0
    elif isinstance(value, int) and not isinstance(value, bool):
        b = {"min": 0}
    b.update(md)
    return b


def _describe(b: dict, default=None) -> str:
    lo, hi = b.get("min"), b.get("max")
    parts = []
    if lo is not None:
        parts.append(f"{'>' if b.get('min_exclusive') else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    if b.get("finite"):
        parts.append("finite")
    out = ", ".join(parts) or "any"
    return out + (f" (or {default!r}, the default)" if default is not None else "")


def check_value(where: str, value, b: dict, default=None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not b:
        return
    bad = False
    if b.get("finite", isinstance(value, float)) and isinstance(value, float) and not math.isfinite(value):
        bad = True
    lo, hi = b.get("min"), b.get("max")
    if lo is not None and (value < lo or (b.get("min_exclusive") and value == lo)):
        bad = True
    if hi is not None and value > hi:
        bad = True
    if bad:
        raise ConfigError(f"{where}={value!r} is out of range: valid values are {_describe(b, default)}")


def _in_bounds(value, b: dict) -> bool:
    try:
        check_value("x", value, b)
        return True
    except ConfigError:
        return False


def validate_dataclass(obj, where: str) -> None:
    """Check every numeric field (and the numbers in list fields) of a config dataclass instance."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not MISSING else None
        numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if numeric_default and v == default:
                continue  # a declared default is valid (sentinels such as 0 = auto)
            b = _bounds(f, v)
            if not _in_bounds(v, b):
                sentinel = default if numeric_default and not _in_bounds(default, b) else None
                raise ConfigError(f"{where}: {f.name}={v!r} is out of range: valid values are "
                                  f"{_describe(b, sentinel)}")
    hook = getattr(obj, "validate", None)  # optional per-config cross-field checks, raising ConfigError
    if callable(hook):
        hook()


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name, available: bool = False) -> None:
    """A device name the platform knows; with ``available``, also one that this machine has."""
    if name in (None, "auto"):
        return
    if not isinstance(name, str) or not DEVICE_RE.match(name):
        raise ConfigError(f"device={name!r} is not a device: valid values are auto, cpu, cuda, cuda:<index>, mps")
    if not available:
        return
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r}, but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}, torch.cuda.is_available() is False): "
                              f"use --device cpu or auto")
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(valid: cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device='mps', but MPS is not available on this machine: use --device cpu or auto")


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
    obj = cls(**kwargs)
    validate_dataclass(obj, where)
    return obj


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
    raw.pop(CODE_KEY, None)  # recomputed below from the code that is loaded now, never taken from a file
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
            check_value("protocol.batch_size", cfg.batch_size, {"min": 1})
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
    out["threads"] = _coerce(out["threads"], int, "threads")
    check_value("threads", out["threads"], {"min": 1})
    check_device(out["device"])
    code = {}
    for section in ("strategy", "scenario", "backbone"):
        reg = {"strategy": strategies, "scenario": scenarios, "backbone": backbones}[section]
        ident = reg.get(out[section]["name"]).identity()
        if ident is not None:
            code[section] = ident
    if code:
        out[CODE_KEY] = code
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


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader for which a key given twice in one mapping is an error (``FILE:LINE``), not "last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for k_node, _ in node.value:
            if isinstance(k_node, yaml.ScalarNode) and k_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(k_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}, again at line "
                                f"{k_node.start_mark.line + 1})", k_node.start_mark)
            seen[key] = k_node.start_mark.line
        return super().construct_mapping(node, deep)


def duplicate_key_error(path: str, e) -> ConfigError | None:
    """``FILE:LINE: duplicate key ...`` for a UniqueKeyLoader error, else None."""
    if isinstance(e, yaml.constructor.ConstructorError) and "duplicate key" in str(e.problem or ""):
        return ConfigError(f"{path}:{e.problem_mark.line + 1}: {e.problem}")
    return None


def load_yaml(path: str) -> dict:
    """Read a YAML run file; errors name the file (and the line of a duplicate key)."""
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"run file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise (duplicate_key_error(path, e) or ConfigError(f"{path}: invalid YAML: {e}")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


ID_EXCLUDE = ("out", "wandb", "project", "group", "tags", "name", "device")
#: keys hashed only when they differ from these values, so that the ids of runs made before the keys
#: existed (one thread, built-in code) stay the same
ID_IMPLICIT = {"threads": 1, CODE_KEY: None}
#: section fields hashed only when they differ from these values (fields added after runs were made)
ID_IMPLICIT_FIELDS = {"protocol": {"eval_amp": False},  # fields added later, at their defaults: the run ids stay
                      "strategy": {"prompt_lr": None, "head_tau": None, "mask_unseen": True,  # as they were
                                   "cutmix_prob": 0.0, "cutmix_alpha": 1.0, "fit_clip": None,
                                   "exclude_current": False, "project_from": None},
                      "scenario": {"mean": None, "std": None}}


def run_id(resolved: dict) -> str:
    """Stable id of a resolved config: strategy-scenario-seed-<hash of everything that changes results>:
    every section, the seed, the thread count and the code identity of non-built-in strategies, scenarios
    and backbones (``resolve`` puts it under ``code``); not the output folder, W&B settings or device."""
    key = {k: v for k, v in resolved.items()
           if k not in ID_EXCLUDE and not (k in ID_IMPLICIT and v == ID_IMPLICIT[k])}
    for sec, implicit in ID_IMPLICIT_FIELDS.items():
        if isinstance(key.get(sec), dict):
            key[sec] = {f: v for f, v in key[sec].items() if not (f in implicit and v == implicit[f])}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))  # noqa: E731
    return f"{safe(resolved['strategy']['name'])}-{safe(resolved['scenario']['name'])}-s{resolved['seed']}-{digest}"


def is_config(obj) -> bool:
    return is_dataclass(obj) and not isinstance(obj, type)
