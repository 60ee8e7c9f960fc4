"""Dataset loaders on tiny fabricated folders in their real layouts (never downloaded data), root resolution,
the decode cache, CIFAR-10 from the shared copy when present, error messages, and CLI smoke runs."""
import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl.core.config import resolve, section_config
from cl.data.cache import DatasetNotFound, cache_dir, shared_data_dir
from cl.core.registry import ConfigError, scenarios


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_CACHE", str(tmp_path / "cache"))
    for v in ("CL_DATA", "CL_DATA_CIFAR10", "CL_DATA_MNIST", "CL_DATA_FASHION_MNIST"):
        monkeypatch.delenv(v, raising=False)


def build(name, seed=0, **kw):
    r = resolve({"scenario": {"name": name, **kw}})
    return scenarios.get(name).obj(section_config(r, "scenario"), seed)


def rgb(seed, hw=32):
    return np.random.RandomState(seed).randint(0, 256, (hw, hw, 3), dtype=np.uint8)


def save_png(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# -- CIFAR --------------------------------------------------------------------------------------------------
def write_cifar10_pickles(root: Path, per_batch=20, n_test=30):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rs = np.random.RandomState(0)
    xs, ys = [], []
    for i in range(1, 6):
        x = rs.randint(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rs.randint(0, 10, per_batch)]
        y[:10] = list(range(10))
        xs.append(x)
        ys += y
        pickle.dump({b"data": x, b"labels": y}, open(d / f"data_batch_{i}", "wb"))
    xt = rs.randint(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = [i % 10 for i in range(n_test)]
    pickle.dump({b"data": xt, b"labels": yt}, open(d / "test_batch", "wb"))
    names = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                  "truck"]]
    pickle.dump({b"label_names": names}, open(d / "batches.meta", "wb"))
    return np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys), xt.reshape(-1, 3, 32, 32), np.array(yt)


def test_cifar10_pickles_and_cache(tmp_path):
    from scenarios.cifar import load_cifar10

    xtr, ytr, xte, yte = write_cifar10_pickles(tmp_path / "data")
    a = load_cifar10(tmp_path / "data")
    assert a[0].dtype == torch.uint8 and tuple(a[0].shape) == (100, 3, 32, 32)
    assert np.array_equal(a[0].numpy(), xtr) and np.array_equal(a[1].numpy(), ytr)
    assert np.array_equal(a[2].numpy(), xte) and np.array_equal(a[3].numpy(), yte)
    assert a[4][0] == "airplane"
    cached = list((tmp_path / "cache").glob("cifar10-pickle-*/meta.json"))
    assert len(cached) == 1  # decoded once into the cache, outside the repository
    b = load_cifar10(tmp_path / "data" / "cifar-10-batches-py")  # pointing at the batches folder works too
    assert torch.equal(a[0], b[0])
    assert not list(Path(cache_dir()).glob("**/*.tmp"))  # atomic writes leave no temporaries


def write_cifar_folder(root: Path, classes=("cat", "dog", "frog", "ship"), n_train=3, n_test=2):
    imgs = {}
    k = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            for i in range(n):
                arr = rgb(k)
                save_png(root / split / c / f"{i:04d}.png", arr)
                imgs[(split, c, i)] = arr
                k += 1
    return imgs


def test_cifar10_image_folder_layout(tmp_path):
    from scenarios.cifar import load_cifar10

    imgs = write_cifar_folder(tmp_path / "cifar10")
    xtr, ytr, xte, yte, names = load_cifar10(tmp_path)  # found under <root>/cifar10
    assert names == ["cat", "dog", "frog", "ship"] and len(ytr) == 12 and len(yte) == 8
    assert np.array_equal(xtr[0].numpy(), imgs[("train", "cat", 0)].transpose(2, 0, 1))  # PNG: lossless
    assert ytr.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_cifar10_jpeg_tarball_layout(tmp_path):
    from scenarios.cifar import load_cifar10

    src = tmp_path / "src"
    write_cifar_folder(src / "cifar10", classes=("bird", "cat"), n_train=2, n_test=1)
    tar = tmp_path / "shared" / "cifar10-jpeg.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(src / "cifar10", arcname="cifar10")
    xtr, ytr, xte, yte, names = load_cifar10(tar.parent)  # a folder holding the tarball
    assert names == ["bird", "cat"] and tuple(xtr.shape) == (4, 3, 32, 32) and len(yte) == 2
    assert ytr.tolist() == [0, 0, 1, 1]


def test_scenario_mean_and_std_override_the_datasets_normalisation(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    y = list(range(100)) * 2
    data = np.full((200, 3072), 255, dtype=np.uint8)
    for split, n in (("train", 200), ("test", 100)):
        pickle.dump({b"data": data[:n], b"fine_labels": y[:n], b"coarse_labels": [0] * n}, open(d / split, "wb"))
    pickle.dump({b"fine_label_names": [f"k{i}".encode() for i in range(100)],
                 b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, open(d / "meta", "wb"))
    sc = build("split-cifar100/10", root=str(tmp_path), mean=[0.5, 0.5, 0.5], std=[2, 2, 2])  # Mammoth's ER-ACE
    assert sc.mean == (0.5, 0.5, 0.5) and sc.std == (2.0, 2.0, 2.0)
    x = sc.preprocess_fn("cpu")(sc[0].train_x[:2])
    assert torch.allclose(x, torch.full_like(x, 0.25))  # a white pixel: (1 - 0.5) / 2
    sc = build("split-cifar100/10", root=str(tmp_path), std=[0.5, 0.25, 1.0])  # the dataset's mean kept
    assert sc.mean == (0.5071, 0.4865, 0.4409) and sc.std == (0.5, 0.25, 1.0)
    for kw, msg in (({"mean": [0.5, 0.5]}, r"scenario.mean=\[0.5, 0.5\] must be 3 finite numbers, one per channel"),
                    ({"std": [1.0, 0.0, 1.0]}, r"scenario.std=\[1.0, 0.0, 1.0\] must be > 0 in every channel"),
                    ({"mean": [0.5, float("nan"), 0.5]}, "mean=nan is out of range")):
        with pytest.raises(ConfigError, match=msg):
            build("split-cifar100/10", root=str(tmp_path), **kw)
    from cl.core.config import run_id
    plain = resolve({"strategy": "er", "scenario": "split-cifar10"})
    set_ = resolve({"strategy": "er", "scenario": {"name": "split-cifar10", "mean": [0.5, 0.5, 0.5]}})
    assert plain["scenario"]["mean"] is None and run_id(plain) != run_id(set_)
    del plain["scenario"]["mean"], plain["scenario"]["std"]  # a config from before the fields: the same run id
    assert run_id(plain) == run_id(resolve({"strategy": "er", "scenario": "split-cifar10"}))


def test_cifar100_pickles(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rs = np.random.RandomState(1)
    y = list(range(100)) * 2
    pickle.dump({b"data": rs.randint(0, 256, (200, 3072), dtype=np.uint8), b"fine_labels": y,
                 b"coarse_labels": [(19 - c % 20) for c in y]}, open(d / "train", "wb"))
    pickle.dump({b"data": rs.randint(0, 256, (100, 3072), dtype=np.uint8), b"fine_labels": list(range(100)),
                 b"coarse_labels": [0] * 100}, open(d / "test", "wb"))
    pickle.dump({b"fine_label_names": [f"k{i}".encode() for i in range(100)],
                 b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, open(d / "meta", "wb"))
    sc = build("split-cifar100/10", root=str(tmp_path), order="icarl")
    assert len(sc) == 10 and sc.class_order[:3] == [68, 56, 78] and sc.class_names[0] == "k68"
    assert all(len(e) == 20 and len(e.test_y) == 10 for e in sc)
    sc = build("split-cifar100", root=str(tmp_path), n_tasks=20, order="superclass")
    assert sc.meta["order"] == "superclass" and sc.class_order[:5] == [19, 39, 59, 79, 99]  # superclass 0 first
    assert all(len({19 - c % 20 for c in (sc.class_order[k] for k in e.classes)}) == 1 for e in sc)


def test_cifar_missing_root_error_names_path_and_layout(tmp_path):
    from scenarios.cifar import load_cifar10

    with pytest.raises(DatasetNotFound) as ei:
        load_cifar10(tmp_path / "nowhere")
    msg = str(ei.value)
    assert str(tmp_path / "nowhere") in msg and "does not exist" in msg
    assert "cifar-10-batches-py" in msg and "train,test" in msg  # the expected layouts
    (tmp_path / "half" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "half" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(DatasetNotFound, match="lacks .*data_batch_2"):
        load_cifar10(tmp_path / "half")


def test_registry_family_names_and_bad_task_count():
    assert section_config(resolve({"scenario": "split-cifar10/5"}), "scenario").n_tasks == 5
    assert section_config(resolve({"scenario": "split-cifar10/10"}), "scenario").n_tasks == 10
    with pytest.raises(ConfigError, match="unknown scenario 'split-cifar10/3'"):
        resolve({"scenario": "split-cifar10/3"})


SHARED_TAR = shared_data_dir() / "cifar10-jpeg.tar.gz"


@pytest.mark.skipif(not SHARED_TAR.exists(), reason="no shared CIFAR-10 copy")
def test_cifar10_from_shared_copy(monkeypatch):
    monkeypatch.delenv("CL_CACHE")  # the user's cache: decoded once for every run and test
    sc = build("split-cifar10/5", seed=1, train_per_class=50, test_per_class=20)
    assert len(sc) == 5 and sc.n_classes == 10 and sc.input_shape == (3, 32, 32)
    assert set(sc.class_names) == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                   "truck"}
    train_rows = {bytes(r.numpy()) for e in sc for r in e.train_x.flatten(1)}
    for e in sc:
        assert e.train_x.dtype == torch.uint8 and len(e) == 100 and len(e.test_y) == 40
        assert set(e.train_y.tolist()) == set(e.classes)
        assert not any(bytes(r.numpy()) in train_rows for r in e.test_x.flatten(1))  # no test image in training
    from scenarios.cifar import load_cifar10

    xtr, ytr, xte, yte, _ = load_cifar10()
    assert tuple(xtr.shape) == (50000, 3, 32, 32) and tuple(xte.shape) == (10000, 3, 32, 32)
    assert torch.bincount(ytr).tolist() == [5000] * 10


# -- MNIST / Fashion-MNIST idx ----------------------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, gz=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def write_mnist(d: Path, gz=True, n=40, nt=20):
    rs = np.random.RandomState(2)
    x, y = rs.randint(0, 256, (n, 28, 28)), np.arange(n) % 10
    xt, yt = rs.randint(0, 256, (nt, 28, 28)), np.arange(nt) % 10
    sfx = ".gz" if gz else ""
    write_idx(d / f"train-images-idx3-ubyte{sfx}", x, gz)
    write_idx(d / f"train-labels-idx1-ubyte{sfx}", y, gz)
    write_idx(d / f"t10k-images-idx3-ubyte{sfx}", xt, gz)
    write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", yt, gz)
    return x, y


def test_fashion_mnist_gzipped_idx_and_torchvision_layout(tmp_path, monkeypatch):
    from scenarios.mnist import load_mnist_like

    x, y = write_mnist(tmp_path / "debian", gz=True)
    a = load_mnist_like("fashion-mnist", tmp_path / "debian")
    assert np.array_equal(a[0].numpy()[:, 0], x) and a[1].tolist() == y.tolist() and a[4][9] == "Ankle boot"
    write_mnist(tmp_path / "tv" / "MNIST" / "raw", gz=False)
    monkeypatch.setenv("CL_DATA_MNIST", str(tmp_path / "tv"))  # root from an environment variable
    sc = build("mnist/5")
    assert len(sc) == 5 and sc.input_shape == (1, 28, 28) and sum(len(e) for e in sc) == 40
    sc = build("rotated-mnist", n_tasks=2)
    assert sc.setting == "domain" and sc.meta["source"] == "mnist"


def test_permuted_mnist_falls_back_to_embedded():
    sc = build("permuted-mnist", n_tasks=2, train_per_class=5, test_per_class=2)
    assert sc.meta["source"] == "embedded" and sc.setting == "domain" and len(sc) == 2


# -- TinyImageNet --------------------------------------------------------------------------------------------
def test_tiny_imagenet_layout(tmp_path):
    r = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03", "n04"]
    (r / "val" / "images").mkdir(parents=True)
    (r / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (r / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tfrog\nn03\tbus\nn04\tcar\n")
    ann = []
    for k, w in enumerate(wnids):
        for i in range(3):
            save_png(r / "train" / w / "images" / f"{w}_{i}.JPEG", rgb(10 * k + i, 64))
        (r / "train" / w / f"{w}_boxes.txt").write_text("")
        save_png(r / "val" / "images" / f"val_{k}.JPEG", rgb(100 + k, 64))
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t10\t10")
    (r / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    sc = build("tiny-imagenet/2", root=str(tmp_path), image_size=16, order="natural")
    assert sc.input_shape == (3, 16, 16) and sc.class_names == ["goldfish", "frog", "bus", "car"]
    assert [len(e) for e in sc] == [6, 6] and [len(e.test_y) for e in sc] == [2, 2]
    with pytest.raises(DatasetNotFound, match="lacks.*val/val_annotations.txt"):
        (r / "val" / "val_annotations.txt").unlink()
        build("tiny-imagenet", root=str(r))


# -- ImageNet-R and the user's image folder ----------------------------------------------------------------------
def write_class_folder(root: Path, classes, n=5, hw=12):
    k = 0
    for c in classes:
        for i in range(n):
            save_png(root / c / (f"{i}.jpg" if i % 2 else f"{i}.png"), rgb(1000 + k, hw))  # JPEG and PNG
            k += 1


def test_imagenet_r_flat_layout_split(tmp_path):
    write_class_folder(tmp_path / "imagenet-r", [f"n{i:03d}" for i in range(4)], n=5, hw=20)
    sc = build("imagenet-r", root=str(tmp_path), n_tasks=2, image_size=8)
    assert sc.input_shape == (3, 8, 8) and sc.n_classes == 4
    assert sum(len(e) for e in sc) == 16 and sum(len(e.test_y) for e in sc) == 4  # 80/20 per class
    for e in sc:
        tr = {tuple(v.flatten().tolist()) for v in e.train_x}
        assert not any(tuple(v.flatten().tolist()) in tr for v in e.test_x)  # no test image in training


def test_image_folder_task_classes_and_errors(tmp_path):
    write_class_folder(tmp_path / "mine", ["apple", "pear", "plum", "fig", "kiwi", "lime"], n=4)
    sc = build("image-folder", root=str(tmp_path / "mine"), task_classes=[["pear", "fig"], ["lime"], ["apple"]])
    assert len(sc) == 3 and [len(e.classes) for e in sc] == [2, 1, 1]
    assert sc.class_names == ["pear", "fig", "lime", "apple"] and sc.n_classes == 4
    sc = build("image-folder", root=str(tmp_path / "mine"), n_tasks=3)
    assert all(len(e.classes) == 2 for e in sc)
    with pytest.raises(ConfigError, match="n_tasks=4 does not divide the 6 classes"):
        build("image-folder", root=str(tmp_path / "mine"), n_tasks=4)
    with pytest.raises(ConfigError, match="unknown classes \\['banana'\\]"):
        build("image-folder", root=str(tmp_path / "mine"), task_classes=[["apple", "banana"]])
    with pytest.raises(DatasetNotFound, match="no <class>/ folders"):
        (tmp_path / "empty").mkdir()
        build("image-folder", root=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="needs a root"):
        build("image-folder")


# -- CORe50 ----------------------------------------------------------------------------------------------------
def write_core50(root: Path):
    img = root / "core50_128x128"
    k = 0
    rel = {}
    for s in (1, 2, 3):
        for o in (1, 2, 6, 7):  # objects 0,1 (category 0) and 5,6 (category 1)
            for f in range(2):
                p = f"s{s}/o{o}/C_{s:02d}_{o:02d}_{f:03d}.png"
                save_png(img / p, rgb(k, 16))
                rel.setdefault(s, []).append((p, o - 1))
                k += 1
    for name in ("paths.pkl", "labels.pkl", "LUP.pkl", "labels2names.pkl"):
        (root / name).write_bytes(pickle.dumps({}))
    ni = root / "batches_filelists" / "NI_inc" / "run0"
    ni.mkdir(parents=True)
    for b, s in enumerate((1, 2)):
        (ni / f"train_batch_{b:02d}_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in rel[s]))
    (ni / "test_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in rel[3]))
    nc = root / "batches_filelists" / "NC_inc" / "run0"
    nc.mkdir(parents=True)
    first = [(p, lab) for s in (1, 2) for p, lab in rel[s] if lab in (5, 6)]
    second = [(p, lab) for s in (1, 2) for p, lab in rel[s] if lab in (0, 1)]
    (nc / "train_batch_00_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in first))
    (nc / "train_batch_01_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in second))
    (nc / "test_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in rel[3]))
    nic = root / "batches_filelists" / "NIC_inc" / "run1"
    nic.mkdir(parents=True)
    b0 = [(p, lab) for p, lab in rel[1] if lab in (0, 5)]
    b1 = [(p, lab) for p, lab in rel[1] + rel[2] if lab in (1, 6)] + [(p, lab) for p, lab in rel[2] if lab == 0]
    (nic / "train_batch_00_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in b0))
    (nic / "train_batch_01_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in b1))
    (nic / "test_filelist.txt").write_text("".join(f"{p} {lab}\n" for p, lab in rel[3]))


def test_core50_ni_nc(tmp_path):
    write_core50(tmp_path / "core50")
    nc = build("core50-nc", root=str(tmp_path / "core50"), image_size=8)
    assert nc.setting == "class" and len(nc) == 2 and nc.class_order == [5, 6, 0, 1]
    assert nc[0].classes == [0, 1] and nc[1].classes == [2, 3] and [len(e) for e in nc] == [8, 8]
    assert set(nc[0].test_y.tolist()) == {0, 1} and len(nc[0].test_y) == 4
    ni = build("core50-ni", root=str(tmp_path / "core50"), image_size=8, object_level=False)
    assert ni.setting == "domain" and ni.n_classes == 2 and all(e.classes == [0, 1] for e in ni)
    assert sum(len(e.test_y) for e in ni) == 8
    nic = build("core50-nic", root=str(tmp_path / "core50"), run=1, image_size=8, train_per_batch=3)
    assert nic.class_order[:2] == [0, 5] and [len(e) for e in nic] == [3, 3]
    assert sum(len(e.test_y) for e in nic) == 8
    with pytest.raises(DatasetNotFound, match="NIC_inc/run0"):
        build("core50-nic", root=str(tmp_path / "core50"))


# -- DomainNet ---------------------------------------------------------------------------------------------------
def test_domainnet_domain_incremental(tmp_path):
    r = tmp_path / "domainnet"
    for di, d in enumerate(("clipart", "sketch")):
        lines = {"train": [], "test": []}
        for lab, c in enumerate(("apple", "bee", "cat")):
            for i in range(3):
                p = f"{d}/{c}/{c}_{i}.jpg"
                save_png(r / p, rgb(100 * di + 10 * lab + i, 10))
                lines["train" if i < 2 else "test"].append(f"{p} {lab}")
        for s in lines:
            (r / f"{d}_{s}.txt").write_text("\n".join(lines[s]) + "\n")
    sc = build("domainnet", root=str(tmp_path), domains=["clipart", "sketch"], image_size=8)
    assert sc.setting == "domain" and len(sc) == 2 and sc.meta["domains"] == ["clipart", "sketch"]
    assert sc.class_names == ["apple", "bee", "cat"] and all(len(e) == 6 and len(e.test_y) == 3 for e in sc)
    assert (sc[1].train_t == 1).all()
    ci = build("domainnet", root=str(tmp_path), domains=["clipart", "sketch"], setting="class", n_tasks=3,
               image_size=8)
    assert ci.setting == "class" and [len(e) for e in ci] == [4, 4, 4]
    with pytest.raises(DatasetNotFound, match="painting_train.txt"):
        build("domainnet", root=str(tmp_path), domains=["painting"])


# -- CLOC -----------------------------------------------------------------------------------------------------------
def test_cloc_time_ordered(tmp_path):
    r = tmp_path / "cloc"
    locs, labels, times = [], [], []
    rs = np.random.RandomState(0)
    for i in range(40):
        p = f"{i % 3}/{i}.jpg"
        save_png(r / "dataset" / "images" / p, rgb(i, 10))
        locs.append(p)
        labels.append(int(rs.randint(0, 4)))
        times.append(float(1000 - 10 * i))  # stored newest first: the loader sorts by time
    r.mkdir(exist_ok=True)
    torch.save(labels, r / "train_labels.torchSave")
    torch.save(torch.tensor(times), r / "train_time.torchSave")
    torch.save(locs, r / "train_store_loc.torchSave")
    torch.save([0] * 40, r / "train_userID.torchSave")
    sc = build("cloc", root=str(r), n_tasks=4, image_size=8, test_fraction=0.1)
    assert sc.boundaries == "hidden" and len(sc) == 4 and all(e.task_id is None for e in sc)
    t = torch.cat([e.train_time for e in sc])
    assert (t[1:] >= t[:-1]).all()  # time-ordered across the stream
    assert sum(len(e) for e in sc) + sum(len(e.test_y) for e in sc) == 40
    assert sc[0].train_time.max() < sc[1].train_time.min()


# -- CLI smoke: a fabricated folder through the engine, with on-device augmentation ---------------------------------
def test_cli_run_image_folder_with_augment(tmp_path):
    from cl.train.engine import Run

    write_class_folder(tmp_path / "mine", ["a", "b", "c", "d"], n=6, hw=8)
    raw = {"strategy": {"name": "er"}, "scenario": {"name": "image-folder", "root": str(tmp_path / "mine"),
                                                   "image_size": 8, "augment": "crop_flip"},
           "backbone": {"name": "mlp", "hidden": 16}, "protocol": {"name": "offline", "epochs": 1},
           "wandb": "off", "out": str(tmp_path / "out")}
    res = Run(resolve(raw), progress=False).execute()
    assert res["status"] == "finished", res.get("error")
    assert len(res["R"]) == 2


def test_dataset_backed_streaming_path(tmp_path):
    from cl.data.cache import ImagePathDataset, decode_paths_cached, image_folder_index, materialize, streaming_loader

    write_class_folder(tmp_path / "big", ["a", "b"], n=5, hw=12)
    paths, labels, names = image_folder_index(tmp_path / "big")
    ds = ImagePathDataset(paths, labels, size=8)
    batches = list(streaming_loader(ds, batch_size=4, shuffle=True, workers=0))
    assert sum(len(y) for _, y in batches) == 10 and batches[0][0].dtype == torch.uint8
    assert tuple(batches[0][0].shape[1:]) == (3, 8, 8)
    x, y = materialize(ds, batch_size=3, workers=1)  # worker processes decode in parallel
    assert torch.equal(x, decode_paths_cached("t", paths, 8)) and y.tolist() == labels
