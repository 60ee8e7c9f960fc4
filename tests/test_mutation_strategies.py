"""Strategy losses on constructed cases, against formulas written out here (issue 19):
PRD's relation distillation is KL(old || new), PEC's loss is the sum over classes of each class's mean
error (so with SGD each student moves as if its class's samples came alone)."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from cl.core.strategy import RunInfo
from cl.models.heads import IncrementalLinear
from cl.models.model import Model
from cl.train.graphs import is_graph_safe
from strategies.er import ER, ERConfig
from strategies.er_ace import ERACE, ERACEConfig
from strategies.pec import PEC, PECConfig
from strategies.prd import PRD, PRDConfig, prototype_loss, relation_distillation, supcon_loss

CPU = torch.device("cpu")


def info(n_classes, shape):
    return RunInfo(n_classes=n_classes, input_shape=shape, device=CPU, seed=0)


def kl_old_new(h_new, h_old, p_new, p_old, T):
    """KL(softmax(s_old/T) || softmax(s_new/T)) per sample, s = h . p / ||p||, written out with logs."""
    s_new = h_new @ (p_new / p_new.norm(dim=1, keepdim=True)).t() / T
    s_old = h_old @ (p_old / p_old.norm(dim=1, keepdim=True)).t() / T
    out = []
    for a, b in zip(s_old.tolist(), s_new.tolist()):
        za, zb = math.log(sum(math.exp(v) for v in a)), math.log(sum(math.exp(v) for v in b))
        out.append(sum(math.exp(u - za) * ((u - za) - (v - zb)) for u, v in zip(a, b)))
    return out


# -- PRD -------------------------------------------------------------------------------------------

def test_relation_distillation_is_kl_of_old_to_new_per_old_task():
    g = torch.Generator().manual_seed(0)
    h_new, h_old = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g) * 2
    protos, protos_old = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    tasks = [[0, 1, 2], [3, 4]]
    for T in (1.0, 2.0):
        want = 0.0
        for cls in tasks:
            want += sum(kl_old_new(h_new, h_old, protos[cls], protos_old[cls], T)) / 3  # batch mean
        got = float(relation_distillation(h_new, h_old, protos, protos_old, tasks, T))
        assert got == pytest.approx(want, rel=1e-5)
        # the reversed direction is a different number here: the test can tell them apart
        rev = sum(sum(kl_old_new(h_old, h_new, protos_old[c], protos[c], T)) / 3 for c in tasks)
        assert abs(rev - want) > 1e-2
    assert float(relation_distillation(h_new, h_old, protos, protos_old, [], 1.0)) == 0.0


def _prd(**kw):
    backbone = nn.Sequential(nn.Linear(5, 4))
    backbone.out_dim = 4
    cfg = PRDConfig(views=1, projection_hidden=8, projection_size=3, **kw)
    model = PRD.build_model(cfg, backbone, SimpleNamespace(n_classes=6))
    s = PRD(cfg, model, info(6, (5,)))
    s.setup()
    return s


def test_prd_loss_distils_old_relations_into_the_new_model():
    torch.manual_seed(0)
    s = _prd()
    x, y = torch.randn(4, 5), torch.tensor([3, 3, 4, 4])
    s.after_experience(SimpleNamespace(classes=[0, 1, 2]))  # task 0 done: frozen copy + its prototypes
    with torch.no_grad():  # the model moves on: new encoder weights and prototypes
        s.model.backbone[0].weight.add_(torch.randn(4, 5))
        s.model.prototypes.add_(torch.randn(6, 4))
    loss = s.loss(x, y)
    m = s.model
    with torch.no_grad():
        h_new, h_old = m.backbone(x), s.old_backbone(x)
    want = sum(kl_old_new(h_new, h_old, m.prototypes.detach()[[0, 1, 2]], s.old_prototypes[[0, 1, 2]], 1.0)) / 4
    assert float(s.last_parts["distill"]) == pytest.approx(want, rel=1e-5)
    z = nn.functional.normalize(m.projector(h_new), dim=1)
    total = (supcon_loss(z, y, 0.1) + 2.0 * prototype_loss(h_new, m.prototypes, y) + 4.0 * want)
    assert float(loss.detach()) == pytest.approx(float(total.detach()), rel=1e-5)


def test_prd_first_task_has_no_distillation_and_supcon_by_hand():
    torch.manual_seed(1)
    s = _prd()
    s.loss(torch.randn(4, 5), torch.tensor([0, 0, 1, 1]))
    assert set(s.last_parts) == {"supcon", "proto"}
    # SupCon of 3 unit vectors: anchors 0 and 1 are positives of each other, anchor 2 has none
    z = nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    y = torch.tensor([5, 5, 7])
    sim = (z @ z.t()) / 0.5
    lp = lambda i, p: sim[i, p] - torch.logsumexp(sim[i, [a for a in range(3) if a != i]], 0)  # noqa: E731
    assert float(supcon_loss(z, y, 0.5)) == pytest.approx(float(-(lp(0, 1) + lp(1, 0)) / 2), rel=1e-6)
    h, p = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert float(prototype_loss(h, p, torch.tensor([0, 1]))) == pytest.approx((1 - 2 ** -0.5 + 0.0) / 2, rel=1e-6)


# -- PEC -------------------------------------------------------------------------------------------

def _pec(**kw):
    cfg = PECConfig(lr_decay=False, **kw)
    model = PEC.build_model(cfg, None, SimpleNamespace(n_classes=3, input_shape=(5,)))
    s = PEC(cfg, model, info(3, (5,)))
    s.setup()
    return s


def test_pec_loss_is_the_sum_of_per_class_mean_errors():
    torch.manual_seed(0)
    s = _pec(optimizer="sgd", lr=0.1)
    x, y = torch.randn(4, 5), torch.tensor([0, 0, 0, 1])
    with torch.no_grad():
        err = s.model.errors(x)  # (B, classes): every student on every sample (the scoring path)
    want = err[:3, 0].mean() + err[3, 1]
    assert float(s.loss(x, y).detach()) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pec_step_moves_each_student_as_if_its_class_came_alone(optimizer):
    """One step on a mixed batch (3 samples of class 0, 1 of class 1) = one step on each class's samples
    alone; the student of class 2 (absent) does not move.  With SGD a plain batch mean would scale the
    class-1 step by 1/4."""
    torch.manual_seed(0)
    base = _pec(optimizer=optimizer, lr=0.1)
    x, y = torch.randn(4, 5), torch.tensor([0, 0, 0, 1])
    mixed, alone0, alone1 = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    mixed.train_step(x, y)
    alone0.train_step(x[:3], y[:3])
    alone1.train_step(x[3:], y[3:])
    for name, p in mixed.model.students.named_parameters():
        p0 = dict(alone0.model.students.named_parameters())[name]
        p1 = dict(alone1.model.students.named_parameters())[name]
        p_init = dict(base.model.students.named_parameters())[name]
        assert torch.allclose(p[0], p0[0], atol=1e-6), name
        assert torch.allclose(p[1], p1[1], atol=1e-6), name
        assert torch.equal(p[2], p_init[2]), name
    moved = (mixed.model.students.w2[1] - base.model.students.w2[1]).abs().max()
    assert moved > 1e-3  # the step did something
    assert mixed.optimizer.state["step"].tolist() == [1.0, 1.0, 0.0]


def test_pec_predicts_the_class_with_the_smallest_error_and_masks_unseen():
    torch.manual_seed(0)
    s = _pec(optimizer="sgd", lr=0.1)
    x = torch.randn(6, 5)
    s.train_step(x[:3], torch.tensor([0, 0, 0]))
    logits = s.predict(x)
    with torch.no_grad():
        err = s.model.errors(x)
    assert torch.allclose(logits[:, 0], -err[:, 0])
    assert torch.isinf(logits[:, 1:]).all() and (logits[:, 1:] < 0).all()  # classes 1, 2 never trained


# -- ER and ER-ACE ---------------------------------------------------------------------------------

def _er(cls=ER, cfg_cls=ERConfig, **kw):
    """ER on a model with BatchNorm, so that one forward pass over [incoming; replay] differs from two."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU())
    body.out_dim = 8
    model = Model(body, IncrementalLinear(8, 4))
    s = cls(cfg_cls(buffer_size=6, replay_batch_size=4, lr=0.1, **kw), model, info(4, (3,)))
    s.setup()
    return s


CE = nn.functional.cross_entropy


@pytest.mark.parametrize("single", [True, False])
def test_er_loss_is_incoming_ce_plus_replay_ce(single):
    s = _er(single_forward=single)
    x0, y0 = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
    first = s.train_step(x0, y0)  # empty buffer: plain CE on the batch, then the batch is stored
    assert len(s.buffer) == 6 and s.buffer.items()["y"].tolist() == y0.tolist()
    x, y = torch.randn(5, 3), torch.tensor([2, 3, 2, 3, 2])
    s.model.observe(y)
    torch.manual_seed(1)
    loss = s.loss(x, y)
    torch.manual_seed(1)
    mem = s.buffer.sample(4)  # the same replay draw
    assert len(mem["y"]) == 4
    if single:
        logits = s.model(torch.cat([x, mem["x"]]))
        want = CE(logits[:5], y) + CE(logits[5:], mem["y"])
    else:
        want = CE(s.model(x), y) + CE(s.model(mem["x"]), mem["y"])
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    other = CE(s.model(x), y) + CE(s.model(mem["x"]), mem["y"]) if single else None
    if single:  # with BatchNorm the two forms differ: the test tells them apart
        assert abs(float(other.detach()) - float(want.detach())) > 1e-4
    assert torch.isfinite(first)


def test_er_state_round_trip_keeps_the_buffer():
    a = _er()
    a.train_step(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]))
    b = _er()
    b.load_state_dict(a.state_dict())
    assert b.buffer.items()["y"].tolist() == a.buffer.items()["y"].tolist() and b.buffer.n_seen == 6


def test_er_ace_loss_masks_seen_absent_classes_for_the_incoming_batch_only():
    s = _er(ERACE, ERACEConfig)
    s.train_step(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]))
    assert s.seen.tolist() == [True, True, False, False]
    x, y = torch.randn(5, 3), torch.tensor([1, 2, 1, 2, 2])  # class 1 seen and present, 0 seen and absent
    s.model.observe(y)
    torch.manual_seed(2)
    loss = s.loss(x, y)
    torch.manual_seed(2)
    mem = s.buffer.sample(4)
    logits = s.model(x)
    masked = logits.masked_fill(torch.tensor([True, False, False, False]), float("-inf"))
    want = CE(masked, y) + CE(s.model(mem["x"]), mem["y"])
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert abs(float((CE(logits, y) - CE(masked, y)).detach())) > 1e-4
    s.after_step(x, y)
    assert s.seen.tolist() == [True, True, True, False]
    t = _er(ERACE, ERACEConfig)
    t.load_state_dict(s.state_dict())
    assert t.seen.tolist() == [True, True, True, False]


def test_er_defaults_and_graph_safety():
    """Defaults change results (buffer size, replay batch, one forward pass); ER's step must stay capturable
    as a CUDA graph (no per-step host branch). ER-ACE changes ER's loss, so it does not inherit the flag
    (the strategy contract: a subclass that changes loss/train_step/after_step declares graph_safe itself)."""
    cfg = ERConfig()
    assert (cfg.buffer_size, cfg.replay_batch_size, cfg.single_forward) == (500, 10, True)
    assert is_graph_safe(_er()) and not is_graph_safe(_er(ERACE, ERACEConfig))


# -- NCM ---------------------------------------------------------------------------------------------

def test_ncm_freezes_its_backbone_and_trains_nothing():
    from strategies.ncm import NCM, NCMConfig

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(4, 3))
    backbone.out_dim = 3
    cfg = NCMConfig()
    assert (cfg.metric, cfg.normalize) == ("euclidean", True)  # Janson et al.'s defaults
    model = NCM.build_model(cfg, backbone, SimpleNamespace(n_classes=2))
    assert not any(p.requires_grad for p in backbone.parameters())
    s = NCM(cfg, model, info(2, (4,)))
    s.setup()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    assert s.train_step(x, y).item() == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    h = nn.functional.normalize(backbone(x), dim=1)
    means = torch.stack([h[y == c].mean(0) for c in (0, 1)])
    assert torch.equal(s.predict(x).argmax(1), torch.cdist(h, means).argmin(1))



def test_ncm_runs_on_cached_frozen_features_and_its_options_are_config_fields():
    from conftest import tiny

    from cl.core.config import resolve, section_config
    from cl.core.strategy import uses_frozen_features
    from strategies.ncm import NCM, NCMConfig

    assert uses_frozen_features(NCM, NCMConfig())  # the engine encodes the data once with the frozen backbone
    cfg = section_config(resolve(tiny({"name": "ncm", "metric": "cosine", "normalize": False})), "strategy")
    assert (cfg.metric, cfg.normalize) == ("cosine", False)  # settable: dataclass fields, not class attributes


# -- UER ---------------------------------------------------------------------------------------------

def test_uer_defaults_and_cosine_temperature():
    from strategies.uer import UER, UERConfig

    cfg = UERConfig()
    assert (cfg.tau, cfg.infer) == (0.09, "dot")  # the documented defaults (module docstring)
    torch.manual_seed(0)
    backbone = nn.Identity()
    backbone.out_dim = 3
    model = UER.build_model(cfg, backbone, SimpleNamespace(n_classes=2))
    s = UER(cfg, model, info(2, (3,)))
    s.setup()
    model.observe(torch.tensor([0, 1]))
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    h = torch.tensor([[1.0, 1.0, 0.0]])
    c = 1 / math.sqrt(2)
    assert torch.allclose(s.cosine_logits(h), torch.tensor([[c / 0.09, c / 0.09]]))
    assert torch.allclose(s.predict(h), torch.tensor([[3.0, 0.5]]))  # dot-product inference by default
