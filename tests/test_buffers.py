import numpy as np
import pytest
import torch

from cl.models.buffers import ReservoirBuffer


def test_fills_in_order_then_stays_at_capacity():
    buf = ReservoirBuffer(25)
    for i in range(0, 20, 10):
        buf.add(x=torch.arange(i, i + 10).float()[:, None], y=torch.arange(i, i + 10))
    assert len(buf) == 20 and buf.items()["y"].tolist() == list(range(20))
    buf.add(x=torch.zeros(30, 1), y=torch.arange(100, 130))
    assert len(buf) == 25 and buf.n_seen == 50
    assert buf.sample(7)["y"].shape == (7,)
    assert ReservoirBuffer(0).sample(3) == {}


def test_reservoir_keeps_every_item_with_probability_k_over_n():
    """Each of n=400 stream items must be kept with probability K/n = 0.1 (checked over 600 seeded streams)."""
    K, n, b, trials = 40, 400, 10, 600
    torch.manual_seed(0)
    counts = np.zeros(n)
    for _ in range(trials):
        buf = ReservoirBuffer(K)
        for i in range(0, n, b):
            buf.add(y=torch.arange(i, i + b))
        kept = buf.items()["y"].numpy()
        assert len(np.unique(kept)) == K  # no item stored twice
        counts[kept] += 1
    freq = counts / trials
    # per-decile inclusion frequency: each decile averages 40 items x 600 trials
    deciles = freq.reshape(10, -1).mean(1)
    assert np.abs(deciles - K / n).max() < 0.012, deciles
    # chi-square over deciles (9 dof): 99.9% quantile is 27.9
    expected = K * trials / 10
    chi2 = (((counts.reshape(10, -1).sum(1) - expected) ** 2) / expected).sum()
    assert chi2 < 27.9, chi2


def test_state_dict_round_trip():
    buf = ReservoirBuffer(5)
    buf.add(x=torch.randn(8, 3), y=torch.arange(8))
    other = ReservoirBuffer(1)
    other.load_state_dict(buf.state_dict())
    assert other.n_seen == 8 and torch.equal(other.items()["x"], buf.items()["x"])


def test_negative_capacity_is_an_error():
    with pytest.raises(ValueError, match="capacity"):
        ReservoirBuffer(-1)
