"""Sweeps: a YAML grid over strategies, scenarios, backbones, seeds and hyperparameters.

A sweep file (see ``docs/sweeps.md``)::

    name: quickstart                 # W&B group and default output folder results/<name>
    tags: [quickstart]
    base:                            # a run config shared by every run
      protocol: {name: offline, epochs: 1}
      backbone: {name: mlp, hidden: 256}
    grid:                            # the cartesian product of these axes
      strategy: [finetune, er, joint]
      scenario: [split-mnist, split-digits]
      seed: [0, 1, 2]
      strategy.lr: [0.1, 0.03]       # hyperparameter axes: section.field
    strategies:                      # per-strategy overrides (bare keys: strategy fields)
      er: {buffer_size: 200, grid: {replay_batch_size: [10, 32]}}
    scenarios:                       # per-scenario overrides (bare keys: scenario fields)
      split-mnist: {protocol.epochs: 2}
    exclude:
      - {strategy: joint, scenario: split-digits}

``expand`` turns it into resolved run configs; each run's id comes from its
resolved config (``cl.core.config.run_id``), so a rerun skips finished runs and
resumes interrupted ones.  Every error in the file names the file, the line and
the valid choices, and is raised before any run starts."""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, fields as dc_fields
from pathlib import Path
from typing import Any

from cl.core.config import PROTOCOLS, RUN_KEYS, SECTIONS, ProtocolConfig, apply_overrides, build_dataclass, resolve, \
    run_id, section_registry
from cl.core.registry import ConfigError, load_plugin_file, unknown
from cl.sweeps.yaml_lines import LDict, LList, SweepError, load_yaml_lines, plain

TOP_KEYS = ("name", "description", "group", "tags", "out", "paper", "base", "grid", "strategies", "scenarios",
            "exclude", "executor", "report", "plugins")
EXECUTOR_KEYS = ("kind", "workers", "threads", "address", "gpus_per_run", "cpus_per_run", "max_retries")
NAME_AXES = SECTIONS  # strategy, scenario, backbone, protocol: values are names or {name: ..., field: ...}
SWEEP_LEVEL_RUN_KEYS = ("out", "group", "tags")  # set by the sweep, not by base/grid




@dataclass
class RunSpec:
    """One expanded run: its id, resolved config and the axis values that made it."""

    id: str
    config: dict
    axes: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        c, a = self.config, self.axes
        extra = " ".join(f"{k}={v}" for k, v in a.items() if k not in ("strategy", "scenario", "seed"))
        return (f"{a.get('strategy', c['strategy']['name'])} / {a.get('scenario', c['scenario']['name'])} / "
                f"seed {c['seed']}" + (f" / {extra}" if extra else ""))


def _axis_label(v) -> str:
    """A name axis value: 'er', or 'split-cifar100(n_tasks=1)' for a mapping."""
    if not isinstance(v, dict):
        return str(v)
    rest = ",".join(f"{k}={plain(x)}" for k, x in v.items() if k != "name")
    return f"{v.get('name')}({rest})" if rest else str(v.get("name"))


@dataclass
class Sweep:
    path: str
    name: str
    group: str
    tags: list
    out: str
    runs: list[RunSpec]
    executor: dict = field(default_factory=dict)
    report: bool = True
    paper: Any = None
    description: str = ""
    plugins: list = field(default_factory=list)  # the file's plugins: (paths relative to the file, resolved)
    merged: int = 0  # expanded combinations that collapsed onto an existing run id
    excluded: int = 0


_registry = section_registry


def _valid_fields(section: str, name: str) -> list[str] | None:
    """Field names of a section's config, or None if the name itself is unknown."""
    if section == "protocol":
        return [f.name for f in dc_fields(ProtocolConfig) if f.name != "name"] if name in PROTOCOLS else None
    reg = _registry(section)
    try:
        entry = reg.get(name)
    except ConfigError:
        return None
    return [f.name for f in dc_fields(entry.config)] if entry.config is not None else []


def _choices(section: str) -> list[str]:
    return list(PROTOCOLS) if section == "protocol" else _registry(section).names()


class _Loader:
    """Parses and validates one sweep file; errors carry FILE:LINE."""

    def __init__(self, path: str, overrides=(), out: str | None = None):
        self.path = str(path)
        self.overrides = list(overrides)
        self.out_override = out

    def err(self, line: int, msg: str) -> SweepError:
        return SweepError(f"{self.path}:{line}: {msg}")

    def unknown(self, line, kind, value, choices) -> SweepError:
        return self.err(line, str(unknown(kind, value, choices)))

    # -- pieces ------------------------------------------------------------------------------
    def check_name(self, section: str, name, line: int) -> str:
        if not isinstance(name, str):
            raise self.err(line, f"{section}: expected a name, got {name!r}")
        if _valid_fields(section, name) is None:
            raise self.unknown(line, section, name, _choices(section))
        return name

    def split_key(self, key, line: int, default_section: str | None) -> tuple[str, str | None]:
        """'section.field' -> (section, field); a bare key -> (default_section, key) or a run key."""
        if not isinstance(key, str):
            raise self.err(line, f"expected a string key, got {key!r}")
        if "." in key:
            sec, fld = key.split(".", 1)
            if sec not in SECTIONS:
                raise self.unknown(line, "config section", sec, SECTIONS)
            return sec, fld
        if key in SECTIONS:
            return key, None
        if key in RUN_KEYS:
            if key in SWEEP_LEVEL_RUN_KEYS:
                raise self.err(line, f"{key!r} is set once per sweep, at the top level of the sweep file")
            return "run", key
        if default_section is None:
            valid = list(SECTIONS) + [k for k in RUN_KEYS if k not in SWEEP_LEVEL_RUN_KEYS] + ["<section>.<field>"]
            raise self.unknown(line, "key", key, valid)
        return default_section, key

    # -- main --------------------------------------------------------------------------------
    def load(self) -> Sweep:
        data = load_yaml_lines(self.path, TOP_KEYS)
        for k in data:
            if k not in TOP_KEYS:
                raise self.unknown(data.lineof(k), "sweep key", k, TOP_KEYS)
        plugins = self.load_plugins(data)
        name = str(data.get("name") or Path(self.path).stem)
        group = str(data.get("group") or name)
        tags = data.get("tags") or []
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list):
            raise self.err(data.lineof("tags"), "tags: expected a list of strings")
        out = self.out_override or str(data.get("out") or f"results/{name}")
        executor = data.get("executor") or {}
        if not isinstance(executor, dict):
            raise self.err(data.lineof("executor"), f"executor: expected a mapping with keys {', '.join(EXECUTOR_KEYS)}")
        for k in executor:
            if k not in EXECUTOR_KEYS:
                raise self.unknown(executor.lineof(k), "executor key", k, EXECUTOR_KEYS)

        base = data.get("base") or LDict()
        if not isinstance(base, dict):
            raise self.err(data.lineof("base"), "base: expected a run config mapping")
        base_entries = self.entries_of(base, None, "base")

        grid = data.get("grid") or LDict()
        if not isinstance(grid, dict):
            raise self.err(data.lineof("grid"), "grid: expected a mapping of axis -> list of values")
        axes = self.axes_of(grid, None, "grid")

        per = {}
        for kind, section in (("scenarios", "scenario"), ("strategies", "strategy")):
            block = data.get(kind) or LDict()
            if not isinstance(block, dict):
                raise self.err(data.lineof(kind), f"{kind}: expected a mapping of {section} name -> overrides")
            per[section] = {}
            for sname, body in block.items():
                self.check_name(section, sname, block.lineof(sname))
                body = body if body is not None else LDict()
                if not isinstance(body, dict):
                    raise self.err(block.lineof(sname), f"{kind}.{sname}: expected a mapping of overrides")
                sub_grid = body.get("grid") or LDict()
                if not isinstance(sub_grid, dict):
                    raise self.err(body.lineof("grid"), f"{kind}.{sname}.grid: expected a mapping of axis -> list")
                fixed = LDict({k: v for k, v in body.items() if k != "grid"})
                fixed.line, fixed.key_lines = body.line, body.key_lines
                per[section][sname] = (self.entries_of(fixed, section, f"{kind}.{sname}"),
                                       self.axes_of(sub_grid, section, f"{kind}.{sname}.grid"))

        rules = self.exclusions(data)
        sweep = Sweep(path=self.path, name=name, group=group, tags=[str(t) for t in tags], out=out, runs=[],
                      executor=plain(executor), report=bool(data.get("report", True)), paper=plain(data.get("paper")),
                      description=str(data.get("description") or ""), plugins=plugins)
        self.expand(sweep, base_entries, axes, per, rules)
        return sweep

    def load_plugins(self, data) -> list[str]:
        """``plugins: [my_strategy.py, mypackage.benchmarks]``: files (relative to the sweep file) or modules,
        imported before anything else is read; the only other place a scenario factory may come from."""
        items = data.get("plugins") or []
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list):
            raise self.err(data.lineof("plugins"), "plugins: expected a list of Python files or module names")
        out = []
        for i, item in enumerate(items):
            line = items.lineof(i) if isinstance(items, LList) else data.lineof("plugins")
            if not isinstance(item, str):
                raise self.err(line, f"plugins: expected a file or module name, got {item!r}")
            path = Path(item) if Path(item).is_absolute() else Path(self.path).parent / item
            target = str(path.resolve()) if item.endswith(".py") or path.is_file() else item
            try:
                load_plugin_file(target)
            except ConfigError as e:
                raise self.err(line, str(e)) from None
            out.append(target)
        return out

    def entries_of(self, mapping: dict, default_section, where) -> list:
        """Fixed settings -> [(section, field|None, value, line)] (field None: the section's name or mapping)."""
        out = []
        for k, v in mapping.items():
            line = mapping.lineof(k)
            sec, fld = self.split_key(k, line, default_section)
            if fld is None and isinstance(v, dict):  # a whole section: {name: ..., field: ...}
                if "name" in v:
                    out.append((sec, None, v["name"], v.lineof("name") if isinstance(v, LDict) else line))
                for f2, v2 in v.items():
                    if f2 != "name":
                        out.append((sec, f2, v2, v.lineof(f2) if isinstance(v, LDict) else line))
            elif fld is None and sec == "run":
                out.append((sec, k, v, line))
            else:
                out.append((sec, fld, v, line))
        for sec, fld, v, line in out:
            if fld is None and sec in SECTIONS:
                self.check_name(sec, v, line)
        return out

    def axes_of(self, grid: dict, default_section, where) -> list:
        """Axes -> [(section, field|None, [(value, line)], key_line)]."""
        axes = []
        for k, vals in grid.items():
            line = grid.lineof(k)
            sec, fld = self.split_key(k, line, default_section)
            if sec == "run" and fld != "seed":
                raise self.err(line, f"{where}: {k!r} cannot be a grid axis (axes: {', '.join(NAME_AXES)}, seed, "
                                     f"<section>.<field>)")
            if not isinstance(vals, list):
                vals = LList([vals])
                vals.line, vals.item_lines = line, [line]
            if not vals:
                raise self.err(line, f"{where}.{k}: an axis needs at least one value")
            items = [(v, vals.lineof(i)) for i, v in enumerate(vals)]
            if fld is None and sec in SECTIONS:
                for v, ln in items:
                    nm = v.get("name") if isinstance(v, dict) else v
                    self.check_name(sec, nm, ln)
            if sec == "run":
                for v, ln in items:
                    if not isinstance(v, int) or isinstance(v, bool):
                        raise self.err(ln, f"{where}.seed: seeds are integers, got {v!r}")
            axes.append((sec, fld, items, line))
        return axes

    def exclusions(self, data) -> list:
        ex = data.get("exclude") or LList()
        if not isinstance(ex, list):
            raise self.err(data.lineof("exclude"), "exclude: expected a list of mappings such as "
                                                   "{strategy: joint, scenario: split-digits}")
        rules = []
        for i, rule in enumerate(ex):
            line = ex.lineof(i)
            if not isinstance(rule, dict) or not rule:
                raise self.err(line, "exclude: each entry is a non-empty mapping of key -> value (or list of values)")
            conds = []
            for k, v in rule.items():
                kl = rule.lineof(k)
                sec, fld = self.split_key(k, kl, None)
                vals = list(v) if isinstance(v, list) else [v]
                if fld is None and sec in SECTIONS:
                    for nm in vals:
                        self.check_name(sec, nm, kl)
                conds.append((sec, fld, [plain(x) for x in vals], kl))
            rules.append({"line": line, "conds": conds, "hits": 0})
        return rules

    # -- expansion ---------------------------------------------------------------------------
    def expand(self, sweep: Sweep, base_entries, axes, per, rules) -> None:
        seen: dict[str, RunSpec] = {}
        used: dict[int, list] = {}  # id(axis) -> [axis, applied somewhere]

        def product(axs):
            for a in axs:
                used.setdefault(id(a), [a, False])
            return itertools.product(*[[(a, v, ln) for v, ln in a[2]] for a in axs]) if axs else [()]

        base_entries = [(*e, False) for e in base_entries]
        for combo in product(axes):
            ents = base_entries + [(a[0], a[1], v, ln, True) for a, v, ln in combo]
            names = self.names_of(ents)
            sub_axes = []
            # per-scenario, then per-strategy overrides: more specific than the grid, so they win
            for section in ("scenario", "strategy"):
                if names[section] in per[section]:
                    fixed, sa = per[section][names[section]]
                    ents = ents + [(*e, False) for e in fixed]
                    sub_axes += sa
            names = self.names_of(ents)
            for sub in product(sub_axes):
                all_ents = ents + [(a[0], a[1], v, ln, True) for a, v, ln in sub]
                raw, applied = self.build_raw(all_ents, names)
                label = {}
                for a, v, _ in tuple(combo) + tuple(sub):
                    sec, fld = a[0], a[1]
                    if fld is None or sec == "run" or (sec, fld) in applied:
                        used[id(a)][1] = True
                        key = sec if fld is None else ("seed" if sec == "run" else f"{sec}.{fld}")
                        label[key] = _axis_label(v) if fld is None else plain(v)
                raw = apply_overrides(raw, self.overrides) if self.overrides else raw
                raw.update(out=sweep.out, group=sweep.group, tags=list(sweep.tags))
                try:
                    resolved = resolve(raw)
                except ConfigError as e:
                    raise SweepError(f"{self.path}: {e}") from None
                if self.excluded(resolved, rules):
                    sweep.excluded += 1
                    continue
                rid = run_id(resolved)
                if rid in seen:
                    sweep.merged += 1
                    continue
                seen[rid] = RunSpec(rid, resolved, label)
        for a, ok in used.values():
            if not ok:
                sec, fld, _, line = a
                raise self.err(line, str(unknown(f"{sec} field (in no run of this sweep)", fld, self.all_fields(sec))))
        for rule in rules:
            if rule["hits"] == 0:
                print(f"warning: {self.path}:{rule['line']}: this exclusion matches no run", file=sys.stderr)
        sweep.runs = list(seen.values())

    def all_fields(self, section) -> list[str]:
        names = set()
        for nm in _choices(section):
            names |= set(_valid_fields(section, nm) or [])
        return sorted(names)

    @staticmethod
    def names_of(entries) -> dict:
        from cl.core.config import DEFAULTS

        names = dict(DEFAULTS)
        for sec, fld, v, *_ in entries:
            if fld is None and sec in SECTIONS:
                names[sec] = v.get("name") if isinstance(v, dict) else v
        return names

    def build_raw(self, entries, names) -> tuple[dict, set]:
        """Apply entries in order. A field that the run's section does not have is an error for a fixed
        setting and skipped for a grid axis (an axis applies to the runs whose config has the field)."""
        raw: dict[str, Any] = {}
        applied = set()
        for sec, fld, v, line, is_axis in entries:
            if sec == "run":
                raw[fld] = plain(v)
                continue
            secd = raw.setdefault(sec, {})
            secd["name"] = names[sec]
            if fld is None:
                if isinstance(v, dict):
                    for f2, v2 in v.items():
                        if f2 != "name":
                            self.check_field(sec, names[sec], f2, v2, v.lineof(f2) if isinstance(v, LDict) else line)
                            secd[f2] = plain(v2)
                continue
            if is_axis and fld not in _valid_fields(sec, names[sec]):
                continue
            self.check_field(sec, names[sec], fld, v, line)
            secd[fld] = plain(v)
            applied.add((sec, fld))
        return raw, applied

    def check_field(self, sec, name, fld, value, line):
        valid = _valid_fields(sec, name)
        if fld not in valid:
            raise self.unknown(line, f"{sec} {name!r} field", fld, valid)
        cls = ProtocolConfig if sec == "protocol" else _registry(sec).get(name).config
        try:
            build_dataclass(cls, {fld: plain(value)}, f"{sec} {name!r}")
        except ConfigError as e:
            raise self.err(line, str(e)) from None

    @staticmethod
    def excluded(resolved, rules) -> bool:
        for rule in rules:
            if all(_matches(resolved, sec, fld, vals) for sec, fld, vals, _ in rule["conds"]):
                rule["hits"] += 1
                return True
        return False


def _value(resolved: dict, sec: str, fld: str | None) -> tuple[bool, Any]:
    """(present, value) of a key of a resolved run: a run key (``sec`` "run"), a section's name (``fld`` None) or a
    section's field (absent from a strategy that has no such field)."""
    if sec == "run":
        return True, resolved.get(fld)
    if fld is None:
        return True, resolved[sec]["name"]
    return fld in resolved[sec], resolved[sec].get(fld)


def _matches(resolved: dict, sec: str, fld: str | None, vals) -> bool:
    present, have = _value(resolved, sec, fld)
    return present and have in vals


def select_runs(sweep: Sweep, exprs, flag: str = "--only") -> list[RunSpec]:
    """The runs of ``sweep`` that match every ``KEY=V1,V2`` of ``exprs`` (one of the values, for each key).

    KEY is ``strategy`` / ``scenario`` / ``backbone`` / ``protocol`` (a name), ``seed`` or another run key, or
    ``SECTION.FIELD`` (``strategy.buffer_size``); a run without that field does not match.  Values are read as
    YAML scalars (``500``, ``true``, ``er-ace``).  Raises ConfigError for a bad expression or an empty selection
    (naming ``flag``, the command-line option the expressions came from).
    """
    import yaml

    conds = []
    for e in exprs:
        key, eq, vals = str(e).partition("=")
        key = key.strip()
        if not eq or not key or not vals.strip():
            raise ConfigError(f"{flag} {e!r}: expected KEY=VALUE[,VALUE...], e.g. {flag} strategy=er,er-ace "
                              f"or {flag} strategy.buffer_size=500")
        sec, _, fld = key.partition(".")
        if sec not in SECTIONS and (fld or sec not in RUN_KEYS):
            raise unknown(f"{flag} key", key, [*SECTIONS, *RUN_KEYS, "SECTION.FIELD"])
        want = []
        for v in vals.split(","):
            try:
                want.append(yaml.safe_load(v.strip()))
            except yaml.YAMLError:
                want.append(v.strip())
        conds.append((key, sec if sec in SECTIONS else "run", fld or (None if sec in SECTIONS else sec), want))

    picked = [r for r in sweep.runs if all(_matches(r.config, sec, fld, want) for _, sec, fld, want in conds)]
    if not picked:
        seen = {key: sorted({repr(v) for present, v in (_value(r.config, sec, fld) for r in sweep.runs) if present})
                for key, sec, fld, _ in conds}
        raise ConfigError(f"no run of sweep {sweep.name!r} matches {flag} " + f" {flag} ".join(exprs) +
                          "; values in this sweep: " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in seen.items()))
    return picked


def load_sweep(path: str | Path, overrides=(), out: str | None = None, plugins=()) -> Sweep:
    """Parse, validate and expand a sweep file. Raises SweepError (FILE:LINE: ...) on any bad input."""
    for p in plugins:
        load_plugin_file(p)
    ld = _Loader(str(path), overrides, out)
    return ld.load()
