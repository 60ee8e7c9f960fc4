"""Device-resident replay buffers.

:class:`ReservoirBuffer` implements reservoir sampling (Vitter's algorithm R):
the i-th stream sample (0-based, counting every sample offered so far) draws
j uniformly from {0..i} and overwrites slot j if j < capacity.  The draw, the
write and the retrieval run on the buffer's device with no host
synchronisation and no data-dependent host branch: the stream counter is kept
twice, on the host (``n_seen``, batch sizes are known there; used by
``len()``) and on the device (``count``, used inside the step), so one ``add``
+ ``sample`` sequence is the same kernel sequence at every step and can be
captured in a CUDA graph (:mod:`cl.train.graphs`).  Writes of samples that lose the
draw go to a spare trash row.  Within one batch, if two samples draw the same
slot the later one wins, as in the sequential algorithm.  Every sample seen so
far is kept with probability capacity / n.

Stored fields are arbitrary: ``add(**fields)`` stores whatever tensors it is given, one row per sample,
with the dtype and trailing shape of the first batch (``x``, ``y``, and e.g. ``logits`` (DER: the
unmasked logits at insertion), ``t`` (task ids), ``feat`` (features)). Every later ``add`` must give
the same fields.

Sampling: ``sample(n)`` draws with replacement (the default; graph-safe); ``sample(n, replace=False)``
draws ``min(n, len)`` distinct slots (a host-side size, so not graph-safe); ``with_index=True`` adds the
slots drawn under ``"index"``, which ``update(index, **fields)`` rewrites in place (X-DER's logit
updates).

Selection policies (``make_buffer(policy, ...)``, ``BUFFER_POLICIES``):

* ``reservoir`` -- :class:`ReservoirBuffer` (above).
* ``class-balanced`` -- :class:`ClassBalancedBuffer`, GDumb's greedy class-balancing sampler
  (Prabhu et al., ECCV 2020): with ``k_c = capacity // (number of classes stored, counting the
  incoming one)``, a sample whose class already holds ``k_c`` slots is dropped; otherwise it is stored,
  in a free slot while there is one, else in the slot of a uniformly drawn sample of the largest class
  (ties: the smallest class id). The per-sample decision runs on the host (one read of the labels
  per ``add``), so it is not graph-safe.
"""
from __future__ import annotations

import torch

from cl.core.registry import unknown


class _Sampling:
    """Sampling, retrieval and in-place update shared by the buffers (``data`` rows ``[0, len)`` valid)."""

    def _draw(self, n: int, replace: bool) -> torch.Tensor:
        size = len(self)
        if replace:
            u = torch.rand(n, device=self.device, generator=self.generator)
            return (u * size).long().clamp_max_(size - 1)
        return torch.randperm(size, device=self.device, generator=self.generator)[: min(n, size)]

    def sample_index(self, n: int, replace: bool = True) -> torch.Tensor:
        """Slots of ``n`` items drawn uniformly (with or without replacement); empty when the buffer is."""
        if len(self) == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return self._draw(n, replace)

    def get(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.data.items()}

    @torch.no_grad()
    def update(self, index: torch.Tensor, **fields: torch.Tensor) -> None:
        """Overwrite stored fields of the given slots (e.g. X-DER's logit updates)."""
        for k, v in fields.items():
            self.data[k][index] = v.to(self.device, self.data[k].dtype)


class ReservoirBuffer(_Sampling):
    def __init__(self, capacity: int, device="cpu", generator: torch.Generator | None = None):
        if capacity < 0:
            raise ValueError(f"buffer capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.n_seen = 0  # stream samples offered so far (host-side)
        self.count = torch.zeros((), dtype=torch.long, device=self.device)  # the same, on the device
        self.data: dict[str, torch.Tensor] = {}
        self.generator = generator
        self._tri: dict[int, torch.Tensor] = {}  # cached strict upper-triangular masks per batch size
        self._ar: dict[int, torch.Tensor] = {}  # cached aranges per batch size

    def __len__(self) -> int:
        return min(self.n_seen, self.capacity)

    def _alloc(self, batch: dict[str, torch.Tensor]) -> None:
        for k, v in batch.items():
            self.data[k] = torch.zeros((self.capacity + 1,) + tuple(v.shape[1:]), dtype=v.dtype, device=self.device)

    def _consts(self, b: int):
        if b not in self._ar:
            self._ar[b] = torch.arange(b, device=self.device)
            self._tri[b] = torch.ones(b, b, dtype=torch.bool, device=self.device).triu(1)
        return self._ar[b], self._tri[b]

    @torch.no_grad()
    def add(self, **batch: torch.Tensor) -> None:
        """Offer a batch of samples (e.g. ``x=..., y=...``) to the reservoir."""
        if self.capacity == 0:
            return
        if not self.data:
            self._alloc(batch)
        b = len(next(iter(batch.values())))
        ar, tri = self._consts(b)
        pos = ar + self.count  # stream index of each sample
        u = torch.rand(b, device=self.device, generator=self.generator)
        j = (u * (pos + 1).to(u.dtype)).long().clamp_max_(pos)  # uniform in {0..pos}
        j = torch.where(pos < self.capacity, pos, j)  # while filling, sample i goes to slot i
        slots = j.clamp_max_(self.capacity)  # losers go to the trash row
        # a later sample of the same batch that draws the same slot overwrites an earlier one
        later_same = ((slots[None, :] == slots[:, None]) & tri).any(1)
        slots = torch.where(later_same, torch.full_like(slots, self.capacity), slots)
        for k, v in batch.items():
            self.data[k].index_copy_(0, slots, v.to(self.device, self.data[k].dtype))
        self.count += b
        self.n_seen += b

    def sample(self, n: int, replace: bool = True, with_index: bool = False) -> dict[str, torch.Tensor]:
        """Uniform sample (with replacement) of ``n`` stored items; empty dict when the buffer is empty.
        The index is drawn against the device-side size, so a captured step stays correct as the buffer fills.
        ``replace=False``: ``min(n, len)`` distinct slots; ``with_index``: the slots under ``"index"``."""
        if len(self) == 0:
            return {}
        if not replace or with_index:
            idx = self.sample_index(n, replace)
            return {**self.get(idx), **({"index": idx} if with_index else {})}
        size = self.count.clamp(max=self.capacity)
        u = torch.rand(n, device=self.device, generator=self.generator)
        idx = (u * size.to(u.dtype)).long().clamp_max_(size - 1)
        return {k: v[idx] for k, v in self.data.items()}

    def items(self) -> dict[str, torch.Tensor]:
        return {k: v[: len(self)] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "n_seen": self.n_seen, "data": {k: v.cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.n_seen = state["capacity"], state["n_seen"]
        self.count = torch.full((), self.n_seen, dtype=torch.long, device=self.device)
        self.data = {k: v.to(self.device) for k, v in state["data"].items()}

    def advance_host(self, b: int) -> None:
        """Advance the host counter by ``b`` without running ``add``: used after a CUDA-graph replay,
        where the device counter was advanced inside the graph."""
        self.n_seen += b


class ClassBalancedBuffer(_Sampling):
    """GDumb's greedy class-balanced memory (see the module docstring). Needs a ``y`` field."""

    def __init__(self, capacity: int, device="cpu", generator: torch.Generator | None = None):
        if capacity < 0:
            raise ValueError(f"buffer capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.generator = generator
        self.n_seen = 0
        self.size = 0
        self.slots: dict[int, list[int]] = {}  # class -> its slots, in insertion order
        self.data: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.size

    def class_counts(self) -> dict[int, int]:
        return {c: len(s) for c, s in sorted(self.slots.items())}

    def _randint(self, n: int) -> int:
        g = self.generator if self.generator is not None and self.generator.device.type == "cpu" else None
        return int(torch.randint(n, (1,), generator=g).item())

    @torch.no_grad()
    def add(self, **batch: torch.Tensor) -> None:
        if "y" not in batch:
            raise ValueError("ClassBalancedBuffer.add needs the labels as y=")
        if self.capacity == 0:
            return
        if not self.data:
            self.data = {k: torch.zeros((self.capacity,) + tuple(v.shape[1:]), dtype=v.dtype, device=self.device)
                         for k, v in batch.items()}
        written: dict[int, int] = {}  # slot -> batch row (a later row that takes the same slot wins)
        for i, c in enumerate(batch["y"].tolist()):
            self.n_seen += 1
            k_c = self.capacity // (len(self.slots) + (c not in self.slots))
            if len(self.slots.get(c, ())) >= k_c:
                continue
            if self.size < self.capacity:
                slot, self.size = self.size, self.size + 1
            else:
                largest = max(sorted(self.slots), key=lambda k: len(self.slots[k]))
                slot = self.slots[largest].pop(self._randint(len(self.slots[largest])))
                if not self.slots[largest]:
                    del self.slots[largest]
            self.slots.setdefault(c, []).append(slot)
            written[slot] = i
        if written:
            slots = torch.tensor(list(written), dtype=torch.long, device=self.device)
            rows = torch.tensor(list(written.values()), dtype=torch.long)
            for k, v in batch.items():
                self.data[k].index_copy_(0, slots, v[rows.to(v.device)].to(self.device, self.data[k].dtype))

    def sample(self, n: int, replace: bool = True, with_index: bool = False) -> dict[str, torch.Tensor]:
        if len(self) == 0:
            return {}
        idx = self.sample_index(n, replace)
        return {**self.get(idx), **({"index": idx} if with_index else {})}

    def items(self) -> dict[str, torch.Tensor]:
        return {k: v[: self.size] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "n_seen": self.n_seen, "size": self.size,
                "slots": {int(c): list(s) for c, s in self.slots.items()},
                "data": {k: v.cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.n_seen, self.size = state["capacity"], state["n_seen"], state["size"]
        self.slots = {int(c): list(s) for c, s in state["slots"].items()}
        self.data = {k: v.to(self.device) for k, v in state["data"].items()}


BUFFER_POLICIES = {"reservoir": ReservoirBuffer, "class-balanced": ClassBalancedBuffer}


def make_buffer(policy: str, capacity: int, device="cpu", generator: torch.Generator | None = None):
    """A buffer with the named selection policy (``buffer_policy`` in strategy configs)."""
    if policy not in BUFFER_POLICIES:
        raise unknown("buffer_policy", policy, BUFFER_POLICIES)
    return BUFFER_POLICIES[policy](capacity, device, generator)
