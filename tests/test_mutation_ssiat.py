"""SSIAT (strategies/ssiat.py), tests written from its mutation run (issue 19): defaults and bad choices, the
adapter choice, the cosine classifier, the session schedule, the class statistics and semantic shift by hand,
the Gaussian samples, and the classifier alignment (samples, masked CE, SGD and its cosine schedule) on
hand-made features (a linear backbone at the identity)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import ConfigError, strategies
from cl.core.streams import Scenario
from strategies.ssiat import SSIATModel, semantic_drift
from test_strategies2_mechanism import make_strategy, tiny_vit


class Lin(nn.Module):
    """A linear backbone at the identity (the shared LoRA starts as the identity too): features = inputs."""

    def __init__(self, d=2):
        super().__init__()
        self.fc = nn.Linear(d, d)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(d))
            self.fc.bias.zero_()
        self.out_dim = d

    def forward(self, x):
        return self.fc(x)


def exp(x, y, classes=None, index=0):
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    return SimpleNamespace(train_x=x, train_y=y, test_x=x[:4], test_y=y[:4], index=index, task_id=None,
                           classes=sorted(set(y.tolist())) if classes is None else classes)


def make(exps, n_classes, d=2, **cfg):
    sc = Scenario("ssiat-vec", exps, n_classes, (d,), list(range(n_classes)), modality="vector")
    return make_strategy("ssiat", Lin(d), sc, **{"adapter": "lora", **cfg})


def test_ssiat_defaults_are_the_official_config():
    c = strategies.get("ssiat").config()
    assert (c.lr, c.momentum, c.weight_decay, c.adapter, c.bottleneck, c.adapter_scale, c.adapter_dropout) == \
        (0.01, 0.9, 5e-4, "auto", 64, 0.1, 0.1)
    assert (c.lora_r, c.lora_alpha, c.scale, c.sigma, c.shift, c.ca, c.ca_epochs, c.ca_samples, c.ca_lr) == \
        (8, 16, 20.0, 4.0, True, True, 5, 256, 0.01)
    assert (c.cov, c.cov_eps, c.mean_scaling, c.feature_batch, c.session_epochs) == ("full", 1e-3, True, 256, None)


@pytest.mark.parametrize("cfg,pattern", [({"adapter": "prefix"}, r"unknown strategy\.adapter 'prefix'.*adaptformer, auto, lora"),
                                         ({"adapter": "abc"}, r"unknown strategy\.adapter 'abc'.*adaptformer, auto, lora"),
                                         ({"cov": "diagonal"}, r"unknown strategy\.cov 'diagonal'.*diag, full")])
def test_ssiat_bad_choices_name_the_field(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make([exp([[0.0, 1.0]], [0])], 2, **cfg)


def test_ssiat_adapter_choice():
    sc = Scenario("v", [], 4, (3, 32, 32), [0, 1, 2, 3])
    s = make_strategy("ssiat", tiny_vit(), sc, bottleneck=3, adapter_scale=0.5, adapter_dropout=0.25)
    ad = s.model.adapters  # auto on a ViT: AdaptFormer, the backbone frozen
    assert ad is not None and len(ad) == 2
    assert all(a.down.out_features == 3 and a.scale == 0.5 and a.drop.p == 0.25 for a in ad)
    assert not any(p.requires_grad for n, p in s.model.backbone.named_parameters())
    s = make([exp([[0.0, 1.0]], [0])], 2, lora_r=2, lora_alpha=6)  # lora: one shared adapter inside the backbone
    assert s.model.adapters is None
    a = next(p for n, p in s.model.backbone.named_parameters() if "lora_A.shared" in n)
    assert a.shape == (2, 2) and a.requires_grad
    sc = Scenario("v", [], 2, (2,), [0, 1], modality="vector")
    with pytest.raises(ValueError, match="no transformer block found in Lin.*use adapter=lora"):
        make_strategy("ssiat", Lin(), sc, adapter="adaptformer")  # asked for, not replaced by a LoRA
    s = make_strategy("ssiat", Lin(), sc)  # auto on a backbone without transformer blocks: LoRA
    assert s.model.adapters is None and any("lora_A.shared" in n for n, _ in s.model.backbone.named_parameters())


def test_cosine_classifier_logits_and_mask():
    torch.manual_seed(0)
    m = SSIATModel(Lin(), 3, 20.0, None)
    assert m.weight.shape == (3, 2) and m.seen.tolist() == [False] * 3
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    h = torch.tensor([[3.0, 4.0]])
    want = 20 * torch.tensor([[0.6, 0.8, -1.4 / math.sqrt(2)]])
    assert torch.allclose(m.logits(h), want, atol=1e-4)
    m.observe(torch.tensor([0, 2]))
    out = m(h)
    assert torch.allclose(out[:, [0, 2]], want[:, [0, 2]], atol=1e-4) and torch.isinf(out[:, 1]).all()
    # the initial rows are not zero and not all equal (kaiming uniform)
    m2 = SSIATModel(Lin(), 3, 20.0, None)
    assert m2.weight.abs().min() > 0 and m2.weight.std() > 0.05


def test_ssiat_setup_and_before_experience():
    x, y = torch.randn(6, 2), torch.tensor([1, 2] * 3)
    s = make([exp(x, y)], 4)
    assert s.means.shape == (4, 2) and s.means.dtype == torch.float64 and not s.means.any()
    assert s.class_session.tolist() == [-1] * 4 and s.session == -1 and s.covs == {} and s.drift_log == []
    assert (s._session_done, s._session_total, s._repeat) == (0, 0, 1)
    s.before_experience(exp(x, y))
    assert s.session == 0 and s.current.tolist() == [False, True, True, False] and s._y1 is None
    assert isinstance(s.optimizer, torch.optim.SGD)
    assert s.train_data(exp(x, y))[1].tolist() == y.tolist()  # no session_epochs: the data once
    lr = s.optimizer.param_groups[0]["lr"]
    s.train_step(x, y)
    assert s.optimizer.param_groups[0]["lr"] == lr == 0.01 and s._session_done == 0  # constant lr


def test_ssiat_one_session_epochs_value_is_used_for_every_session_and_the_cosine_ends_at_zero():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    e = exp(x, y)
    s = make([e], 4, session_epochs=[2], lr=0.1)
    s.before_experience(e)
    assert s._repeat == 2 and s._session_total == 8
    xr, yr = s.train_data(e)
    assert torch.equal(xr, torch.cat([x, x])) and yr.tolist() == y.tolist() * 2
    lrs = []
    for _ in range(6):  # 4 samples a step; past the session's 8 samples the lr stays 0
        s.train_step(x, y)
        lrs.append(s.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.05, 0.0, 0.0, 0.0, 0.0], abs=1e-12) and s._session_done == 24
    s.after_experience(e)
    s.before_experience(exp(x, y + 2, index=1))
    assert s._repeat == 2 and s.session == 1
    s = make([e], 2, session_epochs=[1, 1])
    s.before_experience(e)
    assert s._repeat == 1 and s.train_data(e)[1].tolist() == y.tolist()


def test_ssiat_class_statistics_by_hand():
    x = [[0, 0], [2, 0], [1, 3], [5, 5], [0, 0], [2, 4]]
    y = [0, 0, 0, 1, 2, 2]
    e = exp(x, y, classes=[3, 0, 1, 2])  # class 3 has no sample: skipped
    for cov in ("full", "diag"):
        s = make([e], 4, cov=cov, cov_eps=0.5, ca=False)
        s.before_experience(e)
        s.after_experience(e)
        assert torch.allclose(s.means[0], torch.tensor([1.0, 1.0], dtype=torch.float64))
        assert torch.allclose(s.means[1], torch.tensor([5.0, 5.0], dtype=torch.float64))
        assert s.class_session.tolist() == [0, 0, 0, -1] and sorted(s.covs) == [0, 1, 2]
        var = torch.tensor([1.0, 3.0])  # unbiased, over 3 samples; a single sample has none
        if cov == "diag":
            assert torch.allclose(s.covs[0], var + 0.5) and torch.allclose(s.covs[1], torch.full((2,), 0.5))
            assert torch.allclose(s.covs[2], torch.tensor([2.0, 8.0]) + 0.5)  # two samples: unbiased variance
        else:
            f = torch.tensor(x[:3], dtype=torch.float64)
            full = torch.cov(f.t()) + 0.5 * torch.eye(2, dtype=torch.float64)
            L = s.covs[0]
            assert L.dtype == torch.float32 and torch.allclose(torch.tril(L), L)
            assert torch.allclose((L @ L.t()).double(), full, atol=1e-5)
            assert torch.allclose(s.covs[1], torch.eye(2) * math.sqrt(0.5))
            f2 = torch.tensor(x[4:], dtype=torch.float64)  # two samples: their unbiased covariance
            want2 = torch.cov(f2.t()) + 0.5 * torch.eye(2, dtype=torch.float64)
            assert torch.allclose((s.covs[2] @ s.covs[2].t()).double(), want2, atol=1e-5)


def test_ssiat_shift_moves_old_means_by_the_kernel_weighted_drift_and_logs_it():
    e0 = exp([[0.0, 0.0], [0.2, 0.0], [4.0, 4.0]], [0, 0, 1])
    e1 = exp([[0.0, 1.0], [4.0, 5.0]], [2, 3], index=1)
    s = make([e0, e1], 4, ca=False, sigma=2.0)
    s.before_experience(e0)
    assert s._y1 is None  # nothing old to shift yet
    s.after_experience(e0)
    assert s.drift_log == [] and s.extra_metrics() == {}
    old = s.means[:2].clone()
    s.before_experience(e1)
    y1 = s._y1.clone()
    assert torch.allclose(y1, e1.train_x.double())
    with torch.no_grad():  # "training" moves the features: x -> 2 x
        s.model.backbone.fc.base_layer.weight.mul_(2) if hasattr(s.model.backbone.fc, "base_layer") else \
            s.model.backbone.fc.weight.mul_(2)
    s.after_experience(e1)
    y2 = 2 * e1.train_x.double()
    delta = semantic_drift(y1, y2, old, 2.0)
    assert torch.allclose(s.means[:2], old + delta) and not torch.allclose(delta, torch.zeros_like(delta))
    assert s.drift_log == pytest.approx([float(delta.norm(dim=1).mean())])
    assert s.extra_metrics() == {"mean_drift_norm": s.drift_log[-1]}
    assert torch.allclose(s.means[2:], y2)  # the new classes' means: their features after the session
    assert s._y1 is None
    # shift off: the old means stay, and no features are taken before the session
    s = make([e0, e1], 4, ca=False, shift=False)
    s.before_experience(e0)
    s.after_experience(e0)
    old = s.means[:2].clone()
    s.before_experience(e1)
    assert s._y1 is None
    s.after_experience(e1)
    assert torch.equal(s.means[:2], old) and s.drift_log == []


def test_ssiat_extract_uses_eval_mode_and_restores_it():
    s = make([exp([[0.0, 1.0]], [0])], 2, feature_batch=1)
    modes = []
    s.model.backbone.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    s.model.train()
    x = torch.randn(3, 2)
    f = s.extract(x)
    assert modes == [False] * 3 and s.model.training and f.dtype == torch.float64 and torch.allclose(f, x.double())
    s.model.eval()
    s.extract(x)
    assert not s.model.training


def test_ssiat_samples_are_scaled_means_plus_the_factor_times_noise():
    s = make([exp([[0.0, 1.0]], [0])], 3)
    s.means[0] = torch.tensor([1.0, 2.0], dtype=torch.float64)
    s.class_session[0] = 0
    L = torch.tensor([[2.0, 0.0], [1.0, 0.5]])
    s.covs[0] = L
    torch.manual_seed(3)
    z = torch.randn(4, 2)
    torch.manual_seed(3)
    got = s._sample(0, 4, 2)  # t_c = 0 of t = 2: mean x (0.9 + 0.1 / 3)
    assert torch.allclose(got, torch.tensor([1.0, 2.0]) * (0.9 + 0.1 / 3) + z @ L.t(), atol=1e-6)
    s.covs[0] = torch.tensor([4.0, 0.25])  # diag: variances
    torch.manual_seed(3)
    got = s._sample(0, 4, 0)
    assert torch.allclose(got, torch.tensor([1.0, 2.0]) + z * torch.tensor([2.0, 0.5]), atol=1e-6)
    s.cfg.mean_scaling = False
    torch.manual_seed(3)
    assert torch.allclose(s._sample(0, 4, 2), torch.tensor([1.0, 2.0]) + z * torch.tensor([2.0, 0.5]), atol=1e-6)


def test_ssiat_alignment_by_hand(monkeypatch):
    mu = {1: [1.0, 2.0], 3: [3.0, -1.0], 0: [-2.0, 0.5]}
    e0 = exp([mu[1]] * 3 + [mu[3]] * 3, [1] * 3 + [3] * 3, index=0)
    e1 = exp([mu[0]] * 3, [0] * 3, index=1)
    s = make([e0, e1], 5, cov_eps=1e-12, ca_epochs=2, ca_samples=3, ca_lr=0.1, shift=False)
    s.before_experience(e0)
    w0 = s.model.weight.detach().clone()
    s.after_experience(e0)
    assert torch.equal(s.model.weight, w0)  # no alignment after the first session
    s.before_experience(e1)
    io, steps = [], []
    orig_logits, orig_step = s.model.logits, torch.optim.SGD.step

    def logits(h):
        out = orig_logits(h)
        io.append((h.detach().clone(), out.detach().clone()))
        return out

    ce = []
    orig_ce = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda lo, t, *a, **k: (ce.append((lo.detach().clone(), t.clone())),
                                                                    orig_ce(lo, t, *a, **k))[1])

    def step(opt, *a, **k):
        steps.append([(g["lr"], g["momentum"], g["weight_decay"], [id(p) for p in g["params"]])
                      for g in opt.param_groups])
        return orig_step(opt, *a, **k)

    monkeypatch.setattr(s.model, "logits", logits)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    s.after_experience(e1)
    scale = {0: 1.0, 1: 0.95, 3: 0.95}
    n = 2 * 3  # epochs x seen classes, one batch of 3 samples each
    assert len(steps) == len(ce) == len(io) == n
    counts = {c: 0 for c in scale}
    for k, ((h, out), (lo, t), st) in enumerate(zip(io, ce, steps)):
        assert h.shape == (3, 2)
        for row, c in zip(h, t.tolist()):  # targets are class indices
            counts[c] += 1
            assert torch.allclose(row, torch.tensor(mu[c]) * scale[c], atol=1e-4)
        assert torch.equal(lo[:, [0, 1, 3]], out[:, [0, 1, 3]]) and torch.isinf(lo[:, [2, 4]]).all()
        lr = 0.1 * (1 + math.cos(math.pi * k / n)) / 2  # cosine over every batch of the alignment
        assert st == [(pytest.approx(lr), 0.9, 5e-4, [id(s.model.weight)])]
    assert counts == {c: 6 for c in scale}
    assert not torch.equal(s.model.weight, w0)


def test_ssiat_alignment_runs_after_every_session_from_the_second():
    exps = [exp([[1.0, 2.0], [1.0, 2.1]], [0, 0]), exp([[3.0, -1.0], [3.1, -1.0]], [1, 1], index=1),
            exp([[-2.0, 0.5], [-2.0, 0.6]], [2, 2], index=2)]
    s = make(exps, 3, ca_epochs=1, ca_samples=2)
    moved = []
    for e in exps:
        s.before_experience(e)
        w = s.model.weight.detach().clone()
        s.after_experience(e)
        moved.append(not torch.equal(s.model.weight, w))
    assert moved == [False, True, True]


def test_ssiat_alignment_is_off_without_ca():
    e0 = exp([[1.0, 2.0], [3.0, -1.0]], [0, 1])
    e1 = exp([[-2.0, 0.5]], [2], index=1)
    s = make([e0, e1], 3, ca=False)
    for e in (e0, e1):
        s.before_experience(e)
        w = s.model.weight.detach().clone()
        s.after_experience(e)
        assert torch.equal(s.model.weight, w)


def test_ssiat_loss_is_the_local_cosine_ce_and_predict_masks_unseen():
    x, y = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]), torch.tensor([2, 3, 2])
    s = make([exp(x, y)], 5)
    s.before_experience(exp(x, y))
    lo = 20 * F.normalize(x, dim=1) @ F.normalize(s.model.weight.detach(), dim=1).t()
    assert s.loss(x, y).item() == pytest.approx(F.cross_entropy(lo[:, 2:4], y - 2).item(), rel=1e-4)
    s.augment = lambda b: -b
    lo_neg = 20 * F.normalize(-x, dim=1) @ F.normalize(s.model.weight.detach(), dim=1).t()
    assert s.loss(x, y).item() == pytest.approx(F.cross_entropy(lo_neg[:, 2:4], y - 2).item(), rel=1e-4)
    s.model.observe(torch.tensor([2, 3]))
    p = s.predict(x)
    assert torch.allclose(p[:, 2:4], lo[:, 2:4], atol=1e-4) and torch.isinf(p[:, [0, 1, 4]]).all()


def test_ssiat_keeps_batchnorm_statistics():
    from test_ptm3 import backbone

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8) * 3 + 1, torch.tensor([0, 1] * 4)
    sc = Scenario("v", [exp(x, y)], 2, (3, 8, 8), [0, 1], modality="vector")
    s = make_strategy("ssiat", backbone("cnn", shape=(3, 8, 8), channels=4, blocks=1), sc, adapter="lora")
    bn = next(m for m in s.model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    s.before_experience(sc[0])
    s.model.train()
    s.train_step(x, y)
    assert torch.equal(bn.running_mean, before)


def test_ssiat_extra_state_round_trip():
    e0 = exp([[1.0, 2.0], [3.0, -1.0]], [0, 1])
    s = make([e0], 3, ca=False)
    s.before_experience(e0)
    s.after_experience(e0)
    s.drift_log = [0.25, 0.5]
    assert s.extra_metrics() == {"mean_drift_norm": 0.5}  # the last session's drift
    st = s.extra_state()
    t = make([e0], 3, ca=False)
    t.load_extra_state(st)
    assert torch.equal(t.means, s.means) and t.covs.keys() == s.covs.keys() and t.session == 0
    assert torch.equal(t.class_session, s.class_session) and t.drift_log == [0.25, 0.5]
    del st["drift_log"]
    t.load_extra_state(st)
    assert t.drift_log == []


def test_cosine_classifier_starts_as_a_default_linear_layer():
    # kaiming uniform with a = sqrt(5): U(-1 / sqrt(d), 1 / sqrt(d)), nn.Linear's default (0.1 for d = 100)
    torch.manual_seed(0)
    w = SSIATModel(Lin(100), 200, 20.0, None).weight.detach()
    assert 0.0995 < float(w.abs().max()) <= 0.1 and abs(float(w.mean())) < 0.002


@pytest.mark.parametrize("cfg,bad", [({"session_epochs": [0]}, True), ({"session_epochs": [2, 0]}, True),
                                     ({"session_epochs": [1, 2, 3]}, True), ({"session_epochs": []}, True),
                                     ({"session_epochs": [1]}, False), ({"session_epochs": [3, 1]}, False),
                                     ({"ca_samples": 0}, True), ({"ca_samples": 1}, False),
                                     ({"sigma": 0.0}, True), ({"sigma": 1e-3}, False)])
def test_ssiat_bounds(cfg, bad):
    if bad:
        (k, v), = cfg.items()
        with pytest.raises(ConfigError, match=rf"strategy\.{k}.*got.*{v}".replace("[", r"\[").replace("]", r"\]")):
            make([exp([[0.0, 1.0]], [0])], 2, **cfg)
    else:
        make([exp([[0.0, 1.0]], [0])], 2, **cfg)


def test_ssiat_shift_moves_every_old_session_s_means():
    exps = [exp([[1.0, 2.0]], [0]), exp([[3.0, -1.0]], [1], index=1), exp([[-2.0, 0.5]], [2], index=2)]
    s = make(exps, 3, ca=False)
    for e in exps[:2]:
        s.before_experience(e)
        s.after_experience(e)
    old = s.means[:2].clone()
    s.before_experience(exps[2])
    with torch.no_grad():  # "training" translates every feature by b
        s.model.backbone.fc.base_layer.bias.add_(torch.tensor([0.5, -1.0]))
    s.after_experience(exps[2])
    assert torch.allclose(s.means[:2], old + torch.tensor([0.5, -1.0], dtype=torch.float64), atol=1e-6)
