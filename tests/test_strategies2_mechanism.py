"""Mechanism tests for the PEFT / prototype strategies of issue 6 (CoLoR, S-Prompts, L2P, L2L, PRD, SSIAT)
and the task-key k-means (cl/task_keys.py).  Everything runs on a tiny random-init ViT (and MiniLM for the
text checks) on the CPU."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.models.backbones import build_backbone
from cl.core.config import section_config
from cl.core.registry import backbones, strategies
from cl.core.strategy import RunInfo
from cl.core.streams import Scenario
from cl.models.task_keys import TaskKeys, grouped_apply, kmeans
from strategies.prd import prototype_loss, relation_distillation, supcon_loss
from strategies.ssiat import semantic_drift

VIT = dict(depth=2, embed_dim=48, num_heads=3, patch_size=8, img_size=32)


def tiny_vit():
    torch.manual_seed(0)
    entry = backbones.get("vit-tiny")
    return build_backbone("vit-tiny", entry.config(**VIT), (3, 32, 32))


def fake_scenario(n_tasks=2, n_classes=4, shape=(3, 32, 32), setting="class", modality="image"):
    exps = []
    per = n_classes // n_tasks
    g = torch.Generator().manual_seed(1)
    for t in range(n_tasks):
        cls = list(range(t * per, (t + 1) * per))
        y = torch.tensor(cls).repeat_interleave(6)
        x = torch.randint(0, 256, (len(y), *shape), generator=g, dtype=torch.uint8)
        exps.append(SimpleNamespace(train_x=x, train_y=y, test_x=x[:4], test_y=y[:4], classes=cls, task_id=None,
                                    index=t))
    sc = Scenario("fake", exps, n_classes, shape, list(range(n_classes)), setting=setting, modality=modality)
    return sc


def make_strategy(name, backbone, scenario, **cfg):
    entry = strategies.get(name)
    scfg = entry.config(**cfg)
    if hasattr(backbone, "make_preprocess"):
        scenario.preprocess_fn = lambda dev, _b=backbone, _s=scenario: _b.make_preprocess(_s, dev)
    model = entry.obj.build_model(scfg, backbone, scenario)
    info = RunInfo(n_classes=scenario.n_classes, input_shape=scenario.input_shape, device=torch.device("cpu"),
                   seed=0, setting=scenario.setting, n_experiences=len(scenario))
    s = entry.obj(scfg, model, info)
    s.setup()
    return s


def images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1


# -- untrained adapters and prompts -----------------------------------------------------------------
def test_untrained_lora_is_identity_vit():
    bb = tiny_vit()
    x = images()
    with torch.no_grad():
        ref = bb(x)
    s = make_strategy("color", bb, fake_scenario())
    with torch.no_grad():
        for t in range(2):
            assert torch.allclose(s.expert_features(t, x), ref, atol=1e-6)
        assert torch.allclose(s.query_features(x), ref, atol=1e-6)


def test_color_lora_on_efficientnet_convolutions():
    """EfficientNet-Lite0 (random init; same layers as the pretrained one): LoRA on its convolutions is the
    identity until trained, and a step trains only the current task's conv adapters and head."""
    entry = backbones.get("efficientnet-lite0")
    torch.manual_seed(0)
    bb = build_backbone("efficientnet-lite0", entry.config(pretrained=False, input_size=32), (3, 32, 32))
    x = images(2)
    with torch.no_grad():
        ref = bb(x)
    sc = fake_scenario()
    s = make_strategy("color", bb, sc)
    with torch.no_grad():
        assert torch.allclose(s.expert_features(1, x), ref, atol=1e-5)
    convs = [n for n, m in bb.named_modules() if type(m).__name__ == "Conv2d" and hasattr(m, "lora_A")]
    assert len(convs) > 20  # peft LoRA conv layers
    s.before_experience(sc[0])
    s.model.train()
    bn = {n: b.clone() for n, b in bb.named_buffers() if "running" in n}
    s.train_step(x, torch.tensor([0, 1]))
    got = {n for n, p in s.model.named_parameters() if p.grad is not None}
    assert got and all((".task0." in n and "lora_" in n) or n.startswith("heads.0.") for n in got)
    # the frozen backbone's BatchNorm statistics (shared by every task's adapter) must not move
    assert all(torch.equal(b, dict(bb.named_buffers())[n]) for n, b in bn.items())


def test_untrained_adaptformer_is_identity_vit():
    bb = tiny_vit()
    x = images()
    with torch.no_grad():
        ref = bb(x)
    s = make_strategy("ssiat", bb, fake_scenario())
    s.model.eval()
    with torch.no_grad():
        assert torch.allclose(s.model.features(x), ref, atol=1e-6)
    assert len(s.model.adapters) == VIT["depth"]


def test_prompts_leave_frozen_model_unchanged():
    """Training prompts (S-Prompts, L2P) changes neither the backbone's weights nor its un-prompted outputs."""
    x = images()
    for name in ("sprompts", "l2p"):
        bb = tiny_vit()
        with torch.no_grad():
            ref = bb(x)
        before = copy.deepcopy(bb.state_dict())
        sc = fake_scenario()
        s = make_strategy(name, bb, sc, lr=0.1)
        s.before_experience(sc[0])
        pre = sc.preprocess_fn("cpu")
        for _ in range(2):
            s.train_step(pre(sc[0].train_x[:8]), sc[0].train_y[:8])
        after = bb.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        with torch.no_grad():
            assert torch.allclose(bb(x), ref, atol=1e-6)


# -- only the intended parameters receive gradients ------------------------------------------------
def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


def _step(s, sc, task):
    for t in range(task + 1):
        s.before_experience(sc[t])
        if t < task:
            s.after_experience(sc[t])
    s.model.zero_grad(set_to_none=True)
    for p in s.model.parameters():
        p.grad = None
    pre = sc.preprocess_fn("cpu")
    s.train_step(pre(sc[task].train_x[:8]), sc[task].train_y[:8])


def test_color_gradients_only_current_adapter_and_head():
    sc = fake_scenario()
    s = make_strategy("color", tiny_vit(), sc)
    _step(s, sc, 1)
    got = {n for n, g in _grads(s.model).items() if g is not None}
    assert got, "no gradient at all"
    for n in got:
        assert (".task1." in n and "lora_" in n) or n.startswith("heads.1."), n
    assert any("lora_" in n for n in got) and any(n.startswith("heads.1.") for n in got)


def test_sprompts_gradients_only_current_prompt_and_head():
    sc = fake_scenario()
    s = make_strategy("sprompts", tiny_vit(), sc)
    _step(s, sc, 1)
    got = {n for n, g in _grads(s.model).items() if g is not None}
    assert got == {"experts.1.tokens", "heads.1.weight", "heads.1.bias"}


def test_l2p_gradients_only_pool_and_head():
    sc = fake_scenario()
    s = make_strategy("l2p", tiny_vit(), sc, pool_size=4, top_k=2, length=2)
    _step(s, sc, 0)
    got = {n for n, g in _grads(s.model).items() if g is not None}
    assert got == {"pool.prompts", "pool.keys", "head.fc.weight", "head.fc.bias"}


def test_l2l_gradients_only_selected_adapters_keys_and_head():
    sc = fake_scenario()
    s = make_strategy("l2l", tiny_vit(), sc, pool_size=3, top_k=1)
    _step(s, sc, 0)
    sel = set(s.model.last_index.flatten().tolist())
    got = {n for n, g in _grads(s.model).items() if g is not None}
    assert {"pool.keys", "head.fc.weight", "head.fc.bias"} <= got
    lora = {n for n in got if "lora_" in n}
    assert lora and all(any(f".pool{i}." in n for i in sel) for n in lora)
    assert not (got - lora - {"pool.keys", "head.fc.weight", "head.fc.bias"})


def test_ssiat_gradients_only_adapter_and_classifier():
    sc = fake_scenario()
    s = make_strategy("ssiat", tiny_vit(), sc)
    _step(s, sc, 0)
    got = {n for n, g in _grads(s.model).items() if g is not None}
    assert "weight" in got and any(n.startswith("adapters.") for n in got)
    assert all(n == "weight" or n.startswith("adapters.") for n in got), got


# -- task keys -------------------------------------------------------------------------------------------
def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0], [0, 10.0], [-10.0, 0]])
    x = torch.cat([c + torch.randn(50, 2, generator=g) * 0.3 for c in centres])
    c = kmeans(x, 3, seed=0)
    d = torch.cdist(centres, c)
    assert d.min(1).values.max() < 0.5


def test_task_keys_prefer_the_right_task():
    g = torch.Generator().manual_seed(0)
    d, n_tasks = 32, 4
    task_dirs = F.normalize(torch.randn(n_tasks, d, generator=g), dim=1) * 5
    train, test = [], []
    for t in range(n_tasks):
        sub = task_dirs[t] + torch.randn(3, d, generator=g)  # three sub-clusters (classes) per task
        draw = lambda n: sub[torch.randint(3, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)  # noqa
        train.append(draw(60))
        test.append(draw(40))
    for metric in ("l2", "l1", "cosine"):
        keys = TaskKeys(k=5, metric=metric)
        for t in range(n_tasks):
            keys.add(t, train[t] * (1 + t))  # scale differences vanish after L2 normalisation
        assert keys.keys.shape == (5 * n_tasks, d)
        pred = keys.predict(torch.cat(test))
        true = torch.arange(n_tasks).repeat_interleave(40)
        assert (pred == true).float().mean() > 0.95, metric
    st = keys.state_dict()
    k2 = TaskKeys()
    k2.load_state_dict(st)
    assert torch.equal(k2.predict(test[1]), keys.predict(test[1]))


def test_grouped_apply_puts_outputs_back_in_order():
    x = torch.arange(6.0).view(6, 1)
    groups = torch.tensor([1, 0, 1, 2, 0, 2])
    out = grouped_apply(x, groups, lambda g, xg: xg * 10 + g)
    assert torch.equal(out.flatten(), torch.tensor([1.0, 10, 21, 32, 40, 52]))


# -- PRD ------------------------------------------------------------------------------------------------
class LinearBackbone(nn.Module):
    def __init__(self, d_in=6, d=5):
        super().__init__()
        self.fc = nn.Linear(d_in, d)
        self.out_dim = d

    def forward(self, x):
        return self.fc(x)


def test_prd_prototype_loss_sends_no_gradient_to_encoder():
    torch.manual_seed(0)
    enc = LinearBackbone()
    protos = nn.Parameter(torch.randn(4, 5))
    x, y = torch.randn(8, 6), torch.tensor([0, 1] * 4)
    prototype_loss(enc(x), protos, y).backward()
    assert enc.fc.weight.grad is None and enc.fc.bias.grad is None
    assert protos.grad[:2].abs().sum() > 0 and torch.all(protos.grad[2:] == 0)


def test_prd_old_prototypes_move_only_through_distillation():
    torch.manual_seed(0)
    sc = Scenario("vec", [SimpleNamespace(classes=[0, 1], train_x=None), SimpleNamespace(classes=[2, 3], train_x=None)],
                  4, (6,), [0, 1, 2, 3], modality="vector")
    x, y = torch.randn(8, 6), torch.tensor([2, 3] * 4)
    moved = {}
    for coef in (0.0, 4.0):
        torch.manual_seed(0)
        s = make_strategy("prd", LinearBackbone(), sc, distill_coef=coef, lr=0.1, proto_lr=0.5)
        s.after_experience(sc[0])  # end of task 0: the old model and old prototypes are frozen copies
        old = s.model.prototypes.detach().clone()
        for _ in range(3):
            s.train_step(x, y)
        moved[coef] = (s.model.prototypes.detach() - old).abs()
        assert moved[coef][2:].sum() > 0  # current prototypes learn through L_p
        assert "distill" in s.last_parts or coef == 0.0
    assert torch.all(moved[0.0][:2] == 0)  # no distillation: old prototypes stay put
    assert moved[4.0][:2].sum() > 0  # distillation moves them
    # and the distillation gradient itself reaches old prototypes and the encoder
    enc, old_enc = LinearBackbone(), LinearBackbone()
    protos = nn.Parameter(torch.randn(4, 5))
    relation_distillation(enc(x), old_enc(x).detach(), protos, protos.detach() + 0.5, [[0, 1]]).backward()
    assert protos.grad[:2].abs().sum() > 0 and torch.all(protos.grad[2:] == 0)
    assert enc.fc.weight.grad.abs().sum() > 0


def test_prd_one_softmax_per_old_task():
    torch.manual_seed(0)
    h, h_old, p = torch.randn(5, 4), torch.randn(5, 4), torch.randn(4, 4)
    p_old = p + 0.3 * torch.randn(4, 4)
    both = relation_distillation(h, h_old, p, p_old, [[0, 1], [2, 3]])
    split = relation_distillation(h, h_old, p, p_old, [[0, 1]]) + relation_distillation(h, h_old, p, p_old, [[2, 3]])
    joint = relation_distillation(h, h_old, p, p_old, [[0, 1, 2, 3]])
    assert torch.allclose(both, split) and not torch.allclose(both, joint)
    assert relation_distillation(h, h, p, p, [[0, 1]]).abs() < 1e-6


def test_supcon_prefers_clustered_embeddings():
    y = torch.tensor([0, 0, 1, 1])
    good = F.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]]), dim=1)
    bad = F.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 0.01], [0.01, 1]]), dim=1)
    assert supcon_loss(good, y) < supcon_loss(bad, y)


# -- SSIAT ----------------------------------------------------------------------------------------------
def test_ssiat_drift_exact_for_translation():
    g = torch.Generator().manual_seed(0)
    y1 = torch.randn(40, 8, generator=g, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    means = torch.randn(3, 8, generator=g, dtype=torch.float64) * 3
    for sigma in (0.5, 4.0, 100.0):
        delta = semantic_drift(y1, y1 + b, means, sigma)
        assert torch.allclose(delta, b.expand(3, -1), atol=1e-10)


def test_ssiat_drift_matches_kernel_formula_for_linear_shift():
    g = torch.Generator().manual_seed(0)
    y1 = torch.randn(30, 4, generator=g, dtype=torch.float64)
    A = torch.eye(4, dtype=torch.float64) + 0.2 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    y2 = y1 @ A.t()
    mu = torch.randn(2, 4, generator=g, dtype=torch.float64)
    delta = semantic_drift(y1, y2, mu, 4.0)
    w = torch.exp(-((y1[None] - mu[:, None]) ** 2).sum(-1) / 32) + 1e-5
    want = (w[:, :, None] * (y2 - y1)[None]).sum(1) / w.sum(1, keepdim=True)
    assert torch.allclose(delta, want, atol=1e-12)
    # a linear shift is recovered exactly when the kernel puts all its weight on points at the mean
    delta_far = semantic_drift(mu[:1].expand(5, -1), mu[:1].expand(5, -1) @ A.t(), mu[:1], 0.01)
    assert torch.allclose(delta_far, mu[:1] @ (A - torch.eye(4, dtype=torch.float64)).t(), atol=1e-10)


def test_ssiat_shifts_old_means_with_same_images_before_and_after():
    """In the strategy: with a backbone whose output is translated by b during session 2, old means move by b."""
    torch.manual_seed(0)

    class Shifty(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)
            self.register_buffer("b", torch.zeros(4))
            self.out_dim = 4

        def forward(self, x):
            return self.fc(x) + self.b

    exps = []
    for t in range(2):
        y = torch.tensor([2 * t, 2 * t + 1]).repeat_interleave(10)
        exps.append(SimpleNamespace(train_x=torch.randn(20, 6), train_y=y, test_x=None, test_y=None,
                                    classes=[2 * t, 2 * t + 1], index=t, task_id=None))
    sc = Scenario("vec", exps, 4, (6,), [0, 1, 2, 3], modality="vector")
    bb = Shifty()
    s = make_strategy("ssiat", bb, sc, adapter="lora", ca=False)
    s.before_experience(exps[0])
    s.after_experience(exps[0])
    m0 = s.means[:2].clone()
    s.before_experience(exps[1])
    shift = torch.tensor([0.5, -1.0, 2.0, 0.25])
    bb.b.copy_(shift)  # "training" translates every feature
    s.after_experience(exps[1])
    assert torch.allclose(s.means[:2] - m0, shift.double().expand(2, -1), atol=1e-6)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_ssiat_gaussian_samples_follow_class_statistics(cov):
    torch.manual_seed(0)
    sc = fake_scenario()
    s = make_strategy("ssiat", LinearBackbone(), Scenario("v", [], 4, (6,), [0, 1, 2, 3], modality="vector"),
                      adapter="lora", cov=cov)
    feats = torch.randn(400, 5, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 0.5, 1], dtype=torch.float64) + 3
    s.means[0] = feats.mean(0)
    if cov == "full":
        s.covs[0] = torch.linalg.cholesky(torch.cov(feats.t()) + 1e-3 * torch.eye(5, dtype=torch.float64)).float()
    else:
        s.covs[0] = (feats.var(0) + 1e-3).float()
    s.class_session[0] = 0
    z = s._sample(0, 20000, 0)
    assert torch.allclose(z.mean(0).double(), feats.mean(0), atol=0.1)
    assert torch.allclose(z.std(0).double(), feats.std(0), rtol=0.1)


# -- L2P batch independence and CoLoR modes --------------------------------------------------------------
def test_l2p_prediction_independent_of_batch_unless_batchwise():
    from strategies.l2p import majority

    idx = torch.tensor([[0, 1], [0, 2], [3, 0], [1, 2]])
    maj = majority(idx, 4, 2)
    assert torch.equal(maj, maj[:1].expand(4, -1)) and 0 in maj[0].tolist()  # 0 is chosen most often
    sc = fake_scenario()
    s = make_strategy("l2p", tiny_vit(), sc, pool_size=6, top_k=2, length=2)
    s.model.head.observe(torch.arange(4))
    s.model.eval()
    x = images(6)
    with torch.no_grad():
        full = s.predict(x)
        assert torch.allclose(full[:2], s.predict(x[:2]), atol=1e-5)
        s.model.batchwise = True
        assert s.model(x).shape == full.shape
        assert torch.equal(s.model.last_index, s.model.last_index[:1].expand(6, -1))


def test_color_domain_mode_shares_the_label_space():
    sc = fake_scenario(setting="domain")
    for e in sc.experiences:  # every domain has every class
        e.classes = [0, 1, 2, 3]
        e.train_y = torch.arange(4).repeat(len(e.train_y) // 4)
    s = make_strategy("color", tiny_vit(), sc)
    assert s.mode == "domain"
    pre = sc.preprocess_fn("cpu")
    for t in range(2):
        s.before_experience(sc[t])
        s.train_step(pre(sc[t].train_x[:8]), sc[t].train_y[:8])
        s.after_experience(sc[t])
    assert s.model.head_classes.all()
    with torch.no_grad():
        out = s.predict(pre(sc[0].test_x))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["l2p", "l2l"])
def test_prompt_lr_moves_the_pool_entries_at_their_own_rate(name):
    """Adam's first step moves every parameter with a gradient by its group's rate: the pool entries (L2P's
    prompts, L2L's LoRA entries) by ``prompt_lr``, the head and the keys by ``lr``."""
    sc = fake_scenario()
    s = make_strategy(name, tiny_vit(), sc, pool_size=3, top_k=1, optimizer="adam", lr=0.01, prompt_lr=1e-4)
    entries = {id(p) for p in s.prompt_params()}
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    _step(s, sc, 0)
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in s.model.named_parameters()}
    by_id = {n: id(p) for n, p in s.model.named_parameters()}
    pool = [moved[n] for n in moved if by_id[n] in entries and moved[n] > 0]
    rest = [moved[n] for n in moved if by_id[n] not in entries and moved[n] > 0]
    assert pool and rest
    assert max(pool) == pytest.approx(1e-4, rel=0.05)
    assert max(rest) == pytest.approx(0.01, rel=0.05)
    assert {"head.fc.weight", "pool.keys"} <= {n for n in moved if moved[n] > 0}


def test_prompt_lr_default_is_one_rate_and_bad_values_name_the_field():
    sc = fake_scenario()
    s = make_strategy("l2p", tiny_vit(), sc, pool_size=3, top_k=1, optimizer="adam", lr=0.01)
    assert s.cfg.prompt_lr is None and len(s.optimizer.param_groups) == 1
    with pytest.raises(Exception, match="strategy.prompt_lr"):
        make_strategy("l2p", tiny_vit(), sc, pool_size=3, top_k=1, optimizer="adam", lr=0.01, prompt_lr=0.0)
