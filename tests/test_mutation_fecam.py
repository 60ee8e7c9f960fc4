"""Tests written from the mutation run of strategies/fecam.py (issue 19): the official defaults, the validation
bounds, the distance with other settings (one shrinkage, unequal gammas, no normalisation, no Tukey: by hand),
a one-sample class, the Tukey decision (auto / on / off, first task only, zero features), the inert step, on
an identity backbone over 3 to 5 features."""
from __future__ import annotations

import pytest
import torch

from cl.core.registry import ConfigError
from strategies.fecam import FeCAM, FeCAMConfig

from test_ptm3 import backbone, gaussian_tasks, make, scenario, train


def test_defaults_are_the_official_ones():
    """exps/FeCAM_cifar100.json: alpha1 = alpha2 = 1, shrinkage twice, norm_cov on, beta 0.5."""
    c = FeCAMConfig()
    assert (c.gamma1, c.gamma2, c.shrink_repeats, c.normalize_cov, c.tukey, c.beta, c.feature_batch) == (
        1.0, 1.0, 2, True, "auto", 0.5, 256)
    assert FeCAM.frozen_features


def test_validation_bounds():
    tasks, C = gaussian_tasks(d=3)
    sc = scenario(tasks, C, (3,))
    make("fecam", backbone(shape=(3,)), sc, shrink_repeats=0, gamma1=0.0, gamma2=0.0)
    for bad in ({"shrink_repeats": -1}, {"gamma1": -0.5}, {"gamma2": -0.5}):
        with pytest.raises(ConfigError, match=r"strategy\.shrink_repeats, gamma1, gamma2 must be >= 0, got"):
            make("fecam", backbone(shape=(3,)), sc, **bad)


def _precision(f, g1, g2, repeats, normalize):
    cov = torch.cov(f.t())
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype)
    for _ in range(repeats):
        v1 = cov.diagonal().mean()
        v2 = (cov - torch.diag(cov.diagonal())).sum() / (d * d - d)
        cov = cov + g1 * v1 * eye + g2 * v2 * (1 - eye)
    if normalize:
        sd = cov.diagonal().sqrt()
        cov = cov / torch.outer(sd, sd)
    return torch.linalg.inv(cov)


@pytest.mark.parametrize("repeats,normalize", [(1, False), (3, True), (0, False)])
def test_distance_by_hand_with_other_settings(repeats, normalize):
    tasks, C = gaussian_tasks(d=4, per=12)  # signed features: no Tukey under auto
    sc = scenario(tasks, C, (4,))
    s = make("fecam", backbone(shape=(4,)), sc, gamma1=0.5, gamma2=2.0, shrink_repeats=repeats,
             normalize_cov=normalize, feature_batch=5)
    for exp in sc:
        train(s, exp)
    assert not bool(s.model.head.use_tukey) and s.extra_metrics() == {"tukey": False}
    x = torch.randn(5, 4)
    got = s.predict(x)
    X = torch.cat([e.train_x for e in sc]).double()
    Yl = torch.cat([e.train_y for e in sc])
    xn = x.double() / x.double().norm(dim=1, keepdim=True)
    for c in range(C):
        f = X[Yl == c]
        mu = f.mean(0)
        assert torch.allclose(s.model.head.means[c], mu.float(), atol=1e-6)
        P = _precision(f, 0.5, 2.0, repeats, normalize)
        diff = xn - mu / mu.norm()
        want = -torch.einsum("bi,ij,bj->b", diff, P, diff)
        assert torch.allclose(got[:, c].double(), want, atol=1e-4, rtol=1e-4), c


@pytest.mark.parametrize("normalize", [False, True])
def test_a_one_sample_class_scores_by_euclidean_distance_and_does_not_win_everything(normalize):
    x = torch.tensor([[1.0, -2.0, 0.5], [0.2, 0.1, -0.3], [0.0, 1.0, 1.0]])
    sc = scenario([(x, torch.tensor([0, 1, 1]))], 2, (3,))
    s = make("fecam", backbone(shape=(3,)), sc, normalize_cov=normalize)
    train(s, sc[0])
    assert torch.equal(s.model.head.precision[0], torch.eye(3))  # no covariance: the identity, not pinv(0) = 0
    q = torch.tensor([[0.2, 0.1, -0.3], [1.0, -2.0, 0.5]])
    out = s.predict(q)
    assert torch.isfinite(out).all()
    mu = x[0] / x[0].norm()
    assert torch.allclose(out[:, 0], -((q / q.norm(dim=1, keepdim=True) - mu) ** 2).sum(1), atol=1e-5)
    assert out[1].argmax() == 0 and out[0, 0] < 0  # its own sample is closest to it; others are not at 0


def test_a_one_sample_class_with_raw_covariance_keeps_the_other_class_exact():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.2, 0.1, -0.3], [0.0, 1.0, 1.0]])
    sc = scenario([(x, torch.tensor([0, 1, 1]))], 2, (3,))
    s = make("fecam", backbone(shape=(3,)), sc, normalize_cov=False)
    train(s, sc[0])
    cov = torch.cov(x[1:].double().t())  # two samples: a rank-one covariance, shrunk twice
    for _ in range(2):
        v1, v2 = cov.diagonal().mean(), (cov - torch.diag(cov.diagonal())).sum() / 6
        cov = cov + v1 * torch.eye(3, dtype=cov.dtype) + v2 * (1 - torch.eye(3, dtype=cov.dtype))
    assert torch.allclose(s.model.head.precision[1].double(), torch.linalg.pinv(cov), atol=1e-4)
    assert torch.isfinite(s.predict(torch.randn(4, 3))).all()


def test_correlation_of_a_constant_feature_is_zero_off_the_diagonal_and_one_on_it():
    from cl.models.analytic import correlation
    cov = torch.tensor([[4.0, 0.0, 2.0], [0.0, 0.0, 0.0], [2.0, 0.0, 9.0]], dtype=torch.float64)
    want = torch.tensor([[1.0, 0.0, 2.0 / 6.0], [0.0, 1.0, 0.0], [2.0 / 6.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(correlation(cov), want, atol=1e-12)
    assert torch.equal(correlation(torch.zeros(2, 2)), torch.eye(2))


@pytest.mark.parametrize("tukey,positive,want", [("auto", True, True), ("auto", False, False), ("on", False, True),
                                                 ("off", True, False)])
def test_tukey_is_decided_on_the_first_task(tukey, positive, want):
    tasks, C = gaussian_tasks(d=4, per=10, positive=positive)
    if positive:
        tasks[0][0][0, 0] = 0.0  # a zero (a ReLU feature) is non-negative
    tasks[1] = (-tasks[1][0].abs() if positive else tasks[1][0].abs(), tasks[1][1])  # the second task says otherwise
    sc = scenario(tasks, C, (4,))
    s = make("fecam", backbone(shape=(4,)), sc, tukey=tukey, beta=0.5, normalize_cov=False)
    train(s, sc[0])
    assert bool(s.model.head.use_tukey) is want
    train(s, sc[1])
    assert bool(s.model.head.use_tukey) is want
    x = torch.rand(3, 4) + 0.1
    h = s.model.head.transform(x)
    t = x.sqrt() if want else x
    assert torch.allclose(h, t / t.norm(dim=1, keepdim=True))


def test_tukey_exponent_reaches_the_covariance():
    tasks, C = gaussian_tasks(d=3, per=10, positive=True)
    sc = scenario(tasks, C, (3,))
    s = make("fecam", backbone(shape=(3,)), sc, tukey="on", beta=2.0, shrink_repeats=0, normalize_cov=False)
    train(s, sc[0])
    f = sc[0].train_x[sc[0].train_y == 0].double()
    assert torch.allclose(s.model.head.precision[0].double(), torch.linalg.inv(torch.cov((f ** 2).t())),
                          rtol=1e-3, atol=1e-3)


def test_nothing_trains_and_an_empty_task_changes_nothing():
    tasks, C = gaussian_tasks(d=3)
    sc = scenario(tasks + [(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))], C, (3,))
    s = make("fecam", backbone(shape=(3,)), sc)
    assert s.session == -1
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    assert len(params) == 1 and s.optimizer.param_groups[0]["lr"] == 0.0
    s.before_experience(sc[0])
    assert s.session == 0
    loss = s.train_step(sc[0].train_x, sc[0].train_y)
    assert loss.shape == () and loss.item() == 0.0
    s.after_experience(sc[0])
    s.before_experience(sc[1])
    s.after_experience(sc[1])
    state = {k: v.clone() for k, v in s.model.head.state_dict().items()}
    s.before_experience(sc[2])
    s.after_experience(sc[2])
    assert all(torch.equal(v, s.model.head.state_dict()[k]) for k, v in state.items())


def test_a_class_of_the_experience_without_samples_keeps_empty_statistics():
    from types import SimpleNamespace

    tasks, C = gaussian_tasks(d=3, per=6)
    sc = scenario(tasks, C, (3,))
    s = make("fecam", backbone(shape=(3,)), sc)
    x, y = tasks[0]
    s.before_experience(sc[0])
    s.after_experience(SimpleNamespace(train_x=x, train_y=y, classes=[2, 0, 1], index=0))  # the empty one first
    assert torch.allclose(s.model.head.means[1], x[y == 1].mean(0))  # the classes after it are learnt
    assert torch.equal(s.model.head.means[2], torch.zeros(3)) and torch.equal(s.model.head.precision[2], torch.zeros(3, 3))
    assert torch.isfinite(s.model.head.means).all() and torch.isfinite(s.model.head.precision).all()


def test_a_one_sample_task_is_learnt():
    x = torch.tensor([[1.0, -2.0, 0.5]])
    sc = scenario([(x, torch.tensor([1]))], 2, (3,))
    s = make("fecam", backbone(shape=(3,)), sc)
    train(s, sc[0])
    assert torch.equal(s.model.head.means[1], x[0]) and s.model.head.seen.tolist() == [False, True]


def test_the_backbone_is_frozen_and_tukey_clamps_negative_features_to_zero():
    tasks, C = gaussian_tasks(d=4)
    s = make("fecam", backbone("mlp", shape=(4,)), scenario(tasks, C, (4,)), tukey="on")
    assert not any(p.requires_grad for p in s.model.backbone.parameters())
    head = s.model.head
    head.use_tukey.fill_(True)
    got = head.transform(torch.tensor([[-0.5, 4.0, -3.0, 0.0]]))
    assert torch.allclose(got, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # sqrt(clamp(x, 0)), normalised


def test_auto_tukey_needs_every_feature_non_negative():
    tasks, C = gaussian_tasks(d=4, per=10, positive=True)
    tasks[0][0][3, 2] = -0.5  # one slightly negative feature
    sc = scenario(tasks, C, (4,))
    s = make("fecam", backbone(shape=(4,)), sc)
    train(s, sc[0])
    assert not bool(s.model.head.use_tukey)
