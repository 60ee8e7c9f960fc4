"""Boundaries of the scenario settings' validation and their documented defaults (issue 19: mutants of
cl/data/settings.py that passed the scenario tests).  ``validate`` is called directly: it is the check every
dataset scenario runs before any data is read."""
import pytest

from cl.core.registry import ConfigError
from cl.data.settings import SettingConfig, named_class_order, validate


def test_setting_defaults_are_the_documented_ones():
    c = SettingConfig()
    assert (c.n_tasks, c.setting, c.boundaries, c.task_labels, c.order) == (5, "class", "visible", False, "seeded")
    assert (c.max_angle, c.disjoint_share, c.blurry_share, c.gradual_width) == (180.0, 0.5, 0.1, 0.5)
    assert (c.stochastic_tasks, c.train_per_class, c.test_per_class, c.augment, c.input_size) == (False, 0, 0, "none", 0)


@pytest.mark.parametrize("field", ["disjoint_share", "blurry_share", "gradual_width"])
def test_shares_are_accepted_on_the_closed_unit_interval_and_rejected_outside(field):
    for ok in (0.0, 1.0, 0.5):
        validate(SettingConfig(**{field: ok}))
    for bad in (-1e-6, 1.000001, 2.0):
        with pytest.raises(ConfigError, match=field):
            validate(SettingConfig(**{field: bad}))


def test_n_tasks_must_be_at_least_one():
    validate(SettingConfig(n_tasks=1))
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="n_tasks"):
            validate(SettingConfig(n_tasks=bad))


def test_blurry_needs_disjoint_classes_and_domain_needs_a_known_shift():
    validate(SettingConfig(boundaries="blurry", setting="class"))
    validate(SettingConfig(boundaries="blurry", setting="task"))
    for s in ("domain", "data"):
        with pytest.raises(ConfigError, match="blurry"):
            validate(SettingConfig(boundaries="blurry", setting=s))
    validate(SettingConfig(setting="domain", domain_shift="permute"))
    validate(SettingConfig(setting="class", domain_shift="nonsense"))  # only checked for setting=domain
    with pytest.raises(ConfigError, match="domain_shift"):
        validate(SettingConfig(setting="domain", domain_shift="nonsense"))
    for field, bad in (("setting", "classes"), ("boundaries", "none!"), ("augment", "flip")):
        with pytest.raises(ConfigError, match=field):
            validate(SettingConfig(**{field: bad}))


def test_named_class_orders():
    classes = [7, 3, 5, 1]
    assert named_class_order("natural", classes, 0) == [1, 3, 5, 7]
    seeded = named_class_order("seeded", classes, 0)
    assert sorted(seeded) == [1, 3, 5, 7] and seeded == named_class_order("seeded", classes, 0)
    assert named_class_order("pycil", classes, 0) == named_class_order("icarl", classes, 0)
    with pytest.raises(ConfigError, match="class order"):
        named_class_order("random", classes, 0)


def _data(n_classes=6, per=4):
    import torch
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_classes).repeat_interleave(per)
    x = torch.randint(0, 255, (len(y), 1, 8, 8), generator=g, dtype=torch.uint8)
    return x, y, x.clone(), y.clone()


def _build(**kw):
    from cl.data.settings import build_setting
    return build_setting("toy", *_data(), SettingConfig(n_tasks=3, **kw), seed=0)


def test_build_setting_class_task_domain_data():
    sc = _build()
    cls = [sorted(e.classes) for e in sc.experiences]
    assert len(cls) == 3 and sorted(sum(cls, [])) == list(range(6)) and all(len(c) == 2 for c in cls)
    assert sc.setting == "class" and sc.experiences[0].train_t is None
    for t in (_build(setting="task"), _build(task_labels=True)):
        assert t.setting == "task" and [e.task_id for e in t.experiences] == [0, 1, 2]
        assert [e.train_t.unique().tolist() for e in t.experiences] == [[0], [1], [2]]
        assert [e.test_t.unique().tolist() for e in t.experiences] == [[0], [1], [2]]
    dom = _build(setting="domain")
    assert all(sorted(e.classes) == list(range(6)) for e in dom.experiences) and len(dom.experiences) == 3
    assert not (dom.experiences[1].train_x == dom.experiences[0].train_x).all()  # rotated per task
    data = _build(setting="data")
    assert sum(len(e.train_y) for e in data.experiences) == 24 and len(data.experiences) == 3


def test_build_setting_boundaries_orders_and_sizes():
    assert all(e.task_id is None for e in _build(boundaries="hidden").experiences)
    assert _build(boundaries="hidden").boundaries == "hidden"
    assert _build(boundaries="blurry").boundaries == "blurry"
    assert _build(boundaries="gradual").boundaries == "gradual"
    assert _build().boundaries == "visible"
    from cl.data.settings import build_setting
    a = build_setting("toy", *_data(), SettingConfig(n_tasks=3, order_seed=5), seed=0).class_order
    b = build_setting("toy", *_data(), SettingConfig(n_tasks=3, order_seed=5), seed=1).class_order
    c = build_setting("toy", *_data(), SettingConfig(n_tasks=3), seed=1).class_order
    assert a == b and sorted(a) == list(range(6)) and c == named_class_order("seeded", range(6), 1)
    assert _build(order="natural").class_order == list(range(6))
    assert _build(input_size=16).input_shape == (1, 16, 16) and _build().input_shape == (1, 8, 8)
    named = build_setting("toy", *_data(), SettingConfig(n_tasks=3, order="natural"), seed=0,
                          class_names=list("abcdef"))
    assert named.class_names == list("abcdef")
    with pytest.raises(ConfigError, match="class_order"):
        build_setting("toy", *_data(), SettingConfig(n_tasks=3, class_order=[0, 1, 2, 3, 4, 4]), seed=0)


# -- from the survivors of the first run (2026-12-01): each asserts behaviour on a constructed case ------------
def test_unknown_class_order_names_are_refused_whatever_they_sort_after():
    """Only seeded, natural, the named orders and their aliases exist: names that sort after 'seeded'
    ('shuffled', 'sorted') are refused too, not taken for the seeded order."""
    for bad in ("shuffled", "sorted", "zeta"):
        with pytest.raises(ConfigError, match="class order"):
            named_class_order(bad, [3, 1, 2], 0)


def test_domain_shift_is_only_checked_for_the_domain_setting():
    for s in ("class", "task", "data"):  # 'task' and 'data' sort on either side of 'domain'
        validate(SettingConfig(setting=s, domain_shift="nonsense"))


def test_per_class_limits_keep_the_seed_0_subsample_whatever_the_run_seed():
    """train_per_class / test_per_class keep a fixed subset: subsample(y, k) with seed 0, for every run seed."""
    from cl.data.settings import build_setting, subsample
    import torch

    y = torch.arange(3).repeat_interleave(5)
    assert subsample(y, 2).tolist() == subsample(y, 2, seed=0).tolist()
    assert subsample(y, 2, seed=0).tolist() != subsample(y, 2, seed=1).tolist()  # so the seed is visible
    x = torch.arange(15).view(15, 1, 1, 1).float()  # x = the sample's index
    keep = subsample(y, 2, seed=0)
    for run_seed in (0, 1):
        sc = build_setting("toy", x, y, x.clone(), y.clone(),
                           SettingConfig(n_tasks=1, order="natural", train_per_class=2, test_per_class=2), seed=run_seed)
        e = sc.experiences[0]
        assert sorted(e.train_x.flatten().long().tolist()) == keep.tolist()
        assert sorted(e.test_x.flatten().long().tolist()) == keep.tolist()


def test_restricting_classes_names_the_known_classes_and_refuses_repeats():
    from cl.data.settings import build_setting

    x, y, xt, yt = _data()
    with pytest.raises(ConfigError, match=r"unknown class 'z'; known classes: \['a', 'b', 'c', 'd', 'e', 'f'\]"):
        build_setting("toy", x, y, xt, yt, SettingConfig(n_tasks=3, classes=["z"]), seed=0, class_names=list("abcdef"))
    with pytest.raises(ConfigError, match=r"unknown class 9; known classes: \[0, 1, 2, 3, 4, 5\]"):
        build_setting("toy", x, y, xt, yt, SettingConfig(n_tasks=3, classes=[9]), seed=0)
    for cls, names in ((["b", "b"], list("abcdef")), ([1, 1], None), (["b", 1], list("abcdef"))):
        with pytest.raises(ConfigError, match="repeats a class"):
            build_setting("toy", x, y, xt, yt, SettingConfig(n_tasks=1, classes=cls), seed=0, class_names=names)
    sc = build_setting("toy", x, y, xt, yt, SettingConfig(n_tasks=1, order="natural", classes=["b", 3]), seed=0,
                       class_names=list("abcdef"))
    assert sc.class_names == ["b", "d"] and sorted(sc.class_order) == [1, 3]


def test_task_labels_turn_only_the_class_setting_into_the_task_setting():
    for s in ("domain", "data"):  # both sort after 'class'
        sc = _build(setting=s, task_labels=True)
        assert sc.setting == s and all(sorted(e.classes) == list(range(6)) for e in sc.experiences)


def test_a_single_class_builds_and_no_training_data_is_refused_by_name():
    import torch
    from cl.data.settings import build_setting

    x, y, xt, yt = _data(n_classes=1)
    sc = build_setting("toy", x, y, xt, yt, SettingConfig(n_tasks=1), seed=0)
    assert len(sc.experiences) == 1 and sc.experiences[0].classes == [0] and len(sc.experiences[0].train_y) == 4
    empty_x, empty_y = torch.zeros((0, 1, 8, 8), dtype=torch.uint8), torch.zeros((0,), dtype=torch.long)
    with pytest.raises(ConfigError, match="toy: no training data"):
        build_setting("toy", empty_x, empty_y, xt, yt, SettingConfig(n_tasks=1), seed=0)


def test_class_order_must_list_every_class_of_the_data():
    """An explicit order that leaves out a class (the smallest or the largest, so sorting before or after
    the data's classes) would drop that class's samples silently: it is refused before any split."""
    from cl.data.settings import build_setting

    for order in ([1, 2, 3, 4, 5], [0, 1, 2, 3, 4]):
        with pytest.raises(ConfigError, match=r"must list each class once; the data has classes \[0, 1, 2, 3, 4, 5\]"):
            build_setting("toy", *_data(), SettingConfig(n_tasks=5, class_order=order), seed=0)
    sc = build_setting("toy", *_data(), SettingConfig(n_tasks=3, class_order=[5, 4, 3, 2, 1, 0]), seed=0)
    assert sc.class_order == [5, 4, 3, 2, 1, 0]


def test_generated_domains_and_data_shards_are_those_of_seed_0_whatever_the_run_seed():
    import torch
    from cl.data.domains import data_incremental, generated_domains
    from cl.data.settings import build_setting

    x, y, xt, yt = _data()
    order = list(range(6))
    ref = {"data": data_incremental("toy", x, y, xt, yt, 2, order, seed=0),
           "domain": generated_domains("toy", x, y, xt, yt, 3, "permute", order, seed=0)}
    other = {"data": data_incremental("toy", x, y, xt, yt, 2, order, seed=1),
             "domain": generated_domains("toy", x, y, xt, yt, 3, "permute", order, seed=1)}
    for s, n in (("data", 2), ("domain", 3)):
        assert any(not torch.equal(a.train_x, b.train_x) for a, b in zip(ref[s].experiences, other[s].experiences))
        for run_seed in (0, 1):
            sc = build_setting("toy", x, y, xt, yt, SettingConfig(n_tasks=n, setting=s, order="natural",
                                                                  domain_shift="permute"), seed=run_seed)
            for a, b in zip(sc.experiences, ref[s].experiences, strict=True):
                assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
                assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)


def test_stochastic_task_sizes_apply_only_to_blurry_boundaries():
    """Si-Blurry's random task sizes (stochastic_tasks) belong to boundaries=blurry; other boundary kinds
    (sorting before or after 'blurry') keep the equal split."""
    import torch
    from cl.data.task_free import stochastic_task_sizes

    assert stochastic_task_sizes(6, 3, 0) == [1, 2, 3]
    for b in ("visible", "hidden", "gradual"):
        sc = _build(boundaries=b, stochastic_tasks=True, order="natural")
        if b == "gradual":  # experiences are stream segments: train_t is each sample's source task
            assert all(torch.equal(e.train_t, e.train_y // 2) for e in sc.experiences)
            continue
        assert [sorted(e.classes) for e in sc.experiences] == [[0, 1], [2, 3], [4, 5]]


def test_input_size_resizes_images_only():
    import torch
    from cl.data.settings import build_setting

    y = torch.arange(6).repeat_interleave(2)
    tokens = torch.randint(1, 50, (12, 7))
    feats = torch.randn(12, 5)
    for modality, x in (("text", tokens), ("features", feats), ("vector", feats)):  # after and before 'image'
        sc = build_setting("toy", x, y, x.clone(), y.clone(), SettingConfig(n_tasks=3, input_size=16), seed=0,
                           modality=modality)
        assert sc.input_shape == tuple(x.shape[1:]) and sc.modality == modality
    assert _build(input_size=16).input_shape == (1, 16, 16)
