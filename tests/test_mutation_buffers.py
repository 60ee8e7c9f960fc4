"""The reservoir buffer's statistics and its within-batch rule (issue 19).

Random draws come from seeded generators, so every test is deterministic; the statistical tests use
chi-square critical values at p = 0.001 on that fixed draw, far above what a uniform draw gives and far
below what the biased draws (first slots only, {0..n-1} instead of {0..n}) give."""
import pytest
import torch

import cl.models.buffers as buffers
from cl.models.buffers import ReservoirBuffer

CHI2_999 = {4: 18.467, 5: 20.515, 9: 27.877}  # chi-square quantile 0.999 for these degrees of freedom


def chi2(counts: torch.Tensor, expected: float) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


def filled(capacity: int, n: int, seed: int = 0) -> ReservoirBuffer:
    buf = ReservoirBuffer(capacity, generator=torch.Generator().manual_seed(seed))
    buf.add(x=torch.arange(n, dtype=torch.float32)[:, None], y=torch.arange(n))
    return buf


def test_sample_is_uniform_over_every_slot_of_a_full_buffer():
    buf = filled(10, 10)
    assert len(buf) == 10
    y = torch.cat([buf.sample(100)["y"] for _ in range(100)])  # 10,000 draws
    counts = torch.bincount(y, minlength=11)
    assert counts[10] == 0  # never the trash row
    assert (counts[:10] > 0).all()  # the last slot too
    assert chi2(counts[:10], len(y) / 10) < CHI2_999[9]


def test_sample_is_uniform_over_the_filled_slots_of_a_partial_buffer():
    buf = filled(10, 6)
    assert len(buf) == 6
    out = buf.sample(6000)
    assert set(out) == {"x", "y"} and out["x"].shape == (6000, 1)
    assert torch.equal(out["x"][:, 0].long(), out["y"])  # rows stay together
    counts = torch.bincount(out["y"], minlength=10)
    assert counts[6:].sum() == 0 and (counts[:6] > 0).all()
    assert chi2(counts[:6], 1000.0) < CHI2_999[5]


def test_every_stream_sample_is_kept_with_probability_capacity_over_n():
    """Reservoir sampling: after n samples, each is in the buffer with probability capacity / n.
    A draw over {0..i-1} instead of {0..i} always evicts (item 4 would be kept every time)."""
    cap, n, trials = 2, 5, 2000
    g = torch.Generator().manual_seed(1)
    kept = torch.zeros(n)
    for _ in range(trials):
        buf = ReservoirBuffer(cap, generator=g)
        for i in range(n):  # one sample at a time (the sequential algorithm)
            buf.add(y=torch.tensor([i]))
        kept[buf.items()["y"]] += 1
    assert kept.sum() == trials * cap
    assert chi2(kept, trials * cap / n) < CHI2_999[4]


def test_batch_add_keeps_each_sample_with_probability_capacity_over_n():
    cap, n, trials = 2, 5, 2000
    g = torch.Generator().manual_seed(2)
    kept = torch.zeros(n)
    for _ in range(trials):
        buf = ReservoirBuffer(cap, generator=g)
        buf.add(y=torch.arange(n))
        kept[buf.items()["y"]] += 1
    assert kept.sum() == trials * cap
    assert chi2(kept, trials * cap / n) < CHI2_999[4]


def test_second_sample_replaces_the_first_half_of_the_time():
    """Capacity 1: sample 1 draws j in {0, 1} and replaces sample 0 iff j = 0."""
    g = torch.Generator().manual_seed(3)
    replaced = 0
    for _ in range(2000):
        buf = ReservoirBuffer(1, generator=g)
        buf.add(y=torch.tensor([0]))
        buf.add(y=torch.tensor([1]))
        replaced += int(buf.items()["y"][0] == 1)
    assert 900 < replaced < 1100


def test_within_a_batch_the_later_sample_wins_a_shared_slot(monkeypatch):
    """A controlled generator: the draws u are chosen so that samples 1 and 3 of the second batch
    both draw slot 0, and sample 2 draws slot 1; the later of the two (sample 3) must be kept."""
    buf = ReservoirBuffer(2)
    buf.add(y=torch.tensor([10, 11]))  # fills slots 0 and 1 (the draws do not matter while filling)
    draws = iter([
        # stream positions 2..5: j = floor(u * (pos + 1))
        torch.tensor([0.9, 0.1, 0.3, 0.1]),  # pos 2 -> j=2 (lost); pos 3 -> 0; pos 4 -> 1; pos 5 -> 0
    ])
    real_rand = torch.rand
    monkeypatch.setattr(buffers.torch, "rand", lambda *a, **k: next(draws) if a == (4,) else real_rand(*a, **k))
    buf.add(y=torch.tensor([20, 21, 22, 23]))
    assert buf.items()["y"].tolist() == [23, 22]
    assert buf.n_seen == 6 and int(buf.count) == 6


def test_batch_add_equals_adding_the_batch_one_sample_at_a_time():
    """The batched write is the sequential algorithm: with the same draws (same seed), adding a batch of
    20 to a buffer of 3 (many collisions per batch) leaves what 20 single adds leave."""
    for seed in range(20):
        a = ReservoirBuffer(3, generator=torch.Generator().manual_seed(seed))
        b = ReservoirBuffer(3, generator=torch.Generator().manual_seed(seed))
        a.add(y=torch.arange(4))
        b.add(y=torch.arange(4))
        a.add(y=torch.arange(4, 24))
        for i in range(4, 24):
            b.add(y=torch.tensor([i]))
        assert a.items()["y"].tolist() == b.items()["y"].tolist(), seed


def test_filling_writes_in_order_and_len_counts_the_stored_items():
    buf = ReservoirBuffer(5)
    assert len(buf) == 0 and buf.sample(3) == {}
    buf.add(x=torch.ones(3, 2), y=torch.tensor([7, 8, 9]))
    assert len(buf) == 3 and buf.items()["y"].tolist() == [7, 8, 9]
    assert buf.items()["x"].dtype == torch.float32 and buf.items()["x"].shape == (3, 2)
    buf.add(x=torch.zeros(2, 2), y=torch.tensor([1, 2]))
    assert len(buf) == 5 and buf.items()["y"].tolist() == [7, 8, 9, 1, 2]
    buf.add(x=torch.zeros(4, 2), y=torch.tensor([3, 4, 5, 6]))
    assert len(buf) == 5 and buf.n_seen == 9


def test_zero_capacity_and_negative_capacity():
    buf = ReservoirBuffer(0)
    buf.add(y=torch.arange(4))
    assert len(buf) == 0 and buf.sample(2) == {}
    with pytest.raises(ValueError):
        ReservoirBuffer(-1)


def test_state_dict_round_trip_continues_identically():
    a = ReservoirBuffer(4, generator=torch.Generator().manual_seed(5))
    a.add(y=torch.arange(6))
    b = ReservoirBuffer(4, generator=torch.Generator().manual_seed(5))
    b.load_state_dict(a.state_dict())
    assert len(b) == 4 and b.n_seen == 6 and int(b.count) == 6
    assert b.items()["y"].tolist() == a.items()["y"].tolist()
    b.generator.set_state(a.generator.get_state())
    a.add(y=torch.arange(100, 110))
    b.add(y=torch.arange(100, 110))
    assert b.items()["y"].tolist() == a.items()["y"].tolist()
    a.advance_host(3)
    assert a.n_seen == 19 and int(a.count) == 16


def test_no_two_samples_of_a_batch_write_the_same_slot(monkeypatch):
    """Colliding samples other than the last writer go to the trash row, so the write has no duplicate slot
    (duplicate indices in index_copy_ are applied in an undefined order on CUDA).  Controlled draws make two
    adjacent samples and two samples further apart collide."""
    writes = []
    real_copy, real_rand = torch.Tensor.index_copy_, torch.rand

    def spy(self, dim, index, source):
        writes.append(index.clone())
        return real_copy(self, dim, index, source)

    draws = iter([torch.tensor([0.1, 0.1, 0.9, 0.2, 0.5])])  # pos 2..6 -> slots 0, 0, lost, 1, lost(3)
    monkeypatch.setattr(torch.Tensor, "index_copy_", spy)
    monkeypatch.setattr(buffers.torch, "rand", lambda *a, **k: next(draws) if a == (5,) else real_rand(*a, **k))
    buf = ReservoirBuffer(2)
    buf.add(y=torch.tensor([10, 11]))
    buf.add(y=torch.tensor([20, 21, 22, 23, 24]))
    assert buf.items()["y"].tolist() == [21, 23]
    idx = writes[-1]
    real_slots = idx[idx < 2].tolist()
    assert sorted(real_slots) == [0, 1], idx  # one writer per slot


def test_stored_samples_are_detached_from_the_graph():
    """Features that require grad (a strategy storing embeddings) are stored as plain data: no graph kept."""
    buf = ReservoirBuffer(4)
    x = torch.randn(3, 2, requires_grad=True)
    buf.add(x=x * 2, y=torch.arange(3))
    assert not buf.data["x"].requires_grad and buf.data["x"].grad_fn is None
    assert torch.equal(buf.items()["x"], (x * 2).detach())


def test_a_buffer_of_one_item_samples_it():
    buf = ReservoirBuffer(5)
    buf.add(x=torch.tensor([[4.0]]), y=torch.tensor([7]))
    out = buf.sample(3)
    assert out["y"].tolist() == [7, 7, 7] and out["x"].tolist() == [[4.0]] * 3
