"""YAML with line numbers: mappings and lists that know the line of each key and item, so that every error in a
sweep file can name ``FILE:LINE``."""
from __future__ import annotations

from pathlib import Path

import yaml

from cl.core.registry import ConfigError



class SweepError(ConfigError):
    """A bad sweep file; the message starts with ``FILE:LINE:``."""


class LDict(dict):
    """A mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict

    def lineof(self, key) -> int:
        return self.key_lines.get(key, self.line)


class LList(list):
    line: int = 0
    item_lines: list

    def lineof(self, i) -> int:
        return self.item_lines[i] if 0 <= i < len(self.item_lines) else self.line


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _convert(node, loader):
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        return loader.construct_object(node, deep=True)  # a tagged collection: SafeLoader's rules (python/* refused)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        d = LDict()
        d.line, d.key_lines = node.start_mark.line + 1, {}
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            if key in d.key_lines:  # YAML would keep the last one silently
                raise SweepError(f"{loader.name}:{k_node.start_mark.line + 1}: duplicate key {key!r} "
                                 f"(first at line {d.key_lines[key]})")
            d[key] = _convert(v_node, loader)
            d.key_lines[key] = k_node.start_mark.line + 1
        return d
    if isinstance(node, yaml.SequenceNode):
        lst = LList(_convert(n, loader) for n in node.value)
        lst.line, lst.item_lines = node.start_mark.line + 1, [n.start_mark.line + 1 for n in node.value]
        return lst
    return loader.construct_object(node, deep=True)


def load_yaml_lines(path: str | Path, top_keys=()):
    """Parse a YAML file into LDict/LList (plain dict/list subclasses that know their lines)."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path!r} does not exist") from None
    loader = yaml.SafeLoader(text)
    loader.name = path
    try:
        node = loader.get_single_node()
        data = _convert(node, loader) if node is not None else LDict()
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SweepError(f"{path}:1: a sweep file is a mapping (keys: {', '.join(top_keys)})")
    if not isinstance(data, LDict):
        data = LDict(data)
        data.line, data.key_lines = 1, {}
    return data


def plain(obj):
    """LDict/LList -> dict/list, recursively."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj
