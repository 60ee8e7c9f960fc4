"""Read what a W&B run logged from its local run file (``run-<id>.wandb``), e.g. an offline run,
without syncing it. The file is a LevelDB-style log of protobuf ``Record`` messages."""
from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

_BLOCK = 32768
_HEADER = 7  # crc32 (4) + length (2) + type (1)


def _records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, buf = 7, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if length == 0 and kind == 0:
            break
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def run_files(root: str | Path) -> list[Path]:
    """Every W&B run file under ``root``."""
    found = {Path(p).resolve() for p in glob.glob(str(Path(root) / "**" / "run-*.wandb"), recursive=True)}
    return sorted(found)  # resolved: W&B's latest-run link would list a run twice


def read_run(path: str | Path) -> dict:
    """``{"config": {...}, "history": [ {key: value, ...} per logged step ], "summary": {...}}``."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"config": {}, "history": [], "summary": {}}
    for raw in _records(Path(path)):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json)
                                   for it in rec.history.item})
        elif kind == "summary":
            for it in rec.summary.update:
                out["summary"][it.key or "/".join(it.nested_key)] = json.loads(it.value_json)
        elif kind == "config":
            for it in rec.config.update:
                out["config"][it.key or "/".join(it.nested_key)] = json.loads(it.value_json)
        elif kind == "run":
            for it in rec.run.config.update:
                out["config"][it.key or "/".join(it.nested_key)] = json.loads(it.value_json)
    return out
