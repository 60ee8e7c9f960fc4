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
