"""The Avalanche adapter yields the same samples as iterating the Avalanche benchmark (benchmarks from tensors)."""
import warnings

import pytest
import torch

from cl.core.config import resolve, section_config
from cl.core.registry import ConfigError, scenarios

warnings.filterwarnings("ignore")
av = pytest.importorskip("avalanche")
from avalanche.benchmarks.scenarios import benchmark_from_datasets, class_incremental_benchmark  # noqa: E402
from avalanche.benchmarks.scenarios.deprecated.generators import tensors_benchmark  # noqa: E402
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_ds  # noqa: E402

from scenarios.avalanche_adapter import from_avalanche  # noqa: E402


def data(n_classes=6, per=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_classes * per, 1, 4, 4), generator=g).to(torch.uint8)
    y = torch.arange(n_classes).repeat(per)
    return x, y


def iterate(stream):
    """What a user of Avalanche sees: each experience's dataset, item by item."""
    out = []
    for e in stream:
        d = e.dataset.eval()
        items = [d[i] for i in range(len(d))]
        out.append((torch.stack([torch.as_tensor(it[0]) for it in items]),
                    torch.tensor([int(it[1]) for it in items]), torch.tensor([int(it[2]) for it in items])))
    return out


def assert_same(sc, bm):
    for ours, (x, y, _) in zip(sc.experiences, iterate(bm.train_stream)):
        assert torch.equal(ours.train_x, x)
        assert [sc.class_order[k] for k in ours.train_y.tolist()] == y.tolist()
    return True


def test_class_incremental_benchmark_same_samples():
    (x, y), (xt, yt) = data(), data(per=3, seed=1)
    bm = class_incremental_benchmark({"train": tensor_ds(x, y), "test": tensor_ds(xt, yt)}, num_experiences=3,
                                     seed=1)
    sc = from_avalanche(bm, "av-ci")
    assert len(sc) == 3 and sc.setting == "class" and sc.n_classes == 6 and sc.input_shape == (1, 4, 4)
    assert assert_same(sc, bm)
    for ours, (xte, yte, _) in zip(sc.experiences, iterate(bm.test_stream)):
        assert torch.equal(ours.test_x, xte)
        assert [sc.class_order[k] for k in ours.test_y.tolist()] == yte.tolist()
        assert set(ours.test_y.tolist()) == set(ours.classes) and len(ours.classes) == 2
    assert sc.class_order == [c for e in bm.train_stream for c in sorted(e.classes_in_this_experience)]


def test_tensors_benchmark_with_task_labels_is_task_incremental():
    x, y = data()
    xt, yt = data(per=2, seed=3)
    bm = tensors_benchmark([(x[:24], y[:24]), (x[24:], y[24:])], [(xt, yt), (xt, yt)], task_labels=[0, 1])
    sc = from_avalanche(bm)
    assert sc.setting == "task" and [e.task_id for e in sc] == [0, 1]
    assert (sc[1].train_t == 1).all() and (sc[0].test_t == 0).all()
    assert assert_same(sc, bm)


def test_single_test_experience_is_split_by_classes():
    x, y = data()
    xt, yt = data(per=2, seed=4)
    m0, m1 = y < 3, y >= 3
    bm = benchmark_from_datasets(train=[tensor_ds(x[m0], y[m0]), tensor_ds(x[m1], y[m1])],
                                 test=[tensor_ds(xt, yt)])
    sc = from_avalanche(bm)
    assert [len(e.test_y) for e in sc] == [6, 6] and set(sc[1].test_y.tolist()) == set(sc[1].classes)
    assert assert_same(sc, bm)


def test_registered_factory_from_config(tmp_path):
    from cl.core.registry import load_plugin_file

    load_plugin_file(__name__)  # a factory outside avalanche.benchmarks must come from a module named as a plugin
    r = resolve({"scenario": {"name": "avalanche", "factory": f"{__name__}.tiny_factory",
                              "kwargs": "{n: 3}"}})
    sc = scenarios.get("avalanche").obj(section_config(r, "scenario"), 0)
    assert len(sc) == 3 and sc.meta["source"] == "avalanche"
    assert section_config(resolve({"scenario": "avalanche:SplitMNIST"}), "scenario").factory.endswith("SplitMNIST")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        scenarios.get("avalanche").obj(section_config(resolve({"scenario": {"name": "avalanche",
                                                               "factory": f"{__name__}.nope"}}),
                                                      "scenario"), 0)


def tiny_factory(n=3, seed=0):
    (x, y), (xt, yt) = data(), data(per=2, seed=1)
    return class_incremental_benchmark({"train": tensor_ds(x, y), "test": tensor_ds(xt, yt)}, num_experiences=n,
                                       seed=seed)
