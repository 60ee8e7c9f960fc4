"""Issue 15, online replay selection and retrieval: mir, gss, aser, rar (and cl/models/retrieval.py) on
constructed cases: MIR retrieves the samples a virtual step hurts most, GSS admits the gradient-diverse
sample into a full buffer, ASER's scores are KNN-Shapley values (checked against an exhaustive permutation
average), RAR repeats augmented steps; bad values are ConfigErrors naming the field."""
import copy
import itertools
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.config import resolve
from cl.core.registry import ConfigError, scenarios, strategies
from cl.core.streams import Experience, Scenario
from cl.core.strategy import RunInfo
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
from cl.models.retrieval import class_balanced_index, knn_shapley, loss_increase, per_sample_ce, virtual_step
from cl.train.engine import Run
from conftest import tiny

pytestmark = pytest.mark.usefixtures("restore_registry")


def build(name, **kw):
    import importlib

    importlib.import_module("strategies." + name)
    entry = strategies.get(name)
    return make(entry.obj, entry.config, **kw)


def make(cls, cfg_cls, model=None, n_classes=2, in_dim=2, input_shape=None, boundaries="visible", **cfg):
    """The strategy ``cls`` with config ``cfg_cls(**cfg)``, set up, on a zero bias-free linear head by default
    (``build`` without the registry, whose first use imports every strategy module)."""
    if model is None:
        head = IncrementalLinear(in_dim, n_classes, bias=False)
        nn.init.zeros_(head.fc.weight)
        model = Model(nn.Identity(), head)
    info = RunInfo(n_classes=n_classes, input_shape=input_shape or (in_dim,), device=torch.device("cpu"), seed=0,
                   boundaries=boundaries, n_experiences=2)
    s = cls(cfg_cls(**cfg), model, info)
    s.setup()
    return s


E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


# -- MIR -----------------------------------------------------------------------------------------------
def test_mir_retrieves_the_samples_whose_loss_rises_most_under_the_virtual_step():
    """Zero linear head, incoming batch of class 0 at e1: the virtual step raises class 0's logit along e1,
    so the class-1 samples along e1 lose most (2 e1 more than e1), e2 samples do not move, class-0 samples
    along e1 gain."""
    s = build("mir", buffer_size=10, subsample=5, replay_batch_size=2, lr=0.5)
    s.model.observe(torch.tensor([0, 1]))
    bx = torch.stack([E1, 2 * E1, E2, E1, 3 * E2])
    by = torch.tensor([1, 1, 1, 0, 0])
    s.buffer.add(x=bx, y=by)
    x, y = torch.stack([E1, E1]), torch.tensor([0, 0])
    s.optimizer.zero_grad()
    nn.functional.cross_entropy(s.model(x), y).backward()
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    mem = s.retrieve()
    assert all(torch.equal(before[k], v) for k, v in s.model.state_dict().items())  # scoring changes nothing
    got = sorted(map(tuple, mem["x"].tolist()))
    assert got == [(1.0, 0.0), (2.0, 0.0)] and mem["y"].tolist() == [1, 1]
    # the scores are the brute-force loss differences of a copy stepped by hand
    w = s.model.head.fc.weight.detach() - 0.5 * s.model.head.fc.weight.grad
    ce = nn.functional.cross_entropy
    cand = s.buffer.items()
    want_pre = ce(torch.zeros(5, 2), cand["y"], reduction="none")
    want_post = ce(cand["x"] @ w.t(), cand["y"], reduction="none")
    sc = loss_increase(s.model, cand["x"], cand["y"], virtual_step(s.model, 0.5))
    assert torch.allclose(sc, want_post - want_pre, atol=1e-6)
    assert sc[1] > sc[0] > 0 and abs(sc[2]) < 1e-7 and sc[3] < 0 and abs(sc[4]) < 1e-7


@pytest.mark.parametrize("moves", [True, False])
def test_mir_step_replays_the_retrieved_samples_and_moves_batchnorm_stats_as_the_codes(moves):
    """Both authors' codes score the candidates before the virtual step with the live model in training mode,
    which moves its BatchNorm running statistics (score_moves_bn, the default); false scores on copies."""
    head = IncrementalLinear(2, 2)
    model = Model(nn.BatchNorm1d(2), head)
    s = build("mir", model=model, buffer_size=20, subsample=8, replay_batch_size=3, score_moves_bn=moves)
    s.buffer.add(x=torch.randn(12, 2), y=torch.randint(0, 2, (12,)))
    s.model.observe(torch.tensor([0, 1]))
    seen = []
    orig = s.retrieve
    s.retrieve = lambda: seen.append(orig()) or seen[-1]
    fed = []
    h = model.backbone.register_forward_pre_hook(lambda m, a: fed.append(a[0].clone()))
    s.train_step(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    h.remove()
    # forwards: the incoming batch, the 8 candidates before and after the virtual step, then the 3 retrieved
    # samples; the pass after the virtual step always runs on copies of the buffers (the codes' deep copy)
    assert [len(f) for f in fed] == [4, 8, 8, 3] and torch.equal(fed[-1], seen[0]["x"])
    assert int(model.backbone.num_batches_tracked) == (3 if moves else 2)


def test_mir_scores_do_not_depend_on_score_moves_bn_and_the_moved_stats_are_the_candidates():
    """Training-mode BatchNorm normalises with the batch's statistics, so the scores are the same whether the
    pre-update pass moves the running statistics or not; when it does, they move exactly as one direct
    training-mode forward of the candidates (here the whole buffer: subsample = buffer length)."""
    out = {}
    for moves in (True, False):
        torch.manual_seed(1)
        model = Model(nn.BatchNorm1d(2), IncrementalLinear(2, 2))
        s = build("mir", model=model, buffer_size=20, subsample=8, replay_batch_size=3, score_moves_bn=moves)
        s.model.observe(torch.tensor([0, 1]))
        buf_x = torch.randn(8, 2) * 3 + 1
        s.buffer.add(x=buf_x, y=torch.randint(0, 2, (8,)))
        F.cross_entropy(model(torch.randn(4, 2)), torch.tensor([0, 1, 0, 1])).backward()
        ref = copy.deepcopy(model.backbone)  # the running stats just before the retrieval
        r = s.retrieve()
        out[moves] = (r["scores"].sort().values, model.backbone.running_mean.clone(), ref, buf_x)
    assert torch.allclose(out[True][0], out[False][0], atol=1e-6)
    assert torch.equal(out[False][1], out[False][2].running_mean)  # copies only: untouched
    bn_ref, buf_x = out[True][2], out[True][3]
    assert not torch.allclose(out[True][1], bn_ref.running_mean)  # the candidates moved them
    with torch.no_grad():
        bn_ref.train()(buf_x)
    assert torch.allclose(out[True][1], bn_ref.running_mean, atol=1e-6)
    with pytest.raises(ValueError, match="copy_buffers=False"):
        per_sample_ce(model, buf_x, torch.zeros(8, dtype=torch.long), params={}, copy_buffers=False)


def test_mir_exclude_current_needs_boundaries_and_excludes_the_current_experience():
    with pytest.raises(ConfigError, match="exclude_current.*boundaries"):
        build("mir", boundaries="hidden", exclude_current=True)
    s = build("mir", exclude_current=True, subsample=10, replay_batch_size=10)
    s.after_step(torch.randn(4, 2), torch.tensor([0, 0, 0, 0]))  # experience 0
    assert s.candidates() == {}  # nothing from a past experience yet: no replay (the official code's task 0)
    s.exp_index = 1
    assert s.candidates()["y"].tolist() == [0, 0, 0, 0]
    s.after_step(torch.randn(3, 2), torch.tensor([1, 1, 1]))
    assert s.candidates()["y"].tolist() == [0, 0, 0, 0]
    s.exp_index = 2
    assert len(s.candidates()["y"]) == 7


# -- GSS -----------------------------------------------------------------------------------------------
def _full_gss(seed):
    torch.manual_seed(seed)
    s = build("gss", buffer_size=4, mem_strength=2, gss_batch_size=2)
    s.model.observe(torch.tensor([0, 1]))
    s.buffer.add(x=torch.stack([E1] * 4), y=torch.zeros(4, dtype=torch.long),
                 score=torch.tensor([0.2, 0.4, 0.6, 0.8]))
    return s


def test_group_grads_vectorised_equals_one_backward_per_group():
    from cl.models import retrieval as R

    torch.manual_seed(0)
    bb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = Model(bb, IncrementalLinear(4, 3))
    model.observe(torch.tensor([0, 1]))
    model.head.fc.bias.requires_grad_(False)  # frozen parameters are left out
    for _ in range(2):
        model(torch.randn(6, 3, 8, 8))  # non-trivial running statistics
    model.eval()
    xs, ys = torch.randn(5, 2, 3, 8, 8), torch.randint(0, 2, (5, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = R.group_grads(model, xs, ys)
    assert model not in R._NO_VMAP  # the vectorised path ran
    want = R._loop_group_grads(model, [n for n, p in model.named_parameters() if p.requires_grad], xs, ys)
    assert got.shape == (5, sum(p.numel() for p in model.parameters() if p.requires_grad))
    assert torch.allclose(got, want, atol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_gss_fills_with_scores_then_rejects_an_aligned_batch():
    s = build("gss", buffer_size=4, mem_strength=2, gss_batch_size=1)
    s.model.observe(torch.tensor([0, 1]))
    s.after_step(torch.stack([E1, E1]), torch.tensor([0, 0]))
    assert s.buffer.items()["score"].tolist() == pytest.approx([0.1, 0.1])  # the first batch
    s.after_step(torch.stack([-E1, E1, E2]), torch.tensor([0, 0, 0]))  # room for 2: the third is dropped
    assert s.buffer.items()["score"].tolist() == pytest.approx([0.1, 0.1, -1.0, 1.0])
    assert len(s.buffer) == 4
    s = _full_gss(0)
    before = {k: v.clone() for k, v in s.buffer.items().items()}
    s.after_step(torch.stack([E1, 2 * E1]), torch.tensor([0, 0]))  # gradient aligned with the buffer's
    assert all(torch.equal(before[k], v) for k, v in s.buffer.items().items())


def test_gss_keeps_the_gradient_diverse_sample_when_the_buffer_is_full():
    """Buffer: four copies of (e1, class 0), scores 0.2..0.8. Incoming: (-2 e1, 0), whose gradient opposes
    the buffer's (score -1, so it always replaces its drawn slot), and (e1, 0), aligned with it (score 1:
    it replaces its slot with probability c/(1 + c), c = (score + 1)/2 of the slot)."""
    trials, diverse_in, redundant_in = 200, 0, 0
    for seed in range(trials):
        s = _full_gss(seed)
        s.after_step(torch.stack([-2 * E1, E1]), torch.tensor([0, 0]))
        items = s.buffer.items()
        is_div = (items["x"][:, 0] == -2).nonzero().squeeze(1)
        diverse_in += len(is_div)
        if len(is_div):
            assert items["score"][is_div].item() == pytest.approx(-1.0, abs=1e-5)
        n_new_red = int((items["score"] > 0.99).sum())
        redundant_in += n_new_red
    assert diverse_in == trials  # admitted every time
    # expected admission rate of the aligned sample: second slot drawn without replacement ~ w = [0, 1, 2, 3]
    w = [0.0, 0.2, 0.4, 0.6]
    w = [v / 0.61 for v in w]
    c = [0.6, 0.7, 0.8, 0.9]
    p = sum(w[i] / sum(w) * w[j] / (sum(w) - w[i]) * c[j] / (1 + c[j])
            for i in range(4) for j in range(4) if j != i)
    sd = math.sqrt(p * (1 - p) / trials)
    assert abs(redundant_in / trials - p) < 4 * sd, (redundant_in / trials, p)


# -- ASER / KNN-Shapley ----------------------------------------------------------------------------------
def _utility(S, d, m, K):
    near = sorted(S, key=lambda j: d[j])[:K]
    return sum(m[j] for j in near) / K


def brute_shapley(ef, ey, cf, cy, K):
    """Average marginal contribution over every permutation of the candidates (Shapley's definition)."""
    n = len(cy)
    out = torch.zeros(len(ey), n)
    for e in range(len(ey)):
        d = torch.cdist(ef[e:e + 1], cf)[0].tolist()
        m = (cy == ey[e]).float().tolist()
        tot = [0.0] * n
        for perm in itertools.permutations(range(n)):
            S = []
            for j in perm:
                tot[j] += _utility(S + [j], d, m, K) - _utility(S, d, m, K)
                S.append(j)
        out[e] = torch.tensor(tot) / math.factorial(n)
    return out


@pytest.mark.parametrize("n,k", [(6, 3), (5, 1), (2, 3)])
def test_knn_shapley_equals_the_permutation_average(n, k):
    g = torch.Generator().manual_seed(n * 10 + k)
    cf, ef = torch.randn(n, 3, generator=g), torch.randn(3, 3, generator=g)
    cy, ey = torch.randint(0, 2, (n,), generator=g), torch.tensor([0, 1, 1])
    assert torch.allclose(knn_shapley(ef, ey, cf, cy, k), brute_shapley(ef, ey, cf, cy, k), atol=1e-6)


def test_knn_shapley_hand_values():
    # one evaluation point of class 0 at the origin; candidates at distance 1, 2, 3 of classes 0, 1, 0; K = 1
    cf = torch.tensor([[1.0], [2.0], [3.0]])
    sv = knn_shapley(torch.zeros(1, 1), torch.tensor([0]), cf, torch.tensor([0, 1, 0]), 1)
    # s3 = 1/3; s2 = s3 + (0 - 1)/1 * 1/2 = -1/6; s1 = s2 + (1 - 0) = 5/6
    assert sv[0].tolist() == pytest.approx([5 / 6, -1 / 6, 1 / 3])


def test_class_balanced_index_draws_per_class_and_excludes():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    torch.manual_seed(0)
    idx = class_balanced_index(y, 2)
    assert sorted(y[idx].tolist()) == [0, 0, 1, 1, 2] and len(set(idx.tolist())) == 5
    excl = torch.tensor([True, True, False, False, False, True])
    assert sorted(class_balanced_index(y, 5, exclude=excl).tolist()) == [2, 3, 4]


@pytest.mark.parametrize("kind", ["asvm", "asv", "neg_sv"])
def test_aser_retrieval_scores_are_knn_shapley_combinations(kind, monkeypatch):
    import strategies.aser as aser

    s = build("aser", n_classes=3, in_dim=2, buffer_size=12, n_smp_cls=2, k=3, aser_type=kind, replay_batch_size=3)
    s.model.observe(torch.tensor([0, 1, 2]))
    torch.manual_seed(1)
    bx, by = torch.randn(12, 2), torch.arange(3).repeat(4)
    s.buffer.add(x=bx, y=by)
    s.buffer.advance_host(5)  # more than the memory offered: ASER retrieval
    drawn = []
    orig = aser.class_balanced_index
    monkeypatch.setattr(aser, "class_balanced_index", lambda *a, **kw: drawn.append(orig(*a, **kw)) or drawn[-1])
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    mem = s.retrieve(x, y)
    cand = drawn[0]
    adv = brute_shapley(x, y, bx[cand], by[cand], 3)  # identity backbone: the features are the inputs
    if kind == "neg_sv":
        want = -adv.sum(0)
    else:
        ev = drawn[1]
        assert not set(ev.tolist()) & set(cand.tolist())  # the cooperative set excludes the candidates
        coop = brute_shapley(bx[ev], by[ev], bx[cand], by[cand], 3)
        want = coop.mean(0) - adv.mean(0) if kind == "asvm" else coop.max(0).values - adv.min(0).values
    top = cand[want.argsort(descending=True)[:3]]
    assert sorted(mem["index"].tolist()) == sorted(top.tolist())


def test_aser_update_replaces_the_lowest_value_buffer_sample_by_a_valuable_incoming_one(monkeypatch):
    """1-D features, k = 1. Class 0 around +1, class 1 around -1, and one class-0 outlier (slot 6, at -1.05)
    inside class 1's cluster. Evaluation set fixed to slots 0 (+1.0, class 0) and 3 (-1.0, class 1);
    candidates: the other six slots and the incoming class-0 sample at +0.95. Summed KNN-SVs (by hand, Jia's
    recursion): incoming, slot 1, slot 2: 0.2833; slots 4, 7: 0.25; slot 5: 0.2; slot 6: 0.2 - 0.75 = -0.55.
    The top six keep the incoming sample; slot 6, the only one below it, is replaced."""
    import strategies.aser as aser

    s = build("aser", n_classes=2, in_dim=1, buffer_size=8, n_smp_cls=3, k=1)
    s.model.observe(torch.tensor([0, 1]))
    bx = torch.tensor([[1.0], [1.1], [0.8], [-1.0], [-1.1], [-0.85], [-1.05], [-1.2]])
    by = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    s.buffer.add(x=bx, y=by)
    monkeypatch.setattr(aser, "class_balanced_index", lambda *a, **kw: torch.tensor([0, 3]))
    sv = knn_shapley(bx[[0, 3]], by[[0, 3]], torch.cat([bx[[1, 2, 4, 5, 6, 7]], torch.tensor([[0.95]])]),
                     torch.tensor([0, 0, 1, 1, 0, 1, 0]), 1).sum(0)
    assert sv.tolist() == pytest.approx([0.85 / 3, 0.85 / 3, 0.25, 0.2, -0.55, 0.25, 0.85 / 3], abs=1e-6)
    s.update_by_sv(torch.tensor([[0.95]]), torch.tensor([0]))
    items = s.buffer.items()
    assert items["x"][6].item() == pytest.approx(0.95) and items["y"][6].item() == 0
    keep = [0, 1, 2, 3, 4, 5, 7]
    assert torch.equal(items["x"][keep], bx[keep])


# -- RAR -----------------------------------------------------------------------------------------------
def test_rar_repeats_augmented_steps_with_fresh_replay_and_one_buffer_update():
    from strategies._rar import RandAugment

    bb = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    bb.out_dim = 4
    model = Model(bb, IncrementalLinear(4, 2))
    s = build("rar", model=model, input_shape=(3, 8, 8), iterations=4, buffer_size=50, replay_batch_size=3)
    assert isinstance(s.augment, RandAugment) and (s.augment.n, s.augment.m) == (1, 14)
    s.buffer.add(x=torch.rand(6, 3, 8, 8), y=torch.randint(0, 2, (6,)))
    steps, draws, fed = [0], [0], []
    step, sample = s.optimizer.step, s.buffer.sample
    s.optimizer.step = lambda *a, **k: (steps.__setitem__(0, steps[0] + 1), step(*a, **k))[1]
    s.buffer.sample = lambda *a, **k: (draws.__setitem__(0, draws[0] + 1), sample(*a, **k))[1]
    bb.register_forward_pre_hook(lambda m, a: fed.append(a[0].clone()))
    x = torch.rand(5, 3, 8, 8)
    torch.manual_seed(0)
    s.train_step(x, torch.tensor([0, 1, 0, 1, 0]))
    assert steps[0] == 4 and draws[0] == 4 and len(fed) == 4  # one forward of [incoming; replay] per step
    assert all(f.shape == (8, 3, 8, 8) for f in fed)
    incoming = [f[:5] for f in fed]
    assert all(not torch.allclose(v, x) for v in incoming)  # augmented
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(incoming, 2))  # afresh each time
    assert s.buffer.n_seen == 6 + 5  # the buffer saw the batch once, after the iterations


def test_randaugment_ops_match_their_pil_definitions():
    from strategies._rar import OPS, RandAugment

    ra = RandAugment(1, 14)
    x = torch.arange(0, 256, 4).float().div(255).view(1, 1, 8, 8).expand(1, 3, 8, 8).contiguous()
    op = lambda name: ra.apply_ops(x, torch.tensor([OPS.index(name)]))  # noqa: E731
    u = (x * 255).round()
    assert torch.allclose(op("invert"), 1 - x)
    assert torch.equal(op("posterize") * 255, torch.where(u >= 128, 128.0, 0.0))  # int(1.87) = 1 bit
    assert torch.equal(op("solarize") * 255, torch.where(u >= 119.4667, 255 - u, u))
    assert torch.allclose(op("brightness"), (x * 0.94 * 255).round() / 255)
    assert torch.equal(op("translate_x"), torch.zeros_like(x))  # 46.7 px: out of an 8 px frame
    assert torch.equal(op("equalize"), x)  # 64 distinct values, one pixel each: PIL's step is 0, no change
    assert torch.allclose(op("autocontrast").amin(), torch.tensor(0.0)) and torch.allclose(op("autocontrast").amax(), torch.tensor(1.0))


# -- configs and protocols -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,key,value,words", [
    ("mir", "subsample", 0, ["subsample", ">= 1"]),
    ("mir", "subsample", 5, ["subsample=5", "replay_batch_size=10"]),
    ("gss", "mem_strength", 0, ["mem_strength", ">= 1"]),
    ("gss", "sim_threshold", 1.5, ["sim_threshold", "<= 1.0"]),
    ("aser", "aser_type", "asvx", ["aser_type", "asvm", "asv", "neg_sv"]),
    ("aser", "k", 0, ["k=0", ">= 1"]),
    ("rar", "augment", "randaugment", ["augment", "randaug", "crop_flip", "none"]),
    ("rar", "iterations", 0, ["iterations", ">= 1"]),
    ("rar", "randaug_m", 31, ["randaug_m", "<= 30"]),
])
def test_bad_values_are_config_errors_naming_the_field(name, key, value, words):
    with pytest.raises(ConfigError) as e:
        resolve(tiny({"name": name, key: value}))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_rar_augmentation_needs_images():
    with pytest.raises(ConfigError, match="augment='randaug' needs image inputs.*none"):
        build("rar")


@dataclass
class StreamConfig:
    boundaries: str = "visible"


@scenarios.register("test-ocl1-stream", StreamConfig)
def stream(cfg, seed):
    """Two tasks of two Gaussian classes (8-d), 12 training samples per class."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 8, generator=g) * 3
    exps = []
    for t in range(2):
        ytr, yte = torch.tensor([2 * t, 2 * t + 1]).repeat_interleave(12), torch.tensor([2 * t, 2 * t + 1]).repeat_interleave(4)
        exps.append(Experience(means[ytr] + torch.randn(24, 8, generator=g), ytr, means[yte] + torch.randn(8, 8, generator=g),
                               yte, [2 * t, 2 * t + 1], None if cfg.boundaries != "visible" else t, index=t))
    return Scenario("test-ocl1-stream", exps, n_classes=4, input_shape=(8,), class_order=[0, 1, 2, 3],
                    boundaries=cfg.boundaries, modality="vector")


@pytest.mark.parametrize("name", ["mir", "gss", "aser", "rar"])
def test_runs_online_task_free_and_offline(tmp_path, name):
    extra = {"augment": "none"} if name == "rar" else {}
    for i, (proto, bound) in enumerate([("online", "hidden"), ("offline", "visible")]):
        raw = tiny({"name": name, "buffer_size": 12, **extra}, {"name": "test-ocl1-stream", "boundaries": bound},
                   {"name": "mlp", "hidden": 8}, {"name": proto, "batch_size": 4})
        r = Run(resolve(raw), progress=False, out_dir=tmp_path / str(i)).execute()
        assert r["status"] == "finished", r.get("error")
