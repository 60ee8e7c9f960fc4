"""Text scenarios: CLINC150 (10 domain tasks x 15 intents) and user CSV / JSONL files.

Samples are token ids (``int64 [N, L]``, pad 0; :func:`cl.models.text.tokenize`, the MiniLM tokenizer),
``modality="text"``; use them with ``-b minilm`` (LoRA, prompts) or a frozen-feature strategy
(``-s linear-probe -b minilm``: the feature cache encodes them once).

Data root: ``scenario.root``, else ``$CL_DATA_ROOT``, else ``../shared/data`` next to the project.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cl.core.registry import ConfigError, scenarios
from cl.core.streams import class_incremental, seeded_class_order, stratified_split
from cl.models.text import tokenize

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_roots(root: str | None) -> list[Path]:
    if root:
        return [Path(root).expanduser()]
    out = []
    if os.environ.get("CL_DATA_ROOT"):
        out.append(Path(os.environ["CL_DATA_ROOT"]).expanduser())
    out.append(PROJECT_ROOT.parent / "shared" / "data")
    return out


def find_files(root: str | None, names: list[str], layout: str) -> Path:
    tried = data_roots(root)
    for r in tried:
        if all((r / n).is_file() for n in names):
            return r
    raise ConfigError(f"{', '.join(names)} not found; tried {', '.join(str(t) for t in tried)}. "
                      f"Expected layout: {layout}. Pass scenario.root=DIR or set CL_DATA_ROOT.")


def _per_class(x, y, k: int, seed: int = 0):
    if not k:
        return x, y
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    keep = torch.cat(keep).sort().values
    return x[keep], y[keep]


@dataclass
class Clinc150Config:
    root: str | None = None  # folder with clinc150.json and clinc150_domains.json
    max_length: int = 48  # token cap (the longest CLINC150 utterance has ~40 tokens)
    train_per_class: int = 0  # 0: all 100 per intent (fewer: faster runs)
    test_per_class: int = 0  # 0: all 30 per intent
    use_val: bool = False  # add the 20-per-intent validation split to training
    shuffle_domains: bool = False  # domain (task) order drawn from the seed instead of the file order
    order_seed: int | None = None
    task_labels: bool = False


@scenarios.register("clinc150", Clinc150Config)
def clinc150(cfg: Clinc150Config, seed: int):
    """CLINC150 intents, class-incremental over its 10 domains (15 intents each); MiniLM token ids."""
    root = find_files(cfg.root, ["clinc150.json", "clinc150_domains.json"],
                      "clinc150.json {train,val,test: [[text, intent], ...]} and clinc150_domains.json "
                      "{domain: [intent, ...]} (clinc/oos-eval data_full.json and domains.json)")
    data = json.loads((root / "clinc150.json").read_text())
    domains = json.loads((root / "clinc150_domains.json").read_text())
    names = list(domains)
    if cfg.shuffle_domains:
        names = [names[i] for i in seeded_class_order(range(len(names)), seed if cfg.order_seed is None else cfg.order_seed)]
    intents = [i for d in names for i in domains[d]]
    cid = {n: k for k, n in enumerate(intents)}
    train = data["train"] + (data["val"] if cfg.use_val else [])
    test = data["test"]
    bad = sorted({lab for _, lab in train + test if lab not in cid})
    if bad:
        raise ConfigError(f"CLINC150 intents missing from the domain file: {bad[:5]}")
    ids = tokenize([t for t, _ in train + test], max_length=cfg.max_length)
    y = torch.tensor([cid[lab] for _, lab in train + test])
    xtr, ytr = _per_class(ids[:len(train)], y[:len(train)], cfg.train_per_class)
    xte, yte = _per_class(ids[len(train):], y[len(train):], cfg.test_per_class)
    return class_incremental("clinc150", xtr, ytr, xte, yte, class_order=list(range(len(intents))),
                             per_task=[len(domains[d]) for d in names], task_labels=cfg.task_labels,
                             class_names=intents, modality="text",
                             meta={"domains": names, "tokenizer": "all-MiniLM-L6-v2"})


@dataclass
class TextFileConfig:
    path: str = ""  # CSV (header row) or JSONL / JSON (list of objects) with a text and a label column
    test_path: str | None = None  # separate test file; otherwise test_fraction of each class is held out
    test_fraction: float = 0.2
    text_column: str = "text"
    label_column: str = "label"
    n_tasks: int = 0  # split the classes into this many equal tasks (class order from the seed) ...
    task_classes: list[list[str]] | None = None  # ... or explicit tasks: lists of label names
    class_order: list[str] | None = None  # fixed class order with n_tasks
    max_length: int = 64
    order_seed: int | None = None
    task_labels: bool = False


def read_text_file(path: str, text_col: str, label_col: str) -> tuple[list[str], list[str]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"text data file {str(p)!r} does not exist (expected CSV with a header, JSONL or JSON "
                          f"with columns {text_col!r} and {label_col!r})")
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    elif p.suffix.lower() == ".json":
        rows = json.loads(p.read_text())
    else:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f, dialect="excel-tab" if p.suffix.lower() == ".tsv" else "excel"))
    if not rows:
        raise ConfigError(f"{p}: no rows")
    for col in (text_col, label_col):
        if col not in rows[0]:
            raise ConfigError(f"{p}: no column {col!r}; columns: {', '.join(map(str, rows[0]))}. "
                              f"Set scenario.text_column / scenario.label_column")
    return [str(r[text_col]) for r in rows], [str(r[label_col]) for r in rows]


@scenarios.register("text-file", TextFileConfig)
def text_file(cfg: TextFileConfig, seed: int):
    """User text data (CSV / JSONL): text and label columns, tasks by class count or class lists."""
    if not cfg.path:
        raise ConfigError("scenario text-file needs scenario.path=FILE.csv|.jsonl")
    texts, labels = read_text_file(cfg.path, cfg.text_column, cfg.label_column)
    if cfg.test_path:
        te_texts, te_labels = read_text_file(cfg.test_path, cfg.text_column, cfg.label_column)
    else:
        te_texts, te_labels = [], []
    names = sorted(set(labels) | set(te_labels))
    cid = {n: k for k, n in enumerate(names)}
    ids = tokenize(texts + te_texts, max_length=cfg.max_length)
    y = torch.tensor([cid[lab] for lab in labels + te_labels])
    if cfg.test_path:
        xtr, ytr, xte, yte = ids[:len(texts)], y[:len(texts)], ids[len(texts):], y[len(texts):]
    else:
        tr, te = stratified_split(y, cfg.test_fraction, seed=0)
        xtr, ytr, xte, yte = ids[tr], y[tr], ids[te], y[te]
    kw = {}
    if cfg.task_classes:
        flat = [c for t in cfg.task_classes for c in t]
        bad = [c for c in flat if c not in cid]
        if bad:
            raise ConfigError(f"task_classes names unknown labels {bad[:5]}; labels: {', '.join(names[:20])}")
        kw = dict(class_order=[cid[c] for c in flat], per_task=[len(t) for t in cfg.task_classes])
        keep_tr, keep_te = torch.isin(ytr, torch.tensor(kw["class_order"])), torch.isin(yte, torch.tensor(kw["class_order"]))
        xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
    else:
        if cfg.class_order:
            bad = [c for c in cfg.class_order if c not in cid]
            if bad:
                raise ConfigError(f"class_order names unknown labels {bad[:5]}; labels: {', '.join(names[:20])}")
            kw["class_order"] = [cid[c] for c in cfg.class_order]
        kw["n_tasks"] = cfg.n_tasks or 1
    return class_incremental(f"text-file:{Path(cfg.path).stem}", xtr, ytr, xte, yte,
                             seed=seed if cfg.order_seed is None else cfg.order_seed,
                             task_labels=cfg.task_labels, class_names=names, modality="text",
                             meta={"tokenizer": "all-MiniLM-L6-v2", "path": str(cfg.path)}, **kw)
