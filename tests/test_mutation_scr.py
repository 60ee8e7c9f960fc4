"""Tests written from the mutation run of strategies/scr.py (issue 19): defaults and validation bounds, the
model it builds, the step's batch ([replay; incoming], replay drawn without replacement before the incoming
batch is stored), the review step at a boundary (drop_last batches, gradients / 10, one step counted, the
model's mode restored) and when the NCM means are recomputed, on constructed cases."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from cl.models.contrastive import supcon_loss
from cl.models.prototypes import PrototypeHead
from strategies.scr import SCR, SCRConfig

from test_ocl2 import Ident, make


def scr(n_classes=3, d=3, **kw):
    kw.setdefault("view_augment", "none")
    return make(SCR, SCRConfig(**kw), Ident(d), n_classes, (d,))


def test_defaults_are_the_authors():
    c = SCRConfig()
    assert (c.buffer_size, c.replay_batch_size, c.temperature, c.projection, c.proj_dim) == (500, 100, 0.07, "mlp", 128)
    assert (c.view_augment, c.review_trick, c.ncm_every, c.eval_chunk) == ("scr", True, 1, 256)
    assert (c.lr, c.optimizer, c.momentum, c.weight_decay) == (0.1, "sgd", 0.0, 0.0)
    assert SCR.runs_task_free()
    assert SCR.state_attrs == ("steps", "means_at")


@pytest.mark.parametrize("field", ["temperature", "replay_batch_size", "proj_dim", "ncm_every", "eval_chunk"])
def test_each_positive_field_is_checked(field):
    with pytest.raises(ConfigError, match=f"strategy.{field}"):
        SCRConfig(**{field: 0}).validate()
    with pytest.raises(ConfigError, match=f"strategy.{field}"):
        SCRConfig(**{field: -1}).validate()
    SCRConfig(**{field: 1}).validate()  # the smallest valid whole value
    SCRConfig(temperature=1e-3).validate()


def test_projection_and_view_choices():
    for p in ("mlp", "linear"):
        SCRConfig(projection=p).validate()
    for v in ("scr", "ocm", "none"):
        SCRConfig(view_augment=v).validate()
    with pytest.raises(ConfigError, match="strategy.projection"):
        SCRConfig(projection="conv").validate()
    with pytest.raises(ConfigError, match="strategy.view_augment"):
        SCRConfig(view_augment="simclr").validate()


def test_model_is_cosine_ncm_head_and_the_configured_projection():
    s = scr(n_classes=4, d=3, proj_dim=5, projection="mlp")
    head = s.model.head
    assert isinstance(head, PrototypeHead) and head.metric == "cosine" and head.normalize
    assert head.sums.shape == (4, 3)
    lin = [m for m in s.model.proj.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(3, 3), (3, 5)]  # proj_dim is not cut to d
    s = scr(d=3, proj_dim=2, projection="linear")
    lin = [m for m in s.model.proj.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(3, 2)]
    assert s.model._view_stats == (None, None) and (s.steps, s.means_at) == (0, -1)


def test_first_step_with_an_empty_buffer_only_stores_the_batch():
    torch.manual_seed(0)
    s = scr(buffer_size=10, replay_batch_size=4)
    before = copy.deepcopy(list(s.model.parameters()))
    x, y = torch.randn(3, 3), torch.tensor([0, 2, 2])
    loss = s.train_step(x, y)
    assert float(loss) == 0.0 and loss.shape == ()
    assert all(torch.equal(a, p) for a, p in zip(before, s.model.parameters()))
    assert len(s.buffer) == 3 and s.steps == 1
    assert s.model.head.seen.tolist() == [True, False, True]


def test_step_contrasts_replay_then_incoming_and_stores_after():
    torch.manual_seed(0)
    s = scr(buffer_size=20, replay_batch_size=4)
    bx = torch.randn(6, 3)
    by = torch.tensor([0, 1, 2, 0, 1, 2])
    s.buffer.add(x=bx, y=by)
    seen = []
    real = s.contrastive_loss

    def spy(x, y):
        seen.append((x.clone(), y.clone()))
        return real(x, y)

    s.contrastive_loss = spy
    x, y = 100 + torch.randn(2, 3), torch.tensor([1, 1])
    w0 = [p.detach().clone() for p in s.model.parameters()]
    s.train_step(x, y)
    (cx, cy), = seen
    assert cx.shape == (6, 3) and torch.equal(cx[4:], x) and cy[4:].tolist() == [1, 1]
    rows = {tuple(r.tolist()) for r in cx[:4]}
    assert len(rows) == 4 and rows <= {tuple(r.tolist()) for r in bx}  # 4 distinct buffer rows, not the batch
    for r, c in zip(cx[:4], cy[:4]):
        assert int(c) == int(by[(bx == r).all(1)][0])
    assert any(not torch.equal(a, p) for a, p in zip(w0, s.model.parameters()))  # a step was taken
    assert len(s.buffer) == 8 and s.steps == 1


def test_step_returns_the_loss_of_the_whole_buffer_when_it_is_small():
    """replay_batch_size >= len(buffer): every stored sample once (without replacement); SupCon does not
    depend on the row order, so the returned loss is the loss of [buffer; x] before the update."""
    torch.manual_seed(1)
    s = scr(buffer_size=20, replay_batch_size=50, temperature=0.2)
    bx, by = torch.randn(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    s.buffer.add(x=bx, y=by)
    x, y = torch.randn(3, 3), torch.tensor([2, 1, 0])
    with torch.no_grad():
        want = float(s.contrastive_loss(torch.cat([bx, x]), torch.cat([by, y])))
        z = s.model.project(torch.cat([bx, x]))
        assert want == pytest.approx(float(supcon_loss(torch.stack([z, z], 1), torch.cat([by, y]), 0.2)), rel=1e-5)
    assert float(s.train_step(x, y)) == pytest.approx(want, rel=1e-5)


def _review_spy(s):
    calls = []
    real = s.contrastive_loss

    def spy(x, y):
        calls.append((x.clone(), y.clone(), s.model.training))
        return real(x, y)

    s.contrastive_loss = spy
    return calls


@pytest.mark.parametrize("n,batches", [(8, 2), (7, 1), (4, 1), (3, 0)])
def test_review_step_runs_full_batches_of_the_buffer_only(n, batches):
    torch.manual_seed(0)
    s = scr(buffer_size=20, replay_batch_size=4)
    bx = torch.randn(n, 3)
    s.buffer.add(x=bx, y=torch.arange(n) % 3)
    calls = _review_spy(s)
    s.after_experience(None)
    assert len(calls) == batches and all(len(c[0]) == 4 for c in calls)
    rows = [tuple(r.tolist()) for c in calls for r in c[0]]
    assert len(set(rows)) == 4 * batches  # no sample twice in one pass
    assert s.steps == (1 if batches else 0)


def test_review_step_is_off_without_the_trick():
    s = scr(buffer_size=20, replay_batch_size=4, review_trick=False)
    s.buffer.add(x=torch.randn(8, 3), y=torch.arange(8) % 3)
    calls = _review_spy(s)
    s.after_experience(None)
    assert calls == [] and s.steps == 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_review_step_trains_in_train_mode_and_restores_the_mode(mode):
    s = scr(buffer_size=20, replay_batch_size=4)
    s.buffer.add(x=torch.randn(4, 3), y=torch.arange(4) % 3)
    getattr(s.model, mode)()
    calls = _review_spy(s)
    s.after_experience(None)
    assert [c[2] for c in calls] == [True]
    assert s.model.training == (mode == "train")


def test_review_step_divides_the_gradients_by_ten():
    torch.manual_seed(0)
    s = scr(buffer_size=20, replay_batch_size=4, temperature=0.5)  # SGD lr 0.1, no momentum
    ref = scr(buffer_size=20, replay_batch_size=4, temperature=0.5)
    ref.model.load_state_dict(s.model.state_dict())
    bx, by = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    s.buffer.add(x=bx, y=by)
    ref.contrastive_loss(bx, by).backward()  # the same loss (SupCon does not depend on the rows' order)
    want = [p.detach() - 0.1 * p.grad / 10 for p in ref.model.parameters()]
    s.after_experience(None)
    for w, p in zip(want, s.model.parameters()):
        assert torch.allclose(p.detach(), w, atol=1e-7)
    moved = sum(float((w - p0.detach()).abs().sum()) for w, p0 in zip(want, ref.model.parameters()))
    assert moved > 1e-4  # the case moves the weights


def test_means_are_recomputed_from_scratch_in_chunks():
    s = scr(buffer_size=20, replay_batch_size=4, eval_chunk=2)
    bx = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    by = torch.tensor([0, 0, 1, 2, 2])
    s.buffer.add(x=bx, y=by)
    s.refresh_means()
    s.refresh_means()  # a second computation replaces the first (sums and counts zeroed)
    assert s.model.head.counts.tolist() == [2.0, 1.0, 2.0]
    want = torch.stack([F.normalize(bx[by == c], dim=1).mean(0) for c in range(3)])
    assert torch.allclose(s.model.head.means, want)
    assert s.means_at == 0


def test_predict_recomputes_the_means_at_most_every_ncm_every_steps():
    s = scr(buffer_size=20, replay_batch_size=4, ncm_every=3)
    q = torch.randn(2, 3)
    out = s.predict(q)  # empty buffer: the head as it is, no means computed
    assert out.shape == (2, 3) and s.means_at == -1
    s.buffer.add(x=torch.randn(6, 3), y=torch.arange(6) % 3)
    s.predict(q)
    assert s.means_at == 0  # first computation (means_at < 0), at step 0
    for steps, at in [(1, 0), (2, 0), (3, 3), (4, 3), (5, 3), (6, 6)]:
        s.steps = steps
        s.predict(q)
        assert s.means_at == at, steps
    s.steps = 11  # several steps without a prediction (the offline protocol predicts at the end only)
    s.predict(q)
    assert s.means_at == 11
    s1 = scr(buffer_size=20, replay_batch_size=4)  # ncm_every=1: after every step
    s1.buffer.add(x=torch.randn(6, 3), y=torch.arange(6) % 3)
    s1.predict(q)
    s1.predict(q)
    assert s1.means_at == 0
    s1.steps = 1
    s1.predict(q)
    assert s1.means_at == 1


def test_means_are_computed_without_autograd():
    s = scr(buffer_size=20, replay_batch_size=4)
    s.buffer.add(x=torch.randn(4, 3), y=torch.arange(4) % 3)
    modes = []
    real = s.model.features

    def spy(x):
        modes.append(torch.is_grad_enabled())
        return real(x)

    s.model.features = spy
    s.refresh_means()
    assert modes == [False]  # no graph is built over the buffer's forward pass


@pytest.mark.parametrize("review_trick", [True, False])
def test_a_boundary_recomputes_the_means_whatever_ncm_every(review_trick):
    """With ncm_every = k > 1 the online predictions may use means up to k - 1 steps old, but the evaluation
    after a boundary (row i of R: final accuracy) must use the current encoder: a step taken since the last
    computation is seen."""
    torch.manual_seed(0)
    s = scr(buffer_size=20, replay_batch_size=4, ncm_every=1000, review_trick=review_trick)
    s.buffer.add(x=torch.randn(8, 3), y=torch.arange(8) % 3)
    q = torch.randn(5, 3)
    s.predict(q)
    assert s.means_at == 0
    s.train_step(torch.randn(4, 3), torch.arange(4) % 3)
    s.predict(q)
    assert s.means_at == 0  # stale by design between boundaries (ncm_every = 1000)
    s.after_experience(None)
    got = s.predict(q)
    assert s.means_at == s.steps and s.steps >= 1
    fresh = copy.deepcopy(s)
    fresh.refresh_means()
    assert torch.allclose(got, fresh.model.head(fresh.model.features(q)))


class BNIdent(Ident):
    """Ident after a BatchNorm layer: its running statistics count the training-mode forwards."""

    def __init__(self, d):
        super().__init__(d)
        self.bn = torch.nn.BatchNorm1d(d)

    def forward(self, x):
        return self.bn(x.flatten(1))


@pytest.mark.parametrize("extra", [True, False])
def test_review_extra_forward_moves_batchnorm_once_more_per_batch_and_leaves_the_step_alone(extra):
    assert SCRConfig().review_extra_forward is True  # the code's behaviour is the default
    runs = {}
    for flag in (extra, not extra):
        torch.manual_seed(0)
        s = make(SCR, SCRConfig(buffer_size=20, replay_batch_size=4, view_augment="none", review_extra_forward=flag),
                 BNIdent(3), 3, (3,))
        s.buffer.add(x=torch.randn(8, 3) * 3 + 1, y=torch.arange(8) % 3)
        torch.manual_seed(1)
        s.after_experience(None)
        runs[flag] = s
    s, other = runs[extra], runs[not extra]
    # 2 review batches x (2 views, + 1 discarded pass with the flag)
    assert int(s.model.backbone.bn.num_batches_tracked) == 2 * (3 if extra else 2)
    assert not torch.allclose(s.model.backbone.bn.running_mean, other.model.backbone.bn.running_mean)
    for p, q in zip(s.model.parameters(), other.model.parameters()):  # no gradient from the discarded pass
        assert torch.allclose(p, q, atol=1e-7)
