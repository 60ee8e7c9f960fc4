"""PODNet (strategies/podnet.py): POD-spatial, the LSC with proxies and the NCA loss against hand computations
on constructed cases, the stage hooks, the finetuning stage, a short class-IL run, exact resume from a
boundary with the cnn, and the ConfigErrors for bad values, backbones without stages and task-free streams."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny
from test_resume import _interrupt_at

from cl.core.config import resolve
from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from cl.models.backbones.small import (
    MLP,
    CNNConfig,
    MLPConfig,
    ReducedResNet18,
    ResNetConfig,
    SmallCNN,
)
from cl.models.task_keys import kmeans
from cl.train.engine import Run
from strategies.podnet import (
    LSCHead,
    PODNet,
    PODNetConfig,
    lsc_similarity,
    nca_loss,
    pod_spatial,
    stage_outputs,
)

pytestmark = pytest.mark.usefixtures("restore_registry")

TINY_IMAGES = {"name": "s2-tiny-images", "n_tasks": 2, "n_classes": 4, "per_class": 8}
CNN = {"name": "cnn", "channels": 4, "blocks": 2}


# -- POD-spatial ------------------------------------------------------------------------------------------
def _pooled(m):
    """Hand pooling of one (H, W) single-channel map: squared, summed over W per row, then over H per column."""
    sq = [[v * v for v in row] for row in m]
    return [sum(row) for row in sq] + [sum(sq[i][j] for i in range(len(sq))) for j in range(len(sq[0]))]


def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def test_pod_spatial_matches_hand_computation_on_two_stages():
    a1, b1 = [[1.0, 2.0], [3.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]
    # stage 1: batch of 2, the second sample identical in student and teacher; stage 2: identical maps
    s1 = torch.tensor([[a1], [b1]])  # (2, 1, 2, 2)
    t1 = torch.tensor([[b1], [b1]])
    s2 = torch.arange(16.0).view(2, 2, 1, 4) - 5
    d1 = math.sqrt(sum((p - q) ** 2 for p, q in zip(_unit(_pooled(a1)), _unit(_pooled(b1)))))
    assert _pooled(a1) == [5.0, 9.0, 10.0, 4.0]
    want = ((d1 + 0.0) / 2 + 0.0) / 2  # mean over the batch, then over the two stages
    got = pod_spatial([s1, s2], [t1, s2.clone()])
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert d1 > 0.1
    # zero for identical maps, positive for any change, and the teacher gets no gradient
    assert pod_spatial([s1, s2], [s1.clone(), s2.clone()]).item() == pytest.approx(0.0, abs=1e-7)
    s2g = s2.clone().requires_grad_(True)
    loss = pod_spatial([s1, s2g], [s1, s2 + 0.5 * (torch.arange(4.0) == 1)])
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(s2g.grad).all() and s2g.grad.abs().sum() > 0


def test_pod_spatial_pools_width_and_height_separately():
    """Two maps with the same channel sums but pixels moved within a row differ in the height-pooled part only."""
    a = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]])
    b = torch.tensor([[[[2.0, 1.0], [0.0, 0.0]]]])  # same row sums of squares, different column sums
    assert pod_spatial([a], [b]).item() > 0
    c = torch.tensor([[[[0.0, 0.0], [1.0, 2.0]]]])  # rows swapped: width-pooled part changes
    assert pod_spatial([a], [c]).item() > 0
    assert pod_spatial([a], [a * 3]).item() == pytest.approx(0.0, abs=1e-7)  # scale-free (L2-normalised)


# -- LSC ------------------------------------------------------------------------------------------------
def test_lsc_logits_match_hand_computation_with_two_proxies():
    h = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    proxies = torch.tensor([[[1.0, 0.0], [0.0, 3.0]],  # class 0
                            [[-1.0, 0.0], [1.0, 1.0]]])  # class 1
    r = 1 / math.sqrt(2)

    def merge(s):  # softmax over the class's proxies, weighted mean of their similarities
        e = [math.exp(v) for v in s]
        return sum(v * w for v, w in zip(s, e)) / sum(e)

    cos = [[(1.0, 0.0), (-1.0, r)], [(r, r), (-r, 1.0)]]
    want = torch.tensor([[merge(c) for c in row] for row in cos])
    assert torch.allclose(lsc_similarity(h, proxies), want, atol=1e-5)
    want_sq = torch.tensor([[merge([2 * v - 2 for v in c]) for c in row] for row in cos])
    assert torch.allclose(lsc_similarity(h, proxies, "neg_sq_dist"), want_sq, atol=1e-5)
    head = LSCHead(2, 3, proxies=2, eta=2.5)
    with torch.no_grad():
        head.weight[:2] = proxies
    head.observe(torch.tensor([0, 1]))
    out = head(h)
    assert torch.allclose(out[:, :2], 2.5 * want, atol=1e-5)
    assert torch.isinf(out[:, 2]).all()  # class 2 not seen yet


# -- NCA ------------------------------------------------------------------------------------------------
def test_nca_loss_matches_hand_computation_in_both_forms():
    sim = torch.tensor([[0.5, 0.2, -0.1], [0.1, 0.7, 0.3]])
    y = torch.tensor([0, 0])
    eta, delta = 2.0, 0.6
    # the paper's form: [log sum_{i != y} exp(eta s_i) - eta (s_y - delta)]_+
    p0 = math.log(math.exp(0.4) + math.exp(-0.2)) - 2.0 * (0.5 - 0.6)
    p1 = math.log(math.exp(1.4) + math.exp(0.6)) - 2.0 * (0.1 - 0.6)
    assert nca_loss(sim, y, eta, delta, form="paper").item() == pytest.approx((p0 + p1) / 2, rel=1e-6)
    # the hinge: a well-separated sample costs nothing
    sep = torch.tensor([[0.9, -0.9, -0.9]])
    assert nca_loss(sep, torch.tensor([0]), 10.0, delta, form="paper").item() == 0.0
    # the code's form: the row max replaces the target in the denominator; the margin cancels
    c0 = math.log(math.exp(1.0) + math.exp(0.4) + math.exp(-0.2)) - 1.0
    c1 = math.log(math.exp(1.4) + math.exp(1.4) + math.exp(0.6)) - 0.2
    got = nca_loss(sim, y, eta, delta, form="code").item()
    assert got == pytest.approx((c0 + c1) / 2, rel=1e-6)
    assert nca_loss(sim, y, eta, 0.0, form="code").item() == pytest.approx(got, rel=1e-6)
    # classes outside ``valid`` (not seen yet) are left out of the denominator
    valid = torch.tensor([True, True, False])
    v0 = math.log(math.exp(0.4)) - 2.0 * (0.5 - 0.6)
    v1 = math.log(math.exp(1.4)) - 2.0 * (0.1 - 0.6)
    assert nca_loss(sim, y, eta, delta, valid, form="paper").item() == pytest.approx((v0 + v1) / 2, rel=1e-6)


def test_nca_gradient_is_finite_with_unseen_classes_and_a_learned_scale():
    head = LSCHead(3, 4, proxies=2)
    head.observe(torch.tensor([0]))  # one class seen: the denominator is empty
    h = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    for form in ("code", "paper"):
        head.zero_grad()
        nca_loss(head.similarity(h), torch.zeros(5, dtype=torch.long), head.eta, 0.6, head.seen, form).backward()
        assert torch.isfinite(head.eta.grad) and torch.isfinite(head.weight.grad).all()


# -- stages ---------------------------------------------------------------------------------------------
def test_stage_hooks_give_each_blocks_output_and_are_removed():
    torch.manual_seed(0)
    net = SmallCNN(CNNConfig(channels=4, blocks=3), (3, 8, 8))
    assert net.stage_names == ["net.3", "net.7", "net.11"]  # the max-pool ending each block
    x = torch.randn(2, 3, 8, 8)
    with stage_outputs(net, net.stage_names) as maps:
        h = net(x)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 4, 4), (2, 8, 2, 2), (2, 16, 1, 1)]
    assert torch.allclose(net.net[:4](x), maps[0]) and torch.allclose(maps[-1].flatten(1), h)
    assert all(not m._forward_hooks for m in net.modules())
    r = ReducedResNet18(ResNetConfig(nf=4), (3, 8, 8))
    with stage_outputs(r, r.stage_names) as maps:
        r(x)
    assert [m.shape[1] for m in maps] == [4, 8, 16, 32]


def test_vit_blocks_give_patch_grid_maps():
    pytest.importorskip("timm")
    from cl.models.backbones.timm_models import SmallViTConfig, vit_tiny

    bb = vit_tiny(SmallViTConfig(img_size=16, patch_size=8, depth=2, embed_dim=12, num_heads=2), (3, 16, 16))
    assert bb.stage_names == ["model.blocks.0", "model.blocks.1"]
    with stage_outputs(bb, bb.stage_names) as maps:
        bb(torch.randn(3, 3, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(3, 12, 2, 2)] * 2


# -- the strategy on constructed data -------------------------------------------------------------------
def make(**cfg):
    torch.manual_seed(0)
    bb = SmallCNN(CNNConfig(channels=4, blocks=2), (1, 4, 4))
    sc = SimpleNamespace(n_classes=4, preprocess_fn=lambda dev: (lambda x: x.float()))
    c = PODNetConfig(**{"momentum": 0.0, "weight_decay": 0.0, "proxies": 2, "buffer_size": 8, "finetune_epochs": 3,
                        **cfg})
    model = PODNet.build_model(c, bb, sc)
    s = PODNet(c, model, RunInfo(4, (1, 4, 4), torch.device("cpu"), 0))
    s.setup()
    return s


def exp_of(x, y, index):
    return SimpleNamespace(train_x=x, train_y=y, classes=sorted(set(y.tolist())), index=index, task_id=index)


def after_first_experience(**cfg):
    """PODNet after a first experience of classes 0, 1 (one step, herded memory of 8; no finetuning after the
    first experience), and the data of a second one of classes 2, 3."""
    s = make(**cfg)
    g = torch.Generator().manual_seed(1)
    x0, y0 = torch.randn(8, 1, 4, 4, generator=g), torch.tensor([0, 1] * 4)
    e0 = exp_of(x0, y0, 0)
    s.before_experience(e0)
    s.model.observe(y0)
    s.train_step(x0, y0)
    s.after_experience(e0)
    x1, y1 = torch.randn(8, 1, 4, 4, generator=g) + 1, torch.tensor([2, 3] * 4)
    return s, x1, y1


def test_boundary_imprints_proxies_keeps_old_ones_fixed_and_finetunes_the_classifier_only():
    s, x1, y1 = after_first_experience()
    e1 = exp_of(x1, y1, 1)
    w_old = s.model.head.weight.detach()[:2].clone()
    s.before_experience(e1)
    assert s.lam == pytest.approx(math.sqrt(4 / 2))  # sqrt(n_seen / n_new)
    w = s.model.head.weight.detach()
    old_norm = w_old.norm(dim=2).mean()
    f = F.normalize(s.features(x1), dim=1)
    for c in (2, 3):  # the imprinted proxies: k-means centres of the class's normalised features x old norm
        want = kmeans(f[y1 == c], 2, seed=c) * old_norm
        assert torch.allclose(w[c], want, atol=1e-6)
        assert not torch.allclose(w[c, 0], w[c, 1])
    s.model.observe(y1)
    xb, yb = torch.cat([x1, s.memory.x]), torch.cat([y1, s.memory.y])
    loss = s.loss(xb, yb)
    assert loss.item() > 0 and torch.isfinite(loss)
    w_new = s.model.head.weight.detach()[2:].clone()
    s.train_step(xb, yb)
    assert torch.equal(s.model.head.weight.detach()[:2], w_old)  # old proxies restored after the step
    assert not torch.equal(s.model.head.weight.detach()[2:], w_new)
    bb = {k: v.clone() for k, v in s.model.backbone.state_dict().items()}
    w_before, eta = s.model.head.weight.detach().clone(), s.model.head.eta.item()
    s.after_experience(e1)  # finetuning on the balanced memory: proxies move, backbone and eta do not
    assert sorted(s.memory.y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert not torch.equal(s.model.head.weight.detach(), w_before)
    assert all(torch.equal(v, bb[k]) for k, v in s.model.backbone.state_dict().items())
    assert s.model.head.eta.item() == eta
    assert torch.equal(s.teacher.module.head.weight, s.model.head.weight.detach())  # teacher after finetuning


def test_distillation_is_zero_for_the_unchanged_model_and_grows_when_it_moves():
    s = make(finetune_epochs=0)
    g = torch.Generator().manual_seed(2)
    x0, y0 = torch.randn(8, 1, 4, 4, generator=g), torch.tensor([0, 1] * 4)
    e0 = exp_of(x0, y0, 0)
    s.before_experience(e0)
    s.model.observe(y0)
    s.after_experience(e0)
    x1, y1 = torch.randn(8, 1, 4, 4, generator=g), torch.tensor([2, 3] * 4)
    s.before_experience(exp_of(x1, y1, 1))
    s.model.observe(y1)
    s.model.eval()  # BatchNorm as in the teacher: student == teacher
    head = s.model.head
    nca = nca_loss(head.similarity(s.model.features(x1)), y1, head.eta, 0.6, head.seen)
    assert s.loss(x1, y1).item() == pytest.approx(nca.item(), abs=1e-5)
    with torch.no_grad():
        s.model.backbone.net[0].weight.mul_(-1.5)
    with stage_outputs(s.model.backbone, s._stages) as maps:
        h = s.model.features(x1)
    with stage_outputs(s.teacher.module.backbone, s._stages) as old:
        h_old = s.teacher.features(x1)
    nca = nca_loss(head.similarity(h), y1, head.eta, 0.6, head.seen)
    flat = (1 - F.cosine_similarity(h, h_old, dim=1)).mean()
    want = nca + s.lam * (1.0 * flat + 3.0 * pod_spatial(maps, old))
    assert pod_spatial(maps, old).item() > 1e-3
    assert s.loss(x1, y1).item() == pytest.approx(want.item(), rel=1e-5)


# -- runs -----------------------------------------------------------------------------------------------
def _cfg(**strategy):
    import test_strategies2_engine  # noqa: F401  (registers s2-tiny-images)

    return resolve(tiny({"name": "podnet", "buffer_size": 8, "finetune_epochs": 2, **strategy}, scenario=TINY_IMAGES,
                        backbone=CNN, protocol={"name": "offline", "epochs": 2, "batch_size": 8}))


def test_two_experience_class_il_run_finishes_with_finite_accuracy(tmp_path):
    res = Run(_cfg(), progress=False, out_dir=tmp_path).execute()
    assert res["status"] == "finished"
    assert len(res["R"]) == 2 and all(a is not None and math.isfinite(a) for a in res["R"][-1])
    assert math.isfinite(res["metrics"]["avg_acc"])


def test_resume_from_a_boundary_is_exact_with_the_cnn(tmp_path):
    cfg = _cfg()
    want = Run(cfg, progress=False, out_dir=tmp_path / "a").execute()["R"]
    undo = _interrupt_at("podnet", 1)  # stop when the second experience starts, after the boundary checkpoint
    try:
        assert Run(cfg, progress=False, out_dir=tmp_path / "b").execute()["status"] == "interrupted"
    finally:
        undo()
    extra = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["strategy"]["extra"]
    assert extra["teacher"] is not None and len(extra["memory"]["y"]) == 8  # plain tensors: teacher, memory
    again = Run(cfg, progress=False, out_dir=tmp_path / "b").execute()
    assert again["resumed"] and again["R"] == want


# -- bad configurations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,match", [
    ("proxies", 0, "proxies"), ("lambda_spatial", -1.0, "lambda_spatial"), ("lambda_flat", float("nan"), "lambda_flat"),
    ("margin", -0.1, "margin"), ("eta_init", 0.0, "eta_init"), ("finetune_epochs", -1, "finetune_epochs"),
    ("finetune_lr", 0.0, "finetune_lr"), ("finetune_batch_size", 0, "finetune_batch_size"),
    ("buffer_size", -5, "buffer_size"), ("exemplars_per_class", 0, "exemplars_per_class"),
    ("grad_clip", -1.0, "grad_clip"), ("proxy_similarity", "dot", "proxy_similarity.*cosine"),
    ("nca", "softmax", "nca.*code.*paper"), ("frozen_backbone", True, "frozen_backbone"),
])
def test_bad_values_are_config_errors_naming_the_field(field, value, match):
    bb = SmallCNN(CNNConfig(channels=4, blocks=1), (1, 4, 4))
    sc = SimpleNamespace(n_classes=4, preprocess_fn=lambda dev: (lambda x: x.float()))
    with pytest.raises(ConfigError, match=match):
        PODNet.build_model(PODNetConfig(**{field: value}), bb, sc)


def test_backbone_without_stages_is_a_config_error_naming_backbone_name(tmp_path):
    sc = SimpleNamespace(n_classes=4, preprocess_fn=lambda dev: (lambda x: x.float()))
    with pytest.raises(ConfigError, match=r"backbone\.name='MLP'.*cnn, resnet18r"):
        PODNet.build_model(PODNetConfig(), MLP(MLPConfig(hidden=8), (4,)), sc)
    with pytest.raises(ConfigError, match=r"backbone\.name='MLP'"):  # through the engine too
        Run(resolve(tiny({"name": "podnet"}, backbone="mlp")), progress=False, out_dir=tmp_path).execute()


def test_task_free_stream_is_refused_naming_scenario_boundaries():
    bb = SmallCNN(CNNConfig(channels=4, blocks=1), (1, 4, 4))
    sc = SimpleNamespace(n_classes=4, preprocess_fn=lambda dev: (lambda x: x.float()))
    c = PODNetConfig()
    model = PODNet.build_model(c, bb, sc)
    info = RunInfo(n_classes=4, input_shape=(1, 4, 4), device=torch.device("cpu"), seed=0, boundaries="none")
    with pytest.raises(ConfigError, match=r"needs experience boundaries.*scenario.boundaries='none'.*visible"):
        PODNet(c, model, info).setup()
