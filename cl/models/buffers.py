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
"""
from __future__ import annotations

import torch


class ReservoirBuffer:
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

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """Uniform sample (with replacement) of ``n`` stored items; empty dict when the buffer is empty.
        The index is drawn against the device-side size, so a captured step stays correct as the buffer fills."""
        if len(self) == 0:
            return {}
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
