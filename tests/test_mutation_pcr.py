"""Tests written from the mutation run of strategies/pcr.py (issue 19): defaults and validation bounds, the
cosine head it builds, and the step's loss on a constructed case ([x_R; aug(x_R); x_B; aug(x_B)] against
the proxies of the same rows; the replay batch drawn without replacement before the incoming batch is
stored)."""
from __future__ import annotations

import copy

import pytest
import torch

import strategies.pcr as pcr_module
from cl.core.registry import ConfigError
from cl.models.contrastive import proxy_contrastive_loss
from cl.models.heads import CosineHead
from strategies.pcr import PCR, PCRConfig

from test_ocl2 import Ident, make


def pcr(n_classes=4, d=3, **kw):
    kw.setdefault("view_augment", "none")
    return make(PCR, PCRConfig(**kw), Ident(d), n_classes, (d,))


def test_defaults_are_the_authors():
    c = PCRConfig()
    assert (c.buffer_size, c.replay_batch_size, c.temperature, c.view_augment) == (500, 10, 0.09, "scr")
    assert (c.lr, c.optimizer) == (0.1, "sgd")
    assert PCR.runs_task_free()


@pytest.mark.parametrize("field", ["temperature", "replay_batch_size"])
def test_each_positive_field_is_checked(field):
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=f"strategy.{field}"):
            PCRConfig(**{field: bad}).validate()
    PCRConfig(**{field: 1}).validate()
    PCRConfig(temperature=1e-3).validate()


def test_view_choices():
    for v in ("scr", "ocm", "none"):
        PCRConfig(view_augment=v).validate()
    with pytest.raises(ConfigError, match="strategy.view_augment"):
        PCRConfig(view_augment="simclr").validate()


def test_model_is_a_cosine_head_with_the_configured_temperature():
    s = pcr(n_classes=5, d=3, temperature=0.25)
    head = s.model.head
    assert isinstance(head, CosineHead) and head.tau == 0.25 and head.weight.shape == (5, 3)
    assert s.model._view_stats == (None, None)
    s.model.observe(torch.arange(5))
    h = torch.tensor([[1.0, 2.0, 2.0]])
    want = (h / 3) @ (head.weight / head.weight.norm(dim=1, keepdim=True)).t() / 0.25
    assert torch.allclose(s.model(h), want, atol=1e-5)


def test_first_step_with_an_empty_buffer_only_stores_the_batch():
    torch.manual_seed(0)
    s = pcr(buffer_size=10, replay_batch_size=4)
    before = copy.deepcopy(list(s.model.parameters()))
    loss = s.train_step(torch.randn(3, 3), torch.tensor([0, 3, 3]))
    assert float(loss) == 0.0 and loss.shape == ()
    assert all(torch.equal(a, p) for a, p in zip(before, s.model.parameters()))
    assert len(s.buffer) == 3 and s.model.head.seen.tolist() == [True, False, False, True]


def test_step_loss_is_the_proxy_loss_of_both_views_of_replay_then_incoming():
    """replay_batch_size >= len(buffer): the whole buffer once; the loss does not depend on the order of its
    rows (labels travel with them), so it is computed by hand from [b; v(b); x; v(x)]."""
    torch.manual_seed(0)
    s = pcr(buffer_size=20, replay_batch_size=50, temperature=0.3)
    s.views = lambda x: 2 * x.flip(1) + 1  # a deterministic second view
    bx, by = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    s.buffer.add(x=bx, y=by)
    x, y = torch.randn(2, 3), torch.tensor([3, 1])
    v = s.views
    with torch.no_grad():
        feats = torch.cat([bx, v(bx), x, v(x)])
        want = float(proxy_contrastive_loss(feats, s.model.head.weight, torch.cat([by, by, y, y]), 0.3))
        other = float(proxy_contrastive_loss(feats, s.model.head.weight, torch.cat([by, y, by, y]), 0.3))
    assert abs(want - other) > 1e-3  # the labels' order matters in this case
    w0 = s.model.head.weight.detach().clone()
    assert float(s.train_step(x, y)) == pytest.approx(want, rel=1e-5)
    assert not torch.equal(w0, s.model.head.weight.detach())  # a step was taken
    assert len(s.buffer) == 7


def test_step_draws_distinct_replay_rows_before_storing_the_batch(monkeypatch):
    torch.manual_seed(0)
    s = pcr(buffer_size=20, replay_batch_size=4)
    bx, by = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    s.buffer.add(x=bx, y=by)
    calls = []

    def spy(f, w, labels, tau):
        calls.append((f.detach().clone(), labels.clone(), tau))
        return proxy_contrastive_loss(f, w, labels, tau)

    monkeypatch.setattr(pcr_module, "proxy_contrastive_loss", spy)
    x, y = 100 + torch.randn(2, 3), torch.tensor([3, 3])
    s.train_step(x, y)
    (f, labels, tau), = calls
    assert f.shape == (12, 3) and tau == 0.09
    assert torch.equal(f[8:10], x) and torch.equal(f[10:], x) and labels[8:].tolist() == [3, 3, 3, 3]
    mem = f[:4]
    assert torch.equal(f[4:8], mem) and torch.equal(labels[:4], labels[4:8])
    rows = {tuple(r.tolist()) for r in mem}
    assert len(rows) == 4 and rows <= {tuple(r.tolist()) for r in bx}  # distinct buffer rows only
    for r, c in zip(mem, labels[:4]):
        assert int(c) == int(by[(bx == r).all(1)][0])
    assert len(s.buffer) == 8
