"""Invariants of the setting builders (cl/settings.py) and the on-device augmentation (cl/augment.py)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from cl.core.registry import ConfigError
from cl.data.domains import rotate_images
from cl.data.settings import SettingConfig, build_setting, named_class_order
from cl.data.task_free import gradual_weights, stochastic_task_sizes


def fake_images(n_classes=10, per_class=40, test_per_class=10, c=1, hw=8, seed=0):
    """Unique uint8 images: pixel 0 and 1 encode the sample index, so identity is checkable."""
    g = torch.Generator().manual_seed(seed)

    def make(per, offset):
        n = n_classes * per
        x = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
        ids = torch.arange(n) + offset
        x[:, 0, 0, 0] = (ids % 256).to(torch.uint8)
        x[:, 0, 0, 1] = (ids // 256).to(torch.uint8)
        y = torch.arange(n_classes).repeat_interleave(per)
        return x, y

    xtr, ytr = make(per_class, 0)
    xte, yte = make(test_per_class, 10_000)
    return xtr, ytr, xte, yte


def ident(x):
    return set((x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist())


DATA = fake_images()
NAMES = [f"c{i}" for i in range(10)]


def build(**kw):
    cfg = replace(SettingConfig(), **kw)
    return build_setting("fake", *DATA, cfg, seed=kw.pop("seed", 0) if "seed" in kw else 0, class_names=NAMES)


def test_class_incremental_invariants():
    sc = build(n_tasks=5)
    assert sc.setting == "class" and sc.boundaries == "visible" and len(sc) == 5
    seen = set()
    for e in sc:
        assert len(e.classes) == 2 and not (set(e.classes) & seen)
        seen |= set(e.classes)
        assert set(e.train_y.tolist()) == set(e.classes) == set(e.test_y.tolist())
        assert e.task_id is None
        assert not (ident(e.train_x) & ident(e.test_x))  # no test image in training data
    assert seen == set(range(10))
    assert sc.class_names == [NAMES[c] for c in sc.class_order]
    assert sum(len(e) for e in sc) == len(DATA[1])


def test_task_incremental_has_task_ids():
    sc = build(n_tasks=5, setting="task")
    assert sc.setting == "task" and sc.task_aware
    for t, e in enumerate(sc):
        assert e.task_id == t and (e.train_t == t).all() and (e.test_t == t).all()
    assert build(n_tasks=5, task_labels=True).setting == "task"


def test_data_incremental_disjoint_shards_with_all_classes():
    sc = build(n_tasks=4, setting="data")
    assert sc.setting == "data"
    ids = [ident(e.train_x) for e in sc]
    for i in range(4):
        assert set(sc[i].train_y.tolist()) == set(range(10))
        for j in range(i + 1, 4):
            assert not (ids[i] & ids[j])
    assert set().union(*ids) == ident(DATA[0])
    assert sum(len(e.test_y) for e in sc) == len(DATA[3])


def test_domain_rotation_and_permutation():
    sc = build(n_tasks=4, setting="domain", domain_shift="rotate", max_angle=360.0)
    assert sc.setting == "domain" and sc.meta["domain_params"] == [0.0, 90.0, 180.0, 270.0]
    x0, x1 = sc[0].train_x, sc[1].train_x
    assert all(set(e.train_y.tolist()) == set(range(10)) for e in sc)
    diff = [(x1.int() - torch.rot90(x0, k, (2, 3)).int()).abs().max().item() for k in (1, -1)]
    assert min(diff) <= 1  # a 90 degree rotation is an exact pixel rotation
    sp = build(n_tasks=3, setting="domain", domain_shift="permute")
    a, b = sp[0].train_x.flatten(1), sp[2].train_x.flatten(1)
    assert torch.equal(a.sort(1).values, b.sort(1).values) and not torch.equal(a, b)
    assert torch.equal(sp[0].train_x, build(n_tasks=3, setting="domain", domain_shift="permute")[0].train_x)
    assert (sp[2].train_t == 2).all()


def test_rotate_images_identity():
    x = DATA[0][:4]
    assert torch.equal(rotate_images(x, 0), x)


def test_hidden_boundaries_have_no_task_ids():
    sc = build(n_tasks=5, setting="task", boundaries="hidden")
    assert sc.boundaries == "hidden" and sc.setting == "class"
    assert all(e.task_id is None and e.train_t is None for e in sc)


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_blurry_share_within_tolerance(share):
    data = fake_images(per_class=100)
    cfg = replace(SettingConfig(), n_tasks=5, boundaries="blurry", disjoint_share=0.4, blurry_share=share)
    sc = build_setting("fake", *data, cfg, seed=3)
    assert sc.boundaries == "blurry"
    blurry, home = set(sc.meta["blurry_classes"]), sc.meta["home_classes"]
    assert len(blurry) == 6  # 60% of 10 classes
    total = {c: 0 for c in range(10)}
    away = {c: 0 for c in range(10)}
    for t, e in enumerate(sc):
        assert set(e.test_y.tolist()) == set(home[t])  # test data stays with the home task
        for c, ht in zip(e.train_y.tolist(), e.train_t.tolist()):
            assert c in home[ht]
            total[c] += 1
            away[c] += ht != t
    assert all(total[c] == 100 for c in range(10))  # every training sample used once
    for c in range(10):
        if c in blurry:
            assert abs(away[c] / total[c] - share) <= 0.02
        else:
            assert away[c] == 0


def test_si_blurry_random_task_sizes():
    sizes = stochastic_task_sizes(10, 4, seed=1)
    assert sum(sizes) == 10 and len(sizes) == 4 and min(sizes) >= 1
    cfg = replace(SettingConfig(), n_tasks=4, boundaries="blurry", stochastic_tasks=True)
    sc = build_setting("fake", *DATA, cfg, seed=1)
    assert [len(h) for h in sc.meta["home_classes"]] == sizes


def test_gradual_mixing_weights():
    data = fake_images(n_classes=4, per_class=200)
    cfg = replace(SettingConfig(), n_tasks=2, boundaries="gradual", gradual_width=0.5)
    sc = build_setting("fake", *data, cfg, seed=0)
    assert sc.boundaries == "gradual" and sc.meta["ordered"]
    t = torch.cat([e.train_t for e in sc]).numpy()
    pos = torch.cat([e.train_time for e in sc]).numpy()
    assert np.array_equal(pos, np.arange(800))
    w = np.asarray(sc.meta["mixing"])
    np.testing.assert_allclose(w, gradual_weights([400, 400], 0.5))
    assert (w[:300] == 0).all() and (w[500:] == 0).all()  # weights live in the window only
    assert np.allclose(np.diff(w[300:500]), 1 / 200)  # linear across the window
    # before the window only task 0, after it only task 1, in between the empirical share follows w
    assert (t[:300] == 0).all() and (t[510:] == 1).all()
    for lo in range(300, 500, 50):
        emp, exp = (t[lo:lo + 50] == 1).mean(), w[lo:lo + 50].mean()
        assert abs(emp - exp) < 0.25, (lo, emp, exp)
    assert sorted(np.bincount(t).tolist()) == [400, 400]  # every sample used once
    ys = torch.cat([e.train_y for e in sc])
    assert sorted(ident(torch.cat([e.train_x for e in sc]))) == sorted(ident(data[0]))
    assert len(ys) == 800


def test_named_class_orders():
    assert named_class_order("icarl", range(100), None)[:6] == [68, 56, 78, 8, 23, 84]
    assert named_class_order("pycil", range(100), 5) == named_class_order("icarl", range(100), 0)
    assert named_class_order("natural", [3, 1, 2], 7) == [1, 2, 3]
    assert named_class_order("seeded", range(10), 1) == named_class_order("seeded", range(10), 1)
    with pytest.raises(ConfigError, match="unknown class order 'icarll'.*icarl"):
        named_class_order("icarll", range(10), 0)
    sc = build(n_tasks=2, order="natural")
    assert sc.class_order == list(range(10)) and sc.meta["order"] == "natural"


def test_bad_splits_fail_before_training():
    with pytest.raises(ConfigError, match="n_tasks=3 does not divide the 10 classes"):
        build(n_tasks=3)
    with pytest.raises(ConfigError, match="unknown classes \\[42\\]"):
        build(n_tasks=2, class_order=[42, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    with pytest.raises(ConfigError, match="unknown class 'dog'"):
        build(n_tasks=2, classes=["c1", "dog"])
    with pytest.raises(ConfigError, match="unknown setting"):
        build(setting="clas")
    with pytest.raises(ConfigError, match="blurry_share"):
        build(boundaries="blurry", blurry_share=1.5)
    sc = build(n_tasks=2, classes=["c1", "c3", "c5", "c7"])
    assert sc.n_classes == 4 and sc.class_names and set(sc.class_names) == {"c1", "c3", "c5", "c7"}
    sc = build(n_tasks=3, first=4)
    assert [len(e.classes) for e in sc] == [4, 3, 3]


def test_subsampling_and_input_size():
    sc = build(n_tasks=5, train_per_class=7, test_per_class=3, input_size=16, augment="crop_flip")
    assert all(len(e) == 14 and len(e.test_y) == 6 for e in sc)
    assert sc.input_shape == (1, 16, 16) and sc.meta["augment"] == "crop_flip"
    out = sc.preprocess_fn(torch.device("cpu"))(sc[0].train_x[:3])
    assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32


# -- augmentation ---------------------------------------------------------------------------------------
def test_random_crop_is_a_shifted_window():
    from cl.data.augment import random_crop

    torch.manual_seed(0)
    x = torch.rand(32, 3, 8, 8)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    windows = lambda i: [xp[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]  # noqa: E731
    y = random_crop(x, 2)
    assert all(any(torch.equal(y[i], wdw) for wdw in windows(i)) for i in range(32))
    y = random_crop(x, 2, flip_p=0.5)
    flipped = [any(torch.equal(y[i], wdw.flip(2)) for wdw in windows(i)) for i in range(32)]
    plain = [any(torch.equal(y[i], wdw) for wdw in windows(i)) for i in range(32)]
    assert all(f or p for f, p in zip(flipped, plain)) and 4 < sum(flipped) < 28


def test_augment_kinds_shapes_and_ranges():
    from cl.data.augment import Augment, augment_for, colour_jitter, make_augment

    torch.manual_seed(0)
    x = torch.rand(32, 3, 16, 16)
    j = colour_jitter(x)
    assert j.min() >= 0 and j.max() <= 1 and not torch.equal(j, x)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    for kind in ("crop_flip", "crop_flip_jitter", "pcr"):
        a = Augment(kind, mean, std)
        y = a(xn)
        assert y.shape == xn.shape and torch.isfinite(y).all()
        back = y * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        assert back.min() > -1e-4 and back.max() < 1 + 1e-4  # stays a valid image
    assert Augment("crop_flip", size=24)(x).shape == (32, 3, 24, 24)
    assert make_augment("none") is None
    sc = build(n_tasks=5, augment="crop_flip")
    assert isinstance(augment_for(sc), Augment)
    with pytest.raises(ConfigError, match="unknown augment"):
        make_augment("flip_crop")


def test_gradual_domain_shift_and_blurry_needs_classes():
    sc = build(n_tasks=2, setting="domain", boundaries="gradual")
    assert sc.setting == "domain" and sc.boundaries == "gradual"
    assert set(sc[0].train_t.tolist()) == {0, 1} and set(sc[1].train_t.tolist()) == {0, 1}
    with pytest.raises(ConfigError, match="blurry needs disjoint classes"):
        build(setting="domain", boundaries="blurry")
