"""Data path speed: batches/s of the device-resident path against plain torch DataLoaders, side by side,
on CIFAR-10 with augmentation (random crop with 4-pixel padding + horizontal flip), batch 128.

    python benchmarks/data.py                     # auto device, 200 batches per runner
    python benchmarks/data.py --batches 400 --device cuda --workers 8
    python benchmarks/data.py --out benchmarks/results/data.md

Runners (each yields a normalised, augmented float batch on the device, plus labels):

* ``device-resident`` (the platform): the whole uint8 training set sits on the device once; a batch is an
  index slice of a device permutation, then ``Scenario.preprocess_fn`` (float, normalise) and
  ``cl.augment.Augment("crop_flip")``, all batched on the device.
* ``DataLoader (tensors, W workers)``: a ``Dataset`` over the same uint8 arrays in host memory with
  per-sample torchvision transforms (``RandomCrop(32, 4)``, ``RandomHorizontalFlip``, float, ``Normalize``),
  a ``DataLoader`` with W workers and pinned memory on CUDA, then ``.to(device)``.
* ``DataLoader (JPEG files, W workers)``: torchvision ``ImageFolder`` over the JPEG files (extracted once
  to a temporary folder from the shared tarball): decode + the same transforms per sample.

The data is the shared CIFAR-10 copy (``../shared/data/cifar10-jpeg.tar.gz``) or any CIFAR-10 root
(``--root``); the first run decodes and caches it (``cl.data.cache_dir``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import machine, table  # noqa: E402
from cl.data.augment import Augment  # noqa: E402
from scenarios.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar10  # noqa: E402

MEAN, STD = CIFAR_MEAN[10], CIFAR_STD[10]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_device_resident(x, y, device, bs, n_batches, warmup=5):
    from cl.core.streams import Scenario

    sc = Scenario("cifar10", [], 10, (3, 32, 32), list(range(10)), mean=MEAN, std=STD)
    pre = sc.preprocess_fn(device)
    aug = Augment("crop_flip", MEAN, STD, device=device)
    xd, yd = x.to(device), y.to(device)
    n = len(yd)
    acc = torch.zeros((), device=device)
    perm = torch.randperm(n, device=device)
    steps_per_epoch = n // bs
    t0 = None
    for i in range(n_batches + warmup):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        s = i % steps_per_epoch
        if s == 0 and i:
            perm = torch.randperm(n, device=device)
        idx = perm[s * bs:(s + 1) * bs]
        xb = aug(pre(xd[idx]))
        acc += xb[:, 0, 0, 0].sum() + yd[idx].sum()  # consume the batch
    sync(device)
    return n_batches / (time.perf_counter() - t0)


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.t = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.t(self.x[i]), self.y[i]


def _transforms(from_pil: bool):
    from torchvision.transforms import v2 as T

    ops = [T.ToImage()] if from_pil else []
    ops += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
            T.Normalize(MEAN, STD)]
    return T.Compose(ops)


def run_loader(ds, device, bs, n_batches, workers, warmup=5):
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, drop_last=True,
                                     pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                     prefetch_factor=4 if workers else None)
    acc = torch.zeros((), device=device)
    it = iter(dl)
    t0 = None
    for i in range(n_batches + warmup):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(dl)
            xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        acc += xb[:, 0, 0, 0].sum() + yb.sum()
    sync(device)
    r = n_batches / (time.perf_counter() - t0)
    del it, dl
    return r


def jpeg_folder(tar_path: Path) -> Path:
    d = Path(tempfile.gettempdir()) / "cl-bench-cifar10-jpeg"
    if not (d / "cifar10" / "train").is_dir():
        d.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as tf:
            tf.extractall(d, filter="data")
    return d / "cifar10" / "train"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="*", default=None, help="DataLoader worker counts (default 0 and "
                                                                          "all cores but one)")
    ap.add_argument("--root", default=None, help="CIFAR-10 root (default: the shared copy)")
    ap.add_argument("--no-jpeg", action="store_true", help="skip the JPEG-folder DataLoader")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="write a Markdown report here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    workers = a.workers if a.workers is not None else sorted({0, max(1, (os.cpu_count() or 2) - 1)})
    t = time.perf_counter()
    xtr, ytr, *_ = load_cifar10(a.root)
    xtr, ytr = xtr.clone(), ytr.clone()
    load_s = time.perf_counter() - t
    rows = [{"runner": "device-resident (platform)", "batches/s": run_device_resident(xtr, ytr, device,
                                                                                      a.batch_size, a.batches)}]
    tfm = _transforms(False)
    for w in workers:
        rows.append({"runner": f"DataLoader (tensors, {w} workers)",
                     "batches/s": run_loader(TensorDataset(xtr, ytr, tfm), device, a.batch_size, a.batches, w)})
    from cl.data.cache import shared_data_dir

    tar = shared_data_dir() / "cifar10-jpeg.tar.gz"
    if not a.no_jpeg and tar.exists():
        from torchvision.datasets import ImageFolder

        folder = jpeg_folder(tar)
        ds = ImageFolder(str(folder), transform=_transforms(True))
        for w in workers:
            rows.append({"runner": f"DataLoader (JPEG files, {w} workers)",
                         "batches/s": run_loader(ds, device, a.batch_size, a.batches, w)})
    base = rows[0]["batches/s"]
    for r in rows:
        r["samples/s"] = r["batches/s"] * a.batch_size
        r["platform speed-up"] = f"{base / r['batches/s']:.1f}x"
    cols = ["runner", "batches/s", "samples/s", "platform speed-up"]
    report = "\n".join([
        "# Data path: device-resident vs DataLoader (CIFAR-10, crop+flip augmentation)", "",
        f"Machine: {machine()}; device `{device}`.  Command: `python benchmarks/data.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip() + ".",
        f"Batch {a.batch_size}, {a.batches} timed batches per runner after 5 warm-up batches; CIFAR-10 training "
        f"set (50,000 images, uint8) loaded in {load_s:.1f} s from the decode cache (or decoded once).", "",
        table(rows, cols), "",
        "Every runner yields a normalised, augmented float batch on the device.  The device-resident path "
        "indexes a uint8 tensor that already lives on the device and augments the batch in one go "
        "(cl/augment.py); the DataLoaders transform each sample in Python (torchvision v2) in worker processes "
        "and copy the batch to the device.", ""])
    print(report)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(a.out).with_suffix(".tmp")
        tmp.write_text(report)
        os.replace(tmp, a.out)
    return rows


if __name__ == "__main__":
    main()
