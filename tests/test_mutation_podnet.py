"""Tests written from the mutation run of strategies/podnet.py (issue 19): the defaults (the paper's and the
authors' CIFAR-100 configuration), the validation bounds, the stage hooks with a ``stage_map``, the LSC head
built from the config, the NCA loss of the code's form over the seen classes, the imprint of a class with
fewer samples than proxies, no distillation without new classes, the gradient clamp, and the class-balanced
finetuning stage (one SGD step by hand, momentum, weight decay, clamp, batches)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strategies.podnet as podnet
from cl.core.registry import ConfigError
from cl.models.backbones.small import CNNConfig, SmallCNN
from strategies.lucir import LUCIR
from strategies.podnet import LSCHead, PODNet, PODNetConfig, nca_loss, pod_spatial, stage_names, stage_outputs

from test_podnet import after_first_experience, exp_of, make


def _sc():
    return SimpleNamespace(n_classes=4, preprocess_fn=lambda dev: (lambda x: x.float()))


def _build(**cfg):
    return PODNet.build_model(PODNetConfig(**cfg), SmallCNN(CNNConfig(channels=4, blocks=1), (1, 4, 4)), _sc())


def test_podnet_defaults_are_the_papers_and_the_codes():
    c = PODNetConfig()
    assert (c.lambda_spatial, c.lambda_flat, c.proxies, c.proxy_similarity, c.eta_init, c.margin, c.nca) == \
        (3.0, 1.0, 10, "cosine", 1.0, 0.6, "code")
    assert (c.exemplars_per_class, c.buffer_size, c.momentum, c.weight_decay, c.grad_clip) == (20, 0, 0.9, 5e-4, 5.0)
    assert (c.finetune_epochs, c.finetune_lr, c.finetune_batch_size, c.nme) == (20, 0.05, 128, False)
    assert "_stages" in PODNet.transient_attrs and set(LUCIR.transient_attrs) <= set(PODNet.transient_attrs)


def test_podnet_smallest_valid_values_are_accepted():
    _build(proxies=1, finetune_batch_size=1, finetune_epochs=0, buffer_size=0, exemplars_per_class=1,
           lambda_spatial=0.0, lambda_flat=0, margin=0.0, grad_clip=0, eta_init=1e-9, finetune_lr=1e-9)
    _build(lambda_spatial=2, eta_init=3, finetune_lr=1)  # integers for the float fields


@pytest.mark.parametrize("field,value,match", [
    ("proxies", True, r"proxies must be an integer >= 1, got True"),
    ("proxies", 2.0, r"proxies must be an integer >= 1, got 2\.0"),
    ("finetune_epochs", -1, r"finetune_epochs must be an integer >= 0, got -1"),
    ("finetune_batch_size", 0, r"finetune_batch_size must be an integer >= 1, got 0"),
    ("buffer_size", -1, r"buffer_size must be an integer >= 0, got -1"),
    ("exemplars_per_class", 0, r"exemplars_per_class must be an integer >= 1, got 0"),
    ("lambda_spatial", float("inf"), r"lambda_spatial must be a finite number >= 0, got inf"),
    ("lambda_flat", "1.0", r"lambda_flat must be a finite number >= 0, got '1.0'"),
    ("margin", -1e-9, r"margin must be a finite number >= 0"),
    ("grad_clip", float("nan"), r"grad_clip must be a finite number >= 0"),
    ("eta_init", -1.0, r"eta_init must be a finite number > 0, got -1.0"),
    ("eta_init", float("inf"), r"eta_init must be a finite number > 0, got inf"),
    ("finetune_lr", "0.1", r"finetune_lr must be a finite number > 0, got '0.1'"),
    ("finetune_lr", float("nan"), r"finetune_lr must be a finite number > 0"),
    ("frozen_backbone", True, r"frozen_backbone=true leaves none to distil; valid choice: frozen_backbone=false"),
])
def test_podnet_bad_values_name_the_field_bound_and_value(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _build(**{field: value})


def test_build_model_follows_the_config_and_the_head_init_is_kaiming_uniform():
    m = _build(proxies=3, eta_init=2.5, proxy_similarity="neg_sq_dist")
    d = m.backbone.out_dim
    assert tuple(m.head.weight.shape) == (4, 3, d) and m.head.eta.item() == 2.5 and m.head.kind == "neg_sq_dist"
    torch.manual_seed(0)
    head = LSCHead(16, 50, proxies=10)  # kaiming_uniform(a=sqrt 5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = d
    assert head.kind == "cosine" and head.eta.item() == 1.0 and head.eta.requires_grad
    assert tuple(LSCHead(3, 2).weight.shape) == (2, 10, 3)  # K = 10 proxies by default
    assert head.weight.abs().max().item() <= 0.25 and head.weight.abs().max().item() > 0.249
    assert head.weight.std().item() == pytest.approx(0.25 / math.sqrt(3), rel=0.03)
    h = torch.randn(3, 16)
    head.observe(torch.tensor([1, 4]))
    assert torch.allclose(head.raw(h), 1.0 * head.similarity(h))
    with torch.no_grad():
        head.eta.fill_(-2.0)
    out = head(h)
    assert torch.allclose(out[:, [1, 4]], -2.0 * head.similarity(h)[:, [1, 4]])
    assert torch.isinf(out[:, 0]).all() and (out[:, 0] < 0).all()


def test_stage_names_error_names_the_backbone_and_stage_outputs_apply_stage_map():
    bb = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    bb.name, bb.stage_names = "my-net", []
    with pytest.raises(ConfigError, match=r"backbone\.name='my-net' exposes none.*cnn, resnet18r, vit-tiny"):
        stage_names(bb)
    bb.stage_names = ["0"]
    assert stage_names(bb) == ["0"]
    bb.stage_map = lambda o: o[:, :, None, None] * 2  # tokens -> a (B, C, 1, 1) map
    x = torch.randn(4, 2)
    with stage_outputs(bb, ["0", "1"]) as maps:
        bb(x)
    assert len(maps) == 2 and tuple(maps[0].shape) == (4, 3, 1, 1)
    assert torch.allclose(maps[0], 2 * bb[0](x)[:, :, None, None])
    assert torch.allclose(maps[1], 2 * bb(x)[:, :, None, None])
    with pytest.raises(RuntimeError):  # hooks are removed when the body raises too
        with stage_outputs(bb, ["0"]):
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in bb.modules())


def test_pod_spatial_needs_as_many_student_as_teacher_maps():
    a = torch.ones(1, 1, 2, 2)
    for maps, old in (([], []), ([a], []), ([a, a], [a]), ([a], [a, a])):
        with pytest.raises(ValueError, match=f"{len(maps)} student maps and {len(old)} teacher maps"):
            pod_spatial(maps, old)


def test_nca_code_form_leaves_unseen_classes_out_of_the_max_and_the_denominator():
    sim = torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.7, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    valid = torch.tensor([True, True, False])
    # eta = 2: z = [1, .4, (1.8 unseen)], [.2, 1.4, (.6)]; max over the seen classes: 1 and 1.4
    c0 = math.log(math.exp(1.0) + math.exp(0.4)) - 1.0
    c1 = math.log(math.exp(1.4) + math.exp(0.2)) - 1.4
    got = nca_loss(sim, y, 2.0, 0.6, valid)
    assert got.dtype == torch.float32 and got.item() == pytest.approx((c0 + c1) / 2, rel=1e-6)
    assert nca_loss(sim, y, 2.0, 0.6, torch.ones(3, dtype=torch.bool)).item() == \
        pytest.approx(nca_loss(sim, y, 2.0, 0.6).item(), rel=1e-7)


def test_imprint_repeats_the_centres_of_a_class_with_fewer_samples_than_proxies_and_skips_absent_classes():
    s, x1, y1 = after_first_experience(proxies=3)
    x1, y1 = x1[:3], torch.tensor([2, 2, 3])  # class 3: one sample for 3 proxies; class 2: two samples
    e1 = SimpleNamespace(train_x=x1, train_y=y1, classes=[2, 3], index=1, task_id=1)
    w_old = s.model.head.weight.detach()[:2].clone()
    s.before_experience(e1)
    w = s.model.head.weight.detach()
    norm = w_old.norm(dim=2).mean()
    f3 = F.normalize(s.features(x1[2:]), dim=1)[0]
    assert all(torch.allclose(w[3, k], f3 * norm, atol=1e-6) for k in range(3))
    f2 = F.normalize(s.features(x1[:2]), dim=1)
    assert torch.allclose(w[2, 2], w[2, 0]) and {tuple(torch.round(w[2, k] / norm, decimals=4).tolist())
                                                 for k in range(2)} == {tuple(torch.round(v, decimals=4).tolist())
                                                                        for v in f2}
    # a new class listed by the experience but without a training sample keeps its proxies
    s2, x1, y1 = after_first_experience()
    before = s2.model.head.weight.detach()[3].clone()
    s2.before_experience(SimpleNamespace(train_x=x1[y1 == 2], train_y=y1[y1 == 2], classes=[2, 3], index=1,
                                         task_id=1))
    assert torch.equal(s2.model.head.weight.detach()[3], before)
    assert s2.lam == pytest.approx(math.sqrt(4 / 2))


def test_no_new_class_means_no_distillation_and_the_old_lambda():
    s, x1, y1 = after_first_experience(finetune_epochs=0)
    e1 = exp_of(x1, y1, 1)
    s.before_experience(e1)  # classes 2, 3 new: lambda = sqrt(4 / 2)
    s.model.observe(y1)
    s.train_step(x1, y1)
    s.after_experience(e1)
    lam = s.lam
    assert lam == pytest.approx(math.sqrt(2))
    x0, y0 = x1 - 1, torch.tensor([0, 1] * 4)
    s.before_experience(exp_of(x0, y0, 2))  # old classes again: nothing new to imprint or distil towards
    assert len(s._new_idx) == 0 and s.lam == lam
    with torch.no_grad():
        s.model.backbone.net[0].weight.mul_(-1.5)  # the student moves away from the teacher
    s.model.eval()
    head = s.model.head
    want = nca_loss(head.similarity(s.model.features(x0)), y0, head.eta, 0.6, head.seen)
    assert s.loss(x0, y0).item() == pytest.approx(want.item(), rel=1e-6)


def test_gradients_are_clamped_elementwise_before_the_step_and_not_with_grad_clip_zero():
    for clip in (1e-3, 0.0):
        s, x1, y1 = after_first_experience(grad_clip=clip)
        s.before_experience(exp_of(x1, y1, 1))
        s.model.observe(y1)
        s.model.zero_grad()
        s.loss(x1, y1).backward()
        raw = {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}
        assert max(g.abs().max().item() for g in raw.values()) > 1e-2
        s.before_optimizer_step(x1, y1)
        for n, p in s.model.named_parameters():
            if n in raw:
                assert torch.equal(p.grad, raw[n].clamp(-clip, clip) if clip else raw[n]), n
        assert s._frozen_rows is not None  # LUCIR's: the old proxies are remembered for after the step


def _finetune_case(**cfg):
    """At the end of the second experience, just before the finetuning stage; returns the strategy and the
    (features, labels) of its memory and the proxies before finetuning."""
    s, x1, y1 = after_first_experience(**cfg)
    e1 = exp_of(x1, y1, 1)
    s.before_experience(e1)
    s.model.observe(y1)
    s.train_step(x1, y1)
    return s, e1


def _nca_grad(s, w, idx=None):
    head = s.model.head
    feats = s.features(s.memory.x).float()
    y = s.memory.y
    idx = torch.arange(len(y)) if idx is None else idx
    w = w.clone().requires_grad_(True)
    sim = podnet.lsc_similarity(feats[idx], w, head.kind)
    nca_loss(sim, y[idx], head.eta.detach(), 0.6, head.seen).backward()
    return w.grad


def test_finetuning_is_sgd_with_momentum_and_weight_decay_on_the_proxies_by_hand():
    lr, wd = 0.3, 0.01
    s, e1 = _finetune_case(finetune_epochs=2, finetune_batch_size=8, finetune_lr=lr, weight_decay=wd, grad_clip=0)
    # finetuning runs after the herding of the new classes: the memory is that of the finished experience
    seen_after = {}
    orig = s.finetune

    def spy():
        seen_after["memory"] = sorted(s.memory.y.tolist())
        seen_after["w0"] = s.model.head.weight.detach().clone()
        orig()

    s.finetune = spy
    s.after_experience(e1)
    assert seen_after["memory"] == [0, 0, 1, 1, 2, 2, 3, 3]
    w0 = seen_after["w0"]
    v1 = _nca_grad(s, w0) + wd * w0  # one batch of all 8 per epoch: the order does not matter
    w1 = w0 - lr * v1
    v2 = 0.9 * v1 + _nca_grad(s, w1) + wd * w1
    w2 = w1 - lr * v2
    assert not torch.allclose(w1, w2, atol=1e-4)
    assert torch.allclose(s.model.head.weight.detach(), w2, atol=1e-5)
    assert s.model.head.weight.grad is None


def test_finetuning_clamps_the_proxies_gradient():
    lr, clip = 0.5, 1e-4
    s, e1 = _finetune_case(finetune_epochs=1, finetune_batch_size=100, finetune_lr=lr, weight_decay=0.0, grad_clip=clip)
    w0 = {}
    orig = s.finetune
    s.finetune = lambda: (w0.setdefault("w", s.model.head.weight.detach().clone()), orig())
    s.after_experience(e1)
    g = _nca_grad(s, w0["w"])
    assert g.abs().max().item() > 10 * clip
    assert torch.allclose(s.model.head.weight.detach(), w0["w"] - lr * g.clamp(-clip, clip), atol=1e-7)


def test_finetuning_visits_every_exemplar_once_an_epoch_in_batches_of_finetune_batch_size(monkeypatch):
    for epochs in (1, 2):
        s, e1 = _finetune_case(finetune_epochs=epochs, finetune_batch_size=3)
        batches = []
        real = podnet.nca_loss

        def spy(sim, y, *a, **k):
            batches.append(y.tolist())
            return real(sim, y, *a, **k)

        monkeypatch.setattr(podnet, "nca_loss", spy)
        s.after_experience(e1)
        monkeypatch.setattr(podnet, "nca_loss", real)
        assert [len(b) for b in batches] == [3, 3, 2] * epochs
        for e in range(epochs):
            assert sorted(sum(batches[3 * e:3 * e + 3], [])) == [0, 0, 1, 1, 2, 2, 3, 3]
        if epochs == 2:
            assert batches[:3] != batches[3:]  # a fresh shuffle each epoch


def test_finetuning_runs_only_after_an_experience_with_old_classes_and_epochs():
    s = make(finetune_epochs=5)
    x0, y0 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 4)
    e0 = exp_of(x0, y0, 0)
    s.before_experience(e0)
    s.model.observe(y0)
    s.train_step(x0, y0)
    w = s.model.head.weight.detach().clone()
    s.after_experience(e0)  # the first experience: no old class, no finetuning
    assert torch.equal(s.model.head.weight.detach(), w) and len(s.memory) == 8
    s, e1 = _finetune_case(finetune_epochs=1)
    w = s.model.head.weight.detach().clone()
    s.after_experience(e1)
    assert not torch.equal(s.model.head.weight.detach(), w)  # one epoch is enough to move the proxies
    s, e1 = _finetune_case(finetune_epochs=0)
    w = s.model.head.weight.detach().clone()
    s.after_experience(e1)
    assert torch.equal(s.model.head.weight.detach(), w)


def test_finetuning_shuffle_differs_between_boundaries_and_run_seeds_and_repeats_within_a_run(monkeypatch):
    s, e1 = _finetune_case(finetune_epochs=1, finetune_batch_size=3)
    s.after_experience(e1)
    perms = []
    real = torch.randperm

    def spy(*a, **k):
        perms.append(real(*a, **k).tolist())
        return torch.tensor(perms[-1])

    monkeypatch.setattr(torch, "randperm", spy)

    def order(seed, n_old):
        s.info.seed, s.old_classes = seed, list(range(n_old))
        perms.clear()
        s.finetune()
        return perms[0]

    first = order(0, 2)
    assert len(first) == 8 and order(0, 2) == first  # the same run, the same boundary: the same order
    assert order(0, 4) != first  # another boundary (more old classes)
    assert order(1, 2) != first and order(1, 2) != order(1, 4)  # another run seed


def test_lambda_is_the_square_root_of_seen_over_new_classes_when_not_a_whole_ratio():
    s = make()
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    e0 = exp_of(x[:2], torch.tensor([0, 0]), 0)
    s.before_experience(e0)
    s.model.observe(e0.train_y)
    s.after_experience(e0)
    s.before_experience(exp_of(x[2:], torch.tensor([1, 2, 1, 2]), 1))
    assert s.lam == pytest.approx(math.sqrt(3 / 2))  # 3 seen, 2 new (the code's factor)


def test_the_imprint_depends_on_the_run_seed():
    """The k-means initialisation of the imprinted proxies is seeded by the run's seed: other seeds, other
    centres (here their order at least), the same seed the same ones."""
    imprints = []
    for seed in (1, 2, 3, 4, 1):
        s, x1, y1 = after_first_experience(proxies=2)
        s.info.seed = seed
        s.before_experience(exp_of(x1, y1, 1))
        imprints.append(s.model.head.weight.detach()[2:].clone())
    assert torch.equal(imprints[0], imprints[-1])
    assert any(not torch.allclose(imprints[0], w) for w in imprints[1:4])


def test_nca_paper_form_hinges_each_sample_on_its_own_target():
    """A batch of a well-separated sample (hinged to 0) and a badly placed one: the mean of the per-sample
    hinges, each against its own target similarity."""
    sim = torch.tensor([[0.9, -0.9, -0.9], [0.1, 0.7, 0.3]])
    y = torch.tensor([0, 0])
    bad = math.log(math.exp(7.0) + math.exp(3.0)) - (1.0 - 6.0)  # eta 10, margin .6
    assert nca_loss(sim, y, 10.0, 0.6, form="paper").item() == pytest.approx(bad / 2, rel=1e-6)
    assert nca_loss(sim[:1], y[:1], 10.0, 0.6, form="paper").item() == 0.0
