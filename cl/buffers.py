"""Device-resident replay buffers.

:class:`ReservoirBuffer` implements reservoir sampling (Vitter's algorithm R):
the i-th stream sample (0-based, counting every sample offered so far) draws
j uniformly from {0..i} and overwrites slot j if j < capacity.  The draw, the
write and the retrieval run on the buffer's device with no host
synchronisation: the stream counter lives on the host (batch sizes are known
there), and writes of samples that lose the draw go to a spare trash row.
Within one batch, if two samples draw the same slot the later one wins, as in
the sequential algorithm.  Every sample seen so far is kept with probability
capacity / n.
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
        self.data: dict[str, torch.Tensor] = {}
        self.generator = generator

    def __len__(self) -> int:
        return min(self.n_seen, self.capacity)

    def _alloc(self, batch: dict[str, torch.Tensor]) -> None:
        for k, v in batch.items():
            self.data[k] = torch.zeros((self.capacity + 1,) + tuple(v.shape[1:]), dtype=v.dtype, device=self.device)

    @torch.no_grad()
    def add(self, **batch: torch.Tensor) -> None:
        """Offer a batch of samples (e.g. ``x=..., y=...``) to the reservoir."""
        if self.capacity == 0:
            return
        if not self.data:
            self._alloc(batch)
        b = len(next(iter(batch.values())))
        dev = self.device
        pos = torch.arange(b, device=dev) + self.n_seen  # stream index of each sample
        if self.n_seen + b <= self.capacity:
            slots = pos
        else:
            u = torch.rand(b, device=dev, generator=self.generator)
            j = (u * (pos + 1).to(u.dtype)).long().clamp_max_(pos)  # uniform in {0..pos}
            j = torch.where(pos < self.capacity, pos, j)
            slots = torch.where(j < self.capacity, j, torch.full_like(j, self.capacity))
            # a later sample of the same batch that draws the same slot overwrites an earlier one
            later_same = (slots[None, :] == slots[:, None]) & torch.ones(b, b, dtype=torch.bool, device=dev).triu(1)
            slots = torch.where(later_same.any(1), torch.full_like(slots, self.capacity), slots)
        for k, v in batch.items():
            self.data[k].index_copy_(0, slots, v.to(self.device, self.data[k].dtype))
        self.n_seen += b

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """Uniform sample (with replacement) of ``n`` stored items; empty dict when the buffer is empty."""
        size = len(self)
        if size == 0:
            return {}
        idx = torch.randint(0, size, (n,), device=self.device, generator=self.generator)
        return {k: v[idx] for k, v in self.data.items()}

    def items(self) -> dict[str, torch.Tensor]:
        return {k: v[: len(self)] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "n_seen": self.n_seen, "data": {k: v.cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.n_seen = state["capacity"], state["n_seen"]
        self.data = {k: v.to(self.device) for k, v in state["data"].items()}
