"""Experiences and scenarios: the stream a strategy learns from.

An :class:`Experience` is one step of a stream (its training data, its test
data, its classes and task id).  A :class:`Scenario` is a plain, sliceable
sequence of experiences plus metadata.  Data is tensor-backed: images stay
``uint8`` until they reach the device, where ``Scenario.preprocess`` turns a
batch into floats.  Labels are renumbered so that class ``c`` of the class
order becomes label ``c`` (the order of first appearance), which lets a head
grow by unmasking outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from cl.core.registry import ConfigError


@dataclass
class Experience:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[int]  # labels (after renumbering) present in this experience
    task_id: int | None  # None when the scenario hides it
    index: int = 0
    train_t: torch.Tensor | None = None  # per-sample task ids (e.g. blurry streams)
    test_t: torch.Tensor | None = None
    train_time: torch.Tensor | None = None  # per-sample timestamps (time-ordered streams)

    def __len__(self) -> int:
        return len(self.train_y)


def default_preprocess(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input passes through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@dataclass(frozen=True)
class HiddenBoundary:
    """What ``before_experience`` / ``after_experience`` receive on a task-free stream (``scenario.boundaries``
    hidden, blurry or gradual): the index of the evaluation point, and nothing of the experience (no data,
    classes or task id), so that a strategy cannot learn where the stream's hidden boundaries are."""

    index: int
    boundaries: str = "hidden"
    task_id = None

    def __getattr__(self, name):
        raise AttributeError(f"experience.{name} is hidden from the strategy on a task-free stream "
                             f"(scenario.boundaries={self.boundaries!r}); only .index is known")


@dataclass
class Scenario:
    name: str
    experiences: list[Experience]
    n_classes: int
    input_shape: tuple
    class_order: list[int]  # original class ids in the order they were renumbered 0..C-1
    class_names: list[str] | None = None
    setting: str = "class"  # class | task | domain | data
    boundaries: str = "visible"  # visible | hidden | blurry | gradual
    mean: Sequence[float] | None = None  # normalisation applied in preprocess
    std: Sequence[float] | None = None
    modality: str = "image"  # image | text | features | vector
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.experiences)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Scenario(**{**self.__dict__, "experiences": self.experiences[i]})
        return self.experiences[i]

    def __iter__(self):
        return iter(self.experiences)

    @property
    def task_aware(self) -> bool:
        return self.setting == "task"

    def preprocess_fn(self, device) -> Callable[[torch.Tensor], torch.Tensor]:
        fn = self._normalise_fn(device)
        size = self.meta.get("input_size") if self.modality == "image" else None
        if not size:
            return fn
        # images stay small (uint8) on the device and are resized per batch to the backbone's input size
        import torch.nn.functional as F

        return lambda x: F.interpolate(fn(x), size=(int(size), int(size)), mode="bilinear", align_corners=False)

    def _normalise_fn(self, device) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.mean is None:
            return default_preprocess
        shape = (1, -1) + (1,) * (len(self.input_shape) - 1)
        mean = torch.tensor(self.mean, device=device).view(shape)
        std = torch.tensor(self.std, device=device).view(shape)
        return lambda x: (default_preprocess(x) - mean) / std

    def summary(self) -> str:
        sizes = ", ".join(str(len(e)) for e in self.experiences)
        return (f"{self.name}: {len(self)} experiences, {self.n_classes} classes, setting={self.setting}, "
                f"boundaries={self.boundaries}, train sizes [{sizes}]")


def seeded_class_order(classes: Sequence[int], seed: int | None) -> list[int]:
    classes = sorted(int(c) for c in classes)
    if seed is None:
        return classes
    g = torch.Generator().manual_seed(int(seed))
    return [classes[i] for i in torch.randperm(len(classes), generator=g).tolist()]


def split_classes(order: list[int], n_tasks: int | None = None, per_task: Sequence[int] | None = None,
                  first: int | None = None) -> list[list[int]]:
    """Split a class order into tasks: equal ``n_tasks``, explicit ``per_task`` sizes,
    or a ``first`` task of its own size followed by equal increments."""
    n = len(order)
    if per_task:
        sizes = list(per_task)
    elif first:
        if n_tasks is None or n_tasks < 2 or (n - first) % (n_tasks - 1):
            raise ConfigError(f"first={first} with n_tasks={n_tasks}: the remaining {n - first} classes "
                              f"do not divide into {None if n_tasks is None else n_tasks - 1} equal tasks")
        inc = (n - first) // (n_tasks - 1)
        sizes = [first] + [inc] * (n_tasks - 1)
    else:
        if not n_tasks or n_tasks < 1 or n % n_tasks:
            valid = [k for k in range(1, n + 1) if n % k == 0]
            raise ConfigError(f"n_tasks={n_tasks} does not divide the {n} classes; valid n_tasks: {valid}")
        sizes = [n // n_tasks] * n_tasks
    if sum(sizes) != n or any(s <= 0 for s in sizes):
        raise ConfigError(f"task sizes {sizes} must be positive and sum to the {n} classes")
    out, i = [], 0
    for s in sizes:
        out.append(order[i:i + s])
        i += s
    return out


def class_incremental(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                      test_y: torch.Tensor, n_tasks: int | None = None, seed: int | None = 0,
                      class_order: Sequence[int] | None = None, per_task: Sequence[int] | None = None,
                      first: int | None = None, task_labels: bool = False, class_names=None,
                      **meta) -> Scenario:
    """Class-incremental (or, with ``task_labels``, task-incremental) scenario over tensors.

    The class order is ``class_order`` if given, else a permutation drawn from ``seed``
    (``seed=None`` keeps the sorted order).  Labels are renumbered to positions in the order.
    """
    present = sorted(torch.unique(train_y).tolist())
    if class_order is not None:
        bad = [c for c in class_order if c not in present]
        if bad:
            raise ConfigError(f"class_order names unknown classes {bad}; the data has classes {present}")
        if len(set(class_order)) != len(class_order):
            raise ConfigError(f"class_order repeats classes: {list(class_order)}")
        order = [int(c) for c in class_order]
    else:
        order = seeded_class_order(present, seed)
    tasks = split_classes(order, n_tasks, per_task, first)
    remap = torch.full((max(present) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(len(order))
    ytr, yte = remap[train_y.long()], remap[test_y.long()]
    exps = []
    for t, cls in enumerate(tasks):
        new = list(range(order.index(cls[0]), order.index(cls[0]) + len(cls)))
        mtr = (ytr >= new[0]) & (ytr <= new[-1])
        mte = (yte >= new[0]) & (yte <= new[-1])
        exps.append(Experience(train_x[mtr], ytr[mtr], test_x[mte], yte[mte], new,
                               t if task_labels else None, index=t))
    names = None
    if class_names is not None:
        names = [class_names[c] for c in order]
    return Scenario(name=name, experiences=exps, n_classes=len(order), input_shape=tuple(train_x.shape[1:]),
                    class_order=order, class_names=names, setting="task" if task_labels else "class", **meta)


def stratified_split(y: torch.Tensor, test_per_class: int | float, seed: int = 0):
    """Deterministic held-out split: the same indices for the same labels and seed."""
    g = torch.Generator().manual_seed(seed)
    tr, te = [], []
    for c in sorted(torch.unique(y).tolist()):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(test_per_class if test_per_class >= 1 else round(len(idx) * test_per_class))
        te.append(idx[:k])
        tr.append(idx[k:])
    return torch.cat(tr).sort().values, torch.cat(te).sort().values
