"""Any Avalanche benchmark (a ``CLScenario`` with ``train_stream`` / ``test_stream``) as a platform scenario.

    from scenarios.avalanche_adapter import from_avalanche
    scenario = from_avalanche(SplitMNIST(n_experiences=5, dataset_root=...))

From the CLI, any factory that returns a benchmark::

    cl run -s er -d avalanche --set scenario.factory=avalanche.benchmarks.classic.SplitMNIST \\
        --set scenario.kwargs='{n_experiences: 5, dataset_root: /data/mnist}'
    cl run -s er -d avalanche:SplitCIFAR100 --set scenario.kwargs='{n_experiences: 10}'

Each experience's dataset is read once, in its order, with its *eval* transforms (augmentation then runs on
the device, see :mod:`cl.data.augment`), into tensors.  Labels are renumbered to the order in which classes first
appear in the train stream (``Scenario.class_order[k]`` is Avalanche's class id of label ``k``).  Task
labels: when the train stream has more than one task label, the scenario is task-incremental and the
per-sample task labels go to ``train_t`` / ``test_t``.  A test stream with one experience (as in NI
benchmarks) is split by each train experience's classes (class-incremental) or in stratified shards.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass, make_dataclass

import torch

from cl.core.registry import ConfigError, scenarios
from cl.core.streams import Experience, Scenario

#: factories of avalanche.benchmarks.classic registered as ``avalanche:<Name>`` (imported lazily)
CLASSIC = ["CLEAR", "CLStream51", "CORe50", "EndlessCLSim", "OpenLORIS", "PermutedMNIST", "RotatedMNIST",
           "SplitCIFAR10", "SplitCIFAR100", "SplitCIFAR110", "SplitCUB200", "SplitFMNIST", "SplitImageNet",
           "SplitInaturalist", "SplitMNIST", "SplitOmniglot", "SplitTinyImageNet"]


def _dataset_tensors(ds, batch_size: int = 1024):
    """(x, y, t or None) of an Avalanche dataset, in its order, with its eval transforms."""
    if hasattr(ds, "eval"):
        try:
            ds = ds.eval()
        except TypeError:
            pass
    collate = getattr(ds, "collate_fn", None)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0,
                                     **({"collate_fn": collate} if collate is not None else {}))
    xs, ys, ts = [], [], []
    for batch in dl:
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).long())
        if len(batch) > 2:
            ts.append(torch.as_tensor(batch[2]).long())
    if not xs:
        return None, torch.zeros(0, dtype=torch.long), None
    return torch.cat(xs), torch.cat(ys), (torch.cat(ts) if ts else None)


def _shards(y, n, seed=0):
    from cl.data.domains import _shards as sh

    return sh(y, n, torch.Generator().manual_seed(seed))


def from_avalanche(benchmark, name: str = "avalanche", batch_size: int = 1024) -> Scenario:
    """Convert an Avalanche benchmark into a :class:`~cl.core.streams.Scenario` (see the module doc)."""
    if not hasattr(benchmark, "train_stream") or not hasattr(benchmark, "test_stream"):
        raise ConfigError(f"{name}: expected an Avalanche CLScenario with train_stream and test_stream, "
                          f"got {type(benchmark).__name__}")
    train = [_dataset_tensors(e.dataset, batch_size) for e in benchmark.train_stream]
    test_exps = list(benchmark.test_stream)
    test = [_dataset_tensors(e.dataset, batch_size) for e in test_exps]
    if not train:
        raise ConfigError(f"{name}: the benchmark's train stream is empty")
    train_task = [getattr(e, "task_label", None) for e in benchmark.train_stream]
    # class order: first appearance in the train stream (sorted within an experience)
    order: list[int] = []
    for _, y, _ in train:
        for c in sorted(set(y.tolist()) - set(order)):
            order.append(c)
    for _, y, _ in test:
        for c in sorted(set(y.tolist()) - set(order)):
            order.append(c)
    remap = torch.full((max(order) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(len(order))
    t_all = set()
    for _, _, t in train:
        if t is not None:
            t_all |= set(t.tolist())
    t_all |= {t for t in train_task if t is not None}
    task_aware = len(t_all) > 1
    cls_sets = [set(y.tolist()) for _, y, _ in train]
    disjoint = all(not (a & b) for i, a in enumerate(cls_sets) for b in cls_sets[i + 1:])
    all_classes = set(order)
    domain = len(train) > 1 and all(s == all_classes for s in cls_sets)
    # pair test data with train experiences
    if len(test) == len(train):
        pairs = test
    elif len(test) == 1:
        xte, yte, tte = test[0]
        if disjoint and not domain:
            pairs = []
            for s in cls_sets:
                m = torch.isin(yte, torch.tensor(sorted(s), dtype=torch.long))
                pairs.append((xte[m], yte[m], None if tte is None else tte[m]))
        else:
            pairs = [(xte[i], yte[i], None if tte is None else tte[i]) for i in _shards(yte, len(train))]
    else:
        raise ConfigError(f"{name}: the test stream has {len(test)} experiences for {len(train)} train experiences; "
                          f"expected as many, or one")
    exps = []
    for i, ((x, y, t), (xt, yt, tt)) in enumerate(zip(train, pairs)):
        yr = remap[y]
        tid = train_task[i] if task_aware else None
        if task_aware and tid is None and t is not None and len(torch.unique(t)) == 1:
            tid = int(t[0])
        if xt is None:
            xt = x[:0]
        exps.append(Experience(x, yr, xt, remap[yt], sorted(torch.unique(yr).tolist()), tid, index=i,
                               train_t=t if task_aware else None, test_t=tt if task_aware else None))
    x0 = train[0][0]
    modality = "image" if x0.dim() == 4 else ("vector" if x0.dim() == 2 else "image")
    setting = "task" if task_aware else ("domain" if domain else ("class" if disjoint else "data"))
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(x0.shape[1:]),
                    class_order=order, setting=setting, modality=modality,
                    meta={"source": "avalanche", "benchmark": type(benchmark).__name__, "augment": "none"})


ALLOWED_FACTORY_PACKAGES = ("avalanche.benchmarks",)


def check_factory(path: str) -> tuple[str, str]:
    """(module, attribute) of a factory that may be called: one from avalanche.benchmarks, or from a module
    the user named explicitly (``--plugin``, or ``plugins:`` in a sweep file). Anything else (``subprocess.run``,
    ``os.system``...) is refused before it is imported: a config value never chooses which code runs."""
    from cl.core.registry import USER_MODULES

    mod, _, attr = path.rpartition(".")
    if not mod:
        mod, attr = "avalanche.benchmarks.classic", path
    allowed = any(mod == p or mod.startswith(p + ".") for p in ALLOWED_FACTORY_PACKAGES) or mod in USER_MODULES
    if not allowed:
        named = ", ".join(sorted(USER_MODULES)) or "none"
        raise ConfigError(f"scenario.factory={path!r}: a factory must come from avalanche.benchmarks or from a "
                          f"module you load explicitly with --plugin FILE.py|module (or plugins: [...] in a sweep "
                          f"file); modules loaded now: {named}")
    return mod, attr


def _resolve_factory(path: str):
    if not path:
        raise ConfigError("avalanche: set scenario.factory to a benchmark factory, e.g. "
                          "avalanche.benchmarks.classic.SplitMNIST (or module.attr of a --plugin module)")
    mod, attr = check_factory(path)
    from cl.core.registry import plugin_module_name

    try:  # a --plugin FILE.py is known by its file name (my_benchmarks.make for my_benchmarks.py)
        obj = sys.modules.get(plugin_module_name(mod + ".py")) or importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(f"avalanche: cannot import module {mod!r} of factory {path!r}: {e}") from None
    for part in attr.split(":"):
        if not hasattr(obj, part):
            raise ConfigError(f"avalanche: module {mod!r} has no attribute {part!r} (factory {path!r})")
        obj = getattr(obj, part)
    return obj


@dataclass
class AvalancheConfig:
    factory: str = ""  # module.attr of a function returning an Avalanche CLScenario
    kwargs: dict | None = None  # keyword arguments of the factory (YAML mapping or '{k: v}' on the CLI)
    pass_seed: bool = True  # give the run seed as `seed=` when the factory takes one and kwargs do not
    augment: str = "none"  # on-device augmentation (cl/augment.py)

    def validate(self):  # called when the config is resolved: a refused factory fails before any run starts
        if self.factory:
            check_factory(self.factory)


def avalanche_benchmark(cfg: AvalancheConfig, seed: int):
    """Any Avalanche benchmark factory (scenario.factory=module.attr, scenario.kwargs={...})."""
    import yaml

    fn = _resolve_factory(cfg.factory)
    kw = cfg.kwargs or {}
    if isinstance(kw, str):
        kw = yaml.safe_load(kw) or {}
    if not isinstance(kw, dict):
        raise ConfigError(f"avalanche: kwargs must be a mapping, got {kw!r}")
    kw = dict(kw)
    if cfg.pass_seed and "seed" not in kw:
        try:
            if "seed" in inspect.signature(fn).parameters:
                kw["seed"] = seed
        except (TypeError, ValueError):
            pass
    try:
        bm = fn(**kw)
    except TypeError as e:
        raise ConfigError(f"avalanche: {cfg.factory}(**{kw}) failed: {e}") from None
    sc = from_avalanche(bm, name=f"avalanche:{cfg.factory.rpartition('.')[2] or cfg.factory}")
    from cl.data.settings import AUGMENTS

    if cfg.augment not in AUGMENTS:
        from cl.core.registry import unknown

        raise unknown("augment", cfg.augment, AUGMENTS)
    sc.meta["augment"] = cfg.augment
    return sc


scenarios.register("avalanche", AvalancheConfig)(avalanche_benchmark)
for _n in CLASSIC:
    _cfg = make_dataclass(f"AvalancheConfig_{_n}", [("factory", str, f"avalanche.benchmarks.classic.{_n}")],
                          bases=(AvalancheConfig,))
    _cfg.__module__ = __name__
    scenarios.register(f"avalanche:{_n}", _cfg, f"Avalanche's {_n} (kwargs via scenario.kwargs)")(avalanche_benchmark)
