"""The feature cache: bit-identical reuse across runs and seeds, invalidation, concurrent fills,
and frozen-feature runs through the engine (linear-probe)."""
import threading

import numpy as np
import pytest
import torch

from cl.models import features as FC
from cl.core.config import resolve
from cl.core.registry import scenarios


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CL_FEATURE_CACHE", raising=False)
    return tmp_path / "cache"


VIT = {"name": "vit-tiny", "img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}


def cfg(seed=0, backbone=VIT, strategy="linear-probe", **scen):
    return resolve({"strategy": strategy, "scenario": {"name": "split-digits", **scen}, "backbone": backbone,
                    "seed": seed, "wandb": "off"})


def scen(c):
    return scenarios.get(c["scenario"]["name"]).obj(__import__("cl.core.config").core.config.section_config(c, "scenario"),
                                                    c["seed"])


def feats(sc):
    return {(i, s): getattr(e, f"{s}_x") for i, e in enumerate(sc) for s in ("train", "test")}


def test_cache_bit_identical_and_reused_across_seeds(cache):
    c0 = cfg(0)
    torch.manual_seed(0)
    f1 = FC.featurize(scen(c0), c0, "cpu")
    assert f1.modality == "features" and f1.input_shape == (32,) and FC.LAST_STATS["misses"] == 2
    assert len(list((cache / "features").glob("*/features.npy"))) == 2  # train and test entries
    torch.manual_seed(0)
    f2 = FC.featurize(scen(c0), c0, "cpu")
    assert FC.LAST_STATS["hits"] == 2 and FC.LAST_STATS["computed"] == 0
    for k, v in feats(f1).items():
        assert torch.equal(v, feats(f2)[k])  # bit-identical
    # another seed: another class order, the same weights (fixed torch seed) -> the same entries
    c1 = cfg(1)
    torch.manual_seed(0)
    s1 = scen(c1)
    assert s1.class_order != scen(c0).class_order
    f3 = FC.featurize(s1, c1, "cpu")
    assert FC.LAST_STATS["hits"] == 2
    # and the rows follow the samples: recompute without the cache and compare
    torch.manual_seed(0)
    f4 = FC.featurize(scen(c1), c1, "cpu", use_cache=False)
    for k, v in feats(f3).items():
        assert torch.allclose(v, feats(f4)[k], atol=1e-5)
    assert f3[0].train_y.tolist() == s1[0].train_y.tolist()


def test_cache_invalidated_by_preprocessing_and_weights(cache):
    c0 = cfg(0)
    torch.manual_seed(0)
    FC.featurize(scen(c0), c0, "cpu")
    keys0 = set(FC.LAST_STATS["keys"])
    c_pp = cfg(0, backbone={**VIT, "img_size": 20})  # the preprocessing (input size) changes
    torch.manual_seed(0)
    FC.featurize(scen(c_pp), c_pp, "cpu")
    assert FC.LAST_STATS["misses"] == 2 and not keys0 & set(FC.LAST_STATS["keys"])
    torch.manual_seed(5)  # other weights
    FC.featurize(scen(c0), c0, "cpu")
    assert FC.LAST_STATS["misses"] == 2
    # data change: a subset is another data set
    c_sub = cfg(0, test_fraction=0.3)
    torch.manual_seed(0)
    FC.featurize(scen(c_sub), c_sub, "cpu")
    assert FC.LAST_STATS["misses"] == 2


def test_concurrent_fill_is_safe(cache):
    from cl.models.backbones.small import Identity

    x = torch.randint(0, 255, (40, 1, 4, 4), dtype=torch.uint8)
    calls = []

    class Slow(Identity):
        def forward(self, x):
            calls.append(len(x))
            threading.Event().wait(0.05)
            return super().forward(x)

    out, errors = [], []

    def work():
        try:
            out.append(FC.split_features(Slow((1, 4, 4)), [x[:25], x[25:]], {"k": 1}, lambda b: b.float(), "cpu",
                                         8, True, False, {}))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 3
    assert sum(calls) == 40  # computed once, by one writer
    for o in out[1:]:
        assert all(torch.equal(a, b) for a, b in zip(o, out[0]))
    assert torch.equal(torch.cat(out[0]), x.float().flatten(1))
    assert not list((cache / "features").glob(".*tmp*"))
    # a second writer of the same finished entry does not clobber it
    entry = next(p for p in (cache / "features").iterdir() if p.is_dir())
    h = np.load(entry / "hashes.npy")
    FC._write_entry(entry, h, np.zeros((len(h), 16), np.float32), {})
    assert np.load(entry / "features.npy").any()


def test_linear_probe_run_through_engine(tmp_path):
    from cl.train.engine import Run

    raw = {"strategy": {"name": "linear-probe", "lr": 0.1}, "scenario": "split-digits", "backbone": VIT,
           "protocol": {"name": "offline", "epochs": 2}, "wandb": "off", "out": str(tmp_path / "res")}
    r = Run(resolve(raw), progress=False).execute()
    assert r["status"] == "finished", r.get("error")
    assert r["trainable_params"] == 32 * 10 + 10  # only the linear head
    assert r["metrics"]["avg_acc"] > 0.1


def test_engine_uses_backbone_preprocessing(tmp_path):
    """A non-frozen run with a ViT built for 16 px on 8 px digits: the engine resizes to the backbone."""
    from cl.train.engine import Run

    raw = {"strategy": "finetune", "scenario": {"name": "split-digits", "n_tasks": 5}, "backbone": VIT,
           "protocol": {"name": "offline", "epochs": 1, "batch_size": 64}, "wandb": "off", "out": str(tmp_path)}
    r = Run(resolve(raw), progress=False).execute()
    assert r["status"] == "finished", r.get("error")
