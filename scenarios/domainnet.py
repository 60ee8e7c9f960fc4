"""DomainNet: ``<domain>/<class>/*.jpg`` with ``<domain>_{train,test}.txt``; domain-incremental or class-incremental."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cl.core.registry import ConfigError, scenarios
from cl.data.cache import decode_paths_cached, find_root
from cl.data.domains import domain_incremental
from cl.data.settings import SettingConfig, build_setting, validate
from cl.data.task_free import hide_boundaries
from scenarios._folders import IMAGENET_MEAN, IMAGENET_STD

# =========================================== DomainNet ===========================================
DOMAINNET_DOMAINS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]


def _domainnet_check(domains):
    def check(p: Path):
        lack = [x for d in domains for x in (f"{d}/", f"{d}_train.txt", f"{d}_test.txt") if not (p / x).exists()]
        return ("ok", p) if not lack else f"missing: {p} lacks {lack}"

    return check


@dataclass
class DomainNetConfig(SettingConfig):
    setting: str = "domain"  # domain (one task per domain) | class | task | data (domains pooled)
    n_tasks: int = 6  # used when setting != domain
    domains: list[str] | None = None  # default: all six, in the standard order
    root: str | None = None
    image_size: int = 64


def load_domainnet(root=None, domains=None, size: int = 64, per_class: int = 0):
    """DomainNet from its split files: ``{domain: (xtr, ytr, xte, yte)}`` and the 345 class names."""
    domains = list(domains or DOMAINNET_DOMAINS)
    _, p = find_root("domainnet", root, _domainnet_check(domains),
                     "<root>/<domain>/<class>/*.jpg with <root>/<domain>_{train,test}.txt "
                     "(lines '<domain>/<class>/<img>.jpg <label>'); domains " + ", ".join(DOMAINNET_DOMAINS),
                     env=("CL_DATA_DOMAINNET",), subdirs=["domainnet", "DomainNet"])
    names: dict[int, str] = {}
    out = {}
    for d in domains:
        parts = []
        for split in ("train", "test"):
            paths, labels = [], []
            for line in (p / f"{d}_{split}.txt").read_text().splitlines():
                if line.strip():
                    rel, lab = line.rsplit(None, 1)
                    paths.append(p / rel)
                    labels.append(int(lab))
                    names.setdefault(int(lab), Path(rel).parent.name)
            y = torch.tensor(labels).long()
            if per_class and split == "train":
                from cl.data.settings import subsample

                keep = subsample(y, per_class).tolist()
                paths, y = [paths[i] for i in keep], y[keep]
            miss = [str(q) for q in paths[:1] if not q.is_file()]
            if miss:
                raise ConfigError(f"domainnet: images listed in {p / f'{d}_{split}.txt'} are missing, e.g. {miss}")
            parts += [decode_paths_cached("domainnet", paths, size), y]
        out[d] = tuple(parts)
    n = max(names) + 1
    return out, [names.get(i, str(i)) for i in range(n)]


def domainnet(cfg: DomainNetConfig, seed: int):
    """DomainNet: domain-incremental over its six domains (or class/task/data-incremental, domains pooled)."""
    validate(cfg)
    doms = list(cfg.domains or DOMAINNET_DOMAINS)
    bad = [d for d in doms if d not in DOMAINNET_DOMAINS]
    if bad:
        raise ConfigError(f"domainnet: unknown domains {bad}; valid: {DOMAINNET_DOMAINS}")
    data, names = load_domainnet(cfg.root, doms, cfg.image_size, cfg.train_per_class)
    if cfg.setting == "domain":
        sc = domain_incremental("domainnet", [data[d] for d in doms], doms, class_names=names, mean=IMAGENET_MEAN,
                                std=IMAGENET_STD)
        sc.meta.update(augment=cfg.augment)
        if cfg.boundaries == "hidden":
            sc = hide_boundaries(sc)
        elif cfg.boundaries != "visible":
            raise ConfigError("domainnet with setting=domain supports boundaries visible or hidden")
        return sc
    cat = lambda k: torch.cat([data[d][k] for d in doms])  # noqa: E731
    return build_setting("domainnet", cat(0), cat(1), cat(2), cat(3), cfg, seed, class_names=names,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)


scenarios.register("domainnet", DomainNetConfig)(domainnet)
