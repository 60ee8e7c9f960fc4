"""Issue 16 (ptm2): PETL modules (cl/models/petl.py), APER, EASE and the SimpleCIL name, on a tiny random-init
ViT, a tiny random BERT and the packaged MiniLM.  Resume from a boundary is covered for every registered
strategy by tests/test_reliability_state.py (aper and ease run there on its tiny ViT configuration)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cl.core.config import resolve
from cl.core.registry import ConfigError, strategies
from cl.models.heads import cosine_logits
from cl.models.petl import SSF, AdapterBank, VisualPrompts, ssf_sites, transformer_family
from cl.models.task_keys import model_preprocess
from cl.train.engine import Run
from strategies.ease import complement, ease_logits
from test_adapters import tiny_bert
from test_strategies2_mechanism import fake_scenario, images, make_strategy, tiny_vit

D = 48  # tiny_vit's width (depth 2)


def _params(ps):
    return [p.detach().clone() for p in ps]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _randomize(module, std=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


# -- PETL modules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["vit", "bert"])
def test_zero_init_adapter_and_identity_ssf_leave_the_backbone_unchanged(which):
    bb = tiny_vit() if which == "vit" else tiny_bert()
    bb.eval()
    x = images(3) if which == "vit" else torch.randint(1, 50, (3, 7))
    out = (lambda: bb(x)) if which == "vit" else (lambda: bb(input_ids=x).last_hidden_state)
    with torch.no_grad():
        ref = out()
    assert transformer_family(bb) == which
    bank = AdapterBank(bb, bottleneck=8)
    bank.add_set()
    bank.activate(0)
    with torch.no_grad():
        assert torch.equal(out(), ref)  # zero-init up-projection: the identity
    _randomize(bank)
    with torch.no_grad():
        assert not torch.allclose(out(), ref, atol=1e-3)  # a trained adapter does change it
        bank.activate(None)
        assert torch.equal(out(), ref)  # switched off: the pretrained backbone bit for bit
    ssf = SSF(bb, init_std=0.0)
    with torch.no_grad():
        assert torch.equal(out(), ref)  # gamma = 1, beta = 0
    with torch.no_grad():
        for op in ssf.ops:
            op.shift.normal_(0, 0.3)  # non-uniform shifts (LayerNorm would remove a uniform one)
        assert not torch.allclose(out(), ref, atol=1e-3)
        with ssf.disabled():
            assert torch.equal(out(), ref)


def test_adapter_parameter_count_and_ssf_sites_on_vit():
    bb = tiny_vit()
    bank = AdapterBank(bb, bottleneck=8)
    bank.add_set()
    bank.add_set()
    per_set = 2 * (D * 8 + 8 + 8 * D + D)  # 2 blocks x (down W, b; up W, b): 1,189,632 for ViT-B/16, b=64
    assert sum(p.numel() for p in bank.set_parameters(1)) == per_set and bank.n_sets == 2
    names = [n for n, *_ in ssf_sites(bb)]
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]  # PILOT vit_ssf.py
    assert names == (["model.patch_embed.proj"] + [f"model.blocks.{i}.{n}" for i in range(2) for n in per_block]
                     + ["model.norm"])


@pytest.mark.parametrize("deep", [True, False])
@pytest.mark.parametrize("init", ["zeros", "uniform"])
def test_vpt_changes_the_output_and_keeps_the_shape(deep, init):
    bb = tiny_vit().eval()
    x = images(3)
    with torch.no_grad():
        ref = bb(x)
    vpt = VisualPrompts(bb, length=3, deep=deep, init=init)
    assert sum(p.numel() for p in vpt.parameters()) == (2 if deep else 1) * 3 * D
    with torch.no_grad():
        out = bb(x)
        assert out.shape == ref.shape and not torch.allclose(out, ref, atol=1e-4)
        with vpt.disabled():
            assert torch.equal(bb(x), ref)


def test_vpt_needs_a_vit():
    with pytest.raises(ValueError, match="timm ViT"):
        VisualPrompts(tiny_bert())


# -- APER ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("petl", ["adapter", "ssf", "vpt"])
def test_aper_tunes_only_the_first_session_and_classifies_by_concatenated_prototypes(petl):
    sc = fake_scenario(n_tasks=2, n_classes=4)
    bb = tiny_vit()
    ref = copy.deepcopy(bb).eval()  # the pretrained network, before any module is attached
    s = make_strategy("aper", bb, sc, petl=petl, lr=0.5, ssf_init_std=0.02)
    tuned = list(s.model.petl.parameters())
    for t, exp in enumerate(sc):
        s.model.train()
        s.before_experience(exp)
        xs, ys = s.train_data(exp)
        assert len(ys) == (len(exp.train_y) if t == 0 else 1)  # later sessions are not iterated
        before = _params(tuned)
        for _ in range(2):
            s.train_step(s.preprocess(exp.train_x[:8]), exp.train_y[:8])
        assert _same(before, tuned) == (t == 1)  # the module moves in session 0 only
        s.after_experience(exp)
    s.model.eval()
    x_all = torch.cat([e.train_x for e in sc])
    y_all = torch.cat([e.train_y for e in sc])
    with torch.no_grad():
        X = s.preprocess(x_all)
        plain, adapted = ref(X), s.model.adapted(X)
        assert torch.allclose(s.model.plain(X), plain, atol=1e-6)  # the pretrained branch: module switched off
        assert not torch.allclose(adapted, plain, atol=1e-3)  # the adapted branch was tuned
        feats = torch.cat([plain, adapted], 1)
        protos = torch.stack([feats[y_all == c].mean(0) for c in range(4)])  # raw class means, both halves
        assert torch.allclose(s.model.protos.means, protos, atol=1e-5)
        xt = s.preprocess(sc[1].test_x)
        expected = cosine_logits(torch.cat([ref(xt), s.model.adapted(xt)], 1), protos)
        assert torch.allclose(s.predict(xt), expected, atol=1e-5)


def test_aper_finetune_keeps_a_frozen_pretrained_branch():
    sc = fake_scenario(n_tasks=2, n_classes=4)
    bb = tiny_vit()
    ref = copy.deepcopy(bb).eval()
    s = make_strategy("aper", bb, sc, petl="finetune", lr=0.5)
    s.model.train()
    s.before_experience(sc[0])
    s.train_step(s.preprocess(sc[0].train_x[:8]), sc[0].train_y[:8])
    s.model.eval()
    x = s.preprocess(sc[0].test_x)
    with torch.no_grad():
        assert torch.equal(s.model.plain(x), ref(x))
        assert not torch.allclose(s.model.adapted(x), ref(x), atol=1e-4)


# -- EASE ---------------------------------------------------------------------------------------------
def test_ease_adds_one_adapter_per_task_and_freezes_the_earlier_ones():
    sc = fake_scenario(n_tasks=3, n_classes=6)
    s = make_strategy("ease", tiny_vit(), sc, lr=0.5, bottleneck=8)
    bank = s.model.bank
    assert bank.n_sets == 0
    for t, exp in enumerate(sc):
        s.model.train()
        s.before_experience(exp)
        assert bank.n_sets == t + 1  # one adapter set per task seen
        before = [_params(bank.set_parameters(i)) for i in range(t + 1)]
        for _ in range(2):
            s.train_step(s.preprocess(exp.train_x[:8]), exp.train_y[:8])
        for i in range(t):
            assert _same(before[i], list(bank.set_parameters(i)))  # earlier adapters: unchanged
            assert not any(p.requires_grad for p in bank.set_parameters(i))
        assert not _same(before[t], list(bank.set_parameters(t)))  # this task's adapter trains
        s.after_experience(exp)
    assert s.extra_metrics()["n_adapters"] == 3
    s.model.eval()
    x = s.preprocess(sc[0].test_x)
    with torch.no_grad():
        sub = s.model.subspaces(x)
        assert sub.shape == (len(x), 3, D)
        assert torch.equal(s.model.features(x), sub.flatten(1))  # concatenation of every adapter's feature
        assert torch.allclose(s.predict(x), ease_logits(sub, s.model.protos, s.model.class_task, 0.1), atol=1e-6)
    # the prototypes of a task's classes in its own and earlier subspaces are their class means
    with torch.no_grad():
        X = s.preprocess(sc[2].train_x)
        f = s.model.subspaces(X)
    for c in sc[2].classes:
        assert torch.allclose(s.model.protos[c], f[sc[2].train_y == c].mean(0), atol=1e-5)


def test_ease_logits_hand_computed():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one sample, 2 subspaces, d = 2
    protos = torch.tensor([[[1.0, 0.0], [1.0, 1.0]],  # class 0 (task 0)
                           [[0.0, 1.0], [0.0, 2.0]],  # class 1 (task 1)
                           [[0.0, 0.0], [0.0, 0.0]]])  # class 2: not learnt
    got = ease_logits(feats, protos, torch.tensor([0, 1, -1]), alpha=0.1)
    # class 0: cos(f0, p00) = 1 + 0.1 / 1 * cos(f1, p01) = 1/sqrt 2; class 1: 1 + 0.1 * cos(f0, p10) = 0
    assert torch.allclose(got[0, :2], torch.tensor([1 + 0.1 / math.sqrt(2), 1.0]))
    assert got[0, 2] == float("-inf")


def test_ease_prototype_complement_hand_computed():
    P = torch.zeros(4, 2, 2)
    P[:, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # subspace 0
    P[2, 1], P[3, 1] = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])  # task 1's classes in subspace 1
    complement(P, torch.tensor([0, 0, 1, 1]), t=1)
    e = math.e
    # class 0: cos with classes 2, 3 in subspace 0 = (1, 0) -> softmax (e, 1)/(e+1) -> (2e, 2)/(e+1)
    assert torch.allclose(P[0, 1], torch.tensor([2 * e, 2.0]) / (e + 1))
    assert torch.allclose(P[1, 1], torch.tensor([2.0, 2 * e]) / (e + 1))
    assert torch.equal(P[2, 1], torch.tensor([2.0, 0.0]))  # new classes keep their true prototypes
    # three tasks: P[task 0, subspace 2] uses only the classes of tasks >= 2
    P = torch.randn(3, 3, 4)
    ct = torch.tensor([0, 1, 2])
    Q = P.clone()
    complement(Q, ct, t=2)
    assert torch.allclose(Q[0, 2], P[2, 2])  # one class of tasks >= 2: softmax weight 1
    assert torch.allclose(Q[0, 1], F.softmax(cosine_logits(P[0:1, 0], P[1:3, 0]), 1)[0] @ P[1:3, 1])


def test_ease_on_minilm_trains_one_adapter_set_per_task(tmp_path):
    import test_strategies2_engine  # noqa: F401  (registers s2-tiny-text)

    raw = {"strategy": {"name": "ease"}, "scenario": {"name": "s2-tiny-text"}, "backbone": {"name": "minilm"},
           "protocol": {"name": "offline", "epochs": 1, "batch_size": 16, "checkpoint": False}, "wandb": "off"}
    r = Run(resolve(raw), progress=False, out_dir=tmp_path).execute()
    assert r["status"] == "finished", r.get("traceback")
    assert r["metrics"]["n_adapters"] == 2
    assert r["metrics"]["trainable_params"] == 6 * (2 * 384 * 64 + 64 + 384) + 4 * 384 + 1  # last set + head


# -- SimpleCIL ----------------------------------------------------------------------------------------
def test_simplecil_is_ncm_with_simplecil_defaults():
    cfg = strategies.get("simplecil").config()
    assert (cfg.metric, cfg.normalize) == ("cosine", False)
    sc = fake_scenario(n_tasks=2, n_classes=4)
    a = make_strategy("simplecil", tiny_vit(), sc)
    b = make_strategy("ncm", tiny_vit(), fake_scenario(n_tasks=2, n_classes=4), metric="cosine", normalize=False)
    c = make_strategy("ncm", tiny_vit(), fake_scenario(n_tasks=2, n_classes=4))  # Janson's defaults
    pp = model_preprocess(a.model, "cpu")
    for s in (a, b, c):
        s.model.eval()
        for exp in sc:
            s.train_step(pp(exp.train_x), exp.train_y)
    x = pp(torch.cat([e.train_x for e in sc]))
    with torch.no_grad():
        pa, pb, pc = a.predict(x), b.predict(x), c.predict(x)
    assert torch.equal(pa, pb)
    assert not torch.allclose(pa, pc)  # different scores from ncm's own defaults (cosine vs -Euclidean)


def test_simplecil_and_ncm_runs_give_the_same_R(tmp_path, tiny_cfg):
    rs = [Run(resolve(tiny_cfg(s)), progress=False, out_dir=tmp_path / s["name"]).execute()
          for s in ({"name": "simplecil"}, {"name": "ncm", "metric": "cosine", "normalize": False})]
    assert rs[0]["status"] == rs[1]["status"] == "finished"
    assert rs[0]["R"] == rs[1]["R"]


# -- configuration errors ---------------------------------------------------------------------------------
def test_bad_config_names_the_field_and_the_choices(tiny_cfg):
    with pytest.raises(ConfigError, match=r"strategy\.petl 'lora'.*adapter, finetune, ssf, vpt"):
        resolve(tiny_cfg({"name": "aper", "petl": "lora"}))
    with pytest.raises(ConfigError, match=r"strategy\.vpt_type 'middle'.*deep, shallow"):
        resolve(tiny_cfg({"name": "aper", "vpt_type": "middle"}))
    with pytest.raises(ConfigError, match=r"strategy\.session_epochs"):
        resolve(tiny_cfg({"name": "ease", "session_epochs": [20, 20, 20]}))


@pytest.mark.parametrize("strategy", [{"name": "aper"}, {"name": "aper", "petl": "ssf"}, {"name": "ease"}])
def test_a_backbone_without_transformer_blocks_is_an_error_naming_those_that_work(tmp_path, tiny_cfg, strategy):
    with pytest.raises(ConfigError, match=r"timm ViTs .* and minilm"):
        Run(resolve(tiny_cfg(strategy)), progress=False, out_dir=tmp_path).execute()


def test_vpt_on_minilm_is_an_error_naming_the_vit(tmp_path):
    import test_strategies2_engine  # noqa: F401

    raw = {"strategy": {"name": "aper", "petl": "vpt"}, "scenario": {"name": "s2-tiny-text"},
           "backbone": {"name": "minilm"}, "protocol": {"name": "offline", "epochs": 1}, "wandb": "off"}
    with pytest.raises(ConfigError, match=r"petl=vpt needs a timm ViT"):
        Run(resolve(raw), progress=False, out_dir=tmp_path).execute()


def test_aper_finetune_runs_on_a_cnn_free_mlp(tmp_path, tiny_cfg):
    r = Run(resolve(tiny_cfg({"name": "aper", "petl": "finetune"})), progress=False, out_dir=tmp_path).execute()
    assert r["status"] == "finished", r.get("traceback")


def test_ease_resumes_exactly_from_a_later_boundary(tmp_path, monkeypatch):
    """The registry-wide test resumes after the first task (one adapter set); here after the second of three,
    where two sets must be rebuilt, the second one trainable, before the checkpoint's weights load."""
    import shutil

    import test_strategies2_engine  # noqa: F401  (registers s2-tiny-images)
    from cl.train import checkpoint

    raw = {"strategy": {"name": "ease", "lr": 0.5}, "scenario": {"name": "s2-tiny-images", "n_tasks": 3, "n_classes": 6},
           "backbone": {"name": "vit-tiny", "depth": 1, "embed_dim": 24, "num_heads": 2, "patch_size": 8,
                        "img_size": 16},
           "protocol": {"name": "offline", "epochs": 1, "batch_size": 8}, "wandb": "off"}
    cfg = resolve(raw)
    saves = []
    orig = checkpoint.save

    def save(path, *a):
        orig(path, *a)
        saves.append(len(saves))
        if len(saves) == 2:  # after the second task
            (tmp_path / "cut").mkdir()
            shutil.copy(path, tmp_path / "cut" / "checkpoint.pt")

    monkeypatch.setattr(checkpoint, "save", save)
    full = Run(cfg, progress=False, out_dir=tmp_path / "full").execute()
    assert full["status"] == "finished" and len(saves) == 2
    res = Run(cfg, progress=False, out_dir=tmp_path / "cut").execute()
    assert res["status"] == "finished" and res["resumed"]
    assert res["R"] == full["R"] and res["metrics"]["n_adapters"] == 3
    assert res["metrics"]["trainable_params"] == full["metrics"]["trainable_params"]
