"""Issue 15, ocl3: SLDA (streaming LDA), NCM on task-free online streams, and the classic methods (GDumb,
A-GEM, LwF, DER++) under protocol=online, task-free where the method allows it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cl.core.config import resolve
from cl.core.registry import ConfigError, scenarios
from cl.core.streams import Experience, Scenario
from cl.models.slda import StreamingLDAHead
from cl.train.engine import Run


# -- a small fabricated stream with any boundary kind (2 well separated classes per task) ------------
@dataclass
class StreamConfig:
    n_tasks: int = 3
    per_class: int = 30
    test_per_class: int = 10
    dim: int = 8
    boundaries: str = "visible"  # visible | hidden (task-free: no task id, experiences are evaluation points)


@scenarios.register("ocl3-stream", StreamConfig)
def _stream(cfg, seed):
    g = torch.Generator().manual_seed(0)
    C = 2 * cfg.n_tasks
    means = torch.randn(C, cfg.dim, generator=g) * 4
    exps = []
    for t in range(cfg.n_tasks):
        cls = [2 * t, 2 * t + 1]
        ytr = torch.tensor(cls).repeat_interleave(cfg.per_class)
        yte = torch.tensor(cls).repeat_interleave(cfg.test_per_class)
        xtr = means[ytr] + torch.randn(len(ytr), cfg.dim, generator=g)
        xte = means[yte] + torch.randn(len(yte), cfg.dim, generator=g)
        exps.append(Experience(xtr, ytr, xte, yte, cls, t if cfg.boundaries == "visible" else None, index=t))
    return Scenario("ocl3-stream", exps, n_classes=C, input_shape=(cfg.dim,), class_order=list(range(C)),
                    boundaries=cfg.boundaries, modality="vector")


def run(strategy: dict, tmp_path, boundaries="visible", backbone=None, **protocol):
    raw = {"strategy": strategy, "scenario": {"name": "ocl3-stream", "boundaries": boundaries},
           "backbone": backbone or {"name": "mlp", "hidden": 16},
           "protocol": {"name": "online", "batch_size": 10, **protocol}, "wandb": "off"}
    res = Run(resolve(raw), progress=False, out_dir=tmp_path / f"{strategy['name']}-{boundaries}").execute()
    assert res["status"] == "finished", res.get("error")
    return res


# -- SLDA ------------------------------------------------------------------------------------------------
def _lda_data(n_per=60, K=4, d=5, seed=0):
    """Balanced classes with a shared, correlated covariance (so uniform priors = empirical priors)."""
    rs = np.random.RandomState(seed)
    A = rs.randn(d, d)
    mu = rs.randn(K, d) * 3
    y = np.repeat(np.arange(K), n_per)
    X = mu[y] + rs.randn(len(y), d) @ A.T
    p = rs.permutation(len(y))
    return X[p], y[p]


def _pooled(X, y):
    """Batch estimate: class means and the pooled within-class covariance S_w / N."""
    K = y.max() + 1
    mu = np.stack([X[y == k].mean(0) for k in range(K)])
    R = X - mu[y]
    return mu, R.T @ R / len(y)


def _stream_head(X, y, batch, shrinkage=1e-4, covariance="exact"):
    head = StreamingLDAHead(X.shape[1], int(y.max()) + 1, shrinkage, covariance)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for i in range(0, len(y), batch):
        head.update(Xt[i:i + batch], yt[i:i + batch])
    return head


@pytest.mark.parametrize("batch", [1, 7, 10, 240])
def test_slda_streaming_update_equals_batch_estimate(batch):
    X, y = _lda_data()
    mu, sigma = _pooled(X, y)
    head = _stream_head(X, y, batch)
    assert np.allclose(head.means.numpy(), mu, atol=1e-10)
    assert np.allclose(head.sigma.numpy(), sigma, atol=1e-10)
    assert head.counts.tolist() == [60.0] * 4 and float(head.n) == 240


def test_slda_order_of_the_stream_does_not_matter():
    X, y = _lda_data()
    a = _stream_head(X, y, 10)
    o = np.argsort(y, kind="stable")  # class by class, as a class-incremental stream
    b = _stream_head(X[o], y[o], 10)
    assert torch.allclose(a.sigma, b.sigma, atol=1e-10) and torch.allclose(a.means, b.means, atol=1e-10)


def _slda_scores(head, X):
    head.eval()
    with torch.no_grad():
        return head(torch.tensor(X, dtype=torch.float32)).double().numpy()


def test_slda_matches_sklearn_lda_without_shrinkage():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA

    X, y = _lda_data()
    Xte, _ = _lda_data(seed=1)
    head = _stream_head(X, y, 10, shrinkage=0.0)
    K = 4
    sk = LDA(solver="lsqr", priors=np.full(K, 1 / K)).fit(X, y)
    assert np.allclose(sk.covariance_, head.sigma.numpy(), atol=1e-10)  # sklearn's covariance_ is S_w / N too
    ours = _slda_scores(head, Xte)
    ref = sk.decision_function(Xte) - np.log(1 / K)  # sklearn adds log priors; SLDA has no prior term
    assert np.allclose(ours, ref, rtol=1e-4, atol=1e-3)
    assert (ours.argmax(1) == sk.predict(Xte)).all()


def test_slda_shrinkage_matches_sklearn_identity_target():
    """SLDA shrinks towards I: ``(1-s) Sigma + s I``.  sklearn's float ``shrinkage`` standardises each feature
    first, i.e. shrinks towards diag(Sigma); the two coincide when the pooled within-class variances are 1.
    In general, SLDA's s equals sklearn with a covariance estimator that shrinks each class's covariance
    towards I (the weighted sum of (1-s) C_k + s I over equal priors is (1-s) Sigma + s I)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA

    s, K = 0.3, 4
    X, y = _lda_data()
    Xte, _ = _lda_data(seed=1)

    class ToIdentity:
        def fit(self, Z):
            C = np.cov(Z, rowvar=False, bias=True)
            self.covariance_ = (1 - s) * C + s * np.eye(Z.shape[1])
            return self

    head = _stream_head(X, y, 10, shrinkage=s)
    sk = LDA(solver="lsqr", priors=np.full(K, 1 / K), covariance_estimator=ToIdentity()).fit(X, y)
    ours = _slda_scores(head, Xte)
    assert np.allclose(ours, sk.decision_function(Xte) - np.log(1 / K), rtol=1e-4, atol=1e-3)
    # unit pooled within-class variances: sklearn's own shrinkage=s is the same estimate
    _, sigma = _pooled(X, y)
    Xs, Xtes = X / np.sqrt(np.diag(sigma)), Xte / np.sqrt(np.diag(sigma))
    head = _stream_head(Xs, y, 10, shrinkage=s)
    sk = LDA(solver="lsqr", priors=np.full(K, 1 / K), shrinkage=s).fit(Xs, y)
    ours = _slda_scores(head, Xtes)
    assert np.allclose(ours, sk.decision_function(Xtes) - np.log(1 / K), rtol=1e-4, atol=1e-3)
    assert (ours.argmax(1) == sk.predict(Xtes)).all()
    # and the shrinkage is really applied: without it the scores differ
    assert not np.allclose(ours, _slda_scores(_stream_head(Xs, y, 10, shrinkage=0.0), Xtes), atol=1e-2)


def test_slda_paper_recursion_is_the_per_sample_formula():
    """covariance=paper: Sigma <- (t Sigma + t/(t+1) (x - mu_y)(x - mu_y)^T) / (t+1), mu_y before the sample."""
    X, y = _lda_data(n_per=5, K=3, d=3)
    head = _stream_head(X, y, 4, shrinkage=0.0, covariance="paper")
    sigma, mu, cnt = np.zeros((3, 3)), np.zeros((3, 3)), np.zeros(3)
    for t, (x, c) in enumerate(zip(X, y)):
        d = x - mu[c]
        sigma = (t * sigma + t / (t + 1) * np.outer(d, d)) / (t + 1)
        mu[c] += d / (cnt[c] + 1)
        cnt[c] += 1
    assert np.allclose(head.sigma.numpy(), sigma, atol=1e-10) and np.allclose(head.means.numpy(), mu)
    assert not np.allclose(sigma, _pooled(X, y)[1], atol=1e-3)  # differs from the exact pooled estimate


def test_slda_unseen_classes_and_bad_config():
    head = StreamingLDAHead(3, 4)
    head.update(torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 1]))
    out = head(torch.randn(2, 3))
    assert torch.isinf(out[:, 2:]).all() and torch.isfinite(out[:, :2]).all()
    with pytest.raises(ConfigError, match="strategy.covariance"):
        StreamingLDAHead(3, 4, covariance="oas")
    with pytest.raises(ConfigError, match="strategy.shrinkage"):
        StreamingLDAHead(3, 4, shrinkage=2.0)


def test_slda_cache_refreshes_after_update_and_after_load():
    head = StreamingLDAHead(3, 2, shrinkage=0.1)
    head.update(torch.randn(8, 3), torch.tensor([0, 1] * 4))
    x = torch.randn(5, 3)
    a = head(x)
    head.update(torch.randn(8, 3) + 2, torch.tensor([0, 1] * 4))
    b = head(x)
    assert not torch.allclose(a, b)
    other = StreamingLDAHead(3, 2, shrinkage=0.1)
    other(x)  # caches an empty model's readout
    other.load_state_dict(head.state_dict())
    assert torch.allclose(other(x), b)


@pytest.mark.parametrize("boundaries", ["visible", "hidden"])
def test_slda_online_run_task_free(tmp_path, boundaries):
    res = run({"name": "slda"}, tmp_path, boundaries, backbone={"name": "identity"})
    assert res["R"][-1][0] > 0.9 and res["metrics"]["online_acc"] > 0.8  # separable Gaussians


# -- NCM: the online, task-free nearest class mean ----------------------------------------------------
def _run_obj(strategy: dict, tmp_path, boundaries="visible", backbone=None, **protocol):
    raw = {"strategy": strategy, "scenario": {"name": "ocl3-stream", "boundaries": boundaries},
           "backbone": backbone or {"name": "mlp", "hidden": 16},
           "protocol": {"name": "online", "batch_size": 10, **protocol}, "wandb": "off"}
    r = Run(resolve(raw), progress=False, out_dir=tmp_path / f"{strategy['name']}-{boundaries}")
    res = r.execute()
    assert res["status"] == "finished", res.get("error")
    return r, res


@pytest.mark.parametrize("boundaries", ["visible", "hidden"])
def test_ncm_is_task_free_online_means_are_exact(tmp_path, boundaries):
    """ncm updates its class means at every stream batch and reads no boundary: on a hidden-boundary online
    stream its means are the exact class means of the (frozen) features of everything streamed."""
    r, res = _run_obj({"name": "ncm", "normalize": False}, tmp_path, boundaries, backbone={"name": "identity"},
                      eval_every=20)
    sc = _stream(StreamConfig(boundaries=boundaries), 0)
    x = torch.cat([e.train_x for e in sc.experiences])
    y = torch.cat([e.train_y for e in sc.experiences])
    want = torch.stack([x[y == c].double().mean(0) for c in range(6)])
    assert torch.allclose(r.strategy.model.head.means.double(), want, atol=1e-5)
    assert res["R"][-1] == [1.0, 1.0, 1.0]
    # anytime accuracy during the stream: classes are learned as soon as they arrive
    assert min(a for _, a in res["online"]["anytime"]) > 0.9 and res["metrics"]["online_acc"] > 0.8


# -- the classic methods under protocol=online --------------------------------------------------------
def test_gdumb_online_offers_each_sample_once_and_retrains(tmp_path):
    for b in ("visible", "hidden"):
        r, res = _run_obj({"name": "gdumb", "buffer_size": 60, "fit_epochs": 20, "fit_batch_size": 10}, tmp_path, b)
        counts = r.strategy.buffer.class_counts()
        assert sorted(counts) == list(range(6)) and set(counts.values()) == {10}  # greedy class balance: 60/6
        assert res["R"][-1][0] > 0.8 and res["R"][-1][2] > 0.8  # retrained from scratch on the balanced memory


def test_gdumb_offline_still_offers_once_per_experience(tmp_path):
    raw = {"strategy": {"name": "gdumb", "buffer_size": 500, "fit_epochs": 1}, "scenario": {"name": "ocl3-stream"},
           "backbone": {"name": "mlp", "hidden": 16}, "protocol": {"name": "offline", "epochs": 2}, "wandb": "off"}
    r = Run(resolve(raw), progress=False, out_dir=tmp_path / "off")
    assert r.execute()["status"] == "finished"
    assert len(r.strategy.buffer) == 180  # 2 epochs, but each sample offered once


def test_agem_reservoir_is_task_free_online(tmp_path):
    r, res = _run_obj({"name": "agem", "memory": "reservoir", "buffer_size": 50, "replay_batch_size": 10},
                      tmp_path, "hidden")
    assert len(r.strategy.buffer) == 50 and r.strategy.buffer.n_seen == 180
    assert np.isfinite(res["metrics"]["online_acc"])
    r, res = _run_obj({"name": "agem", "buffer_size": 60}, tmp_path, "visible")  # episodic: per experience
    assert [r.strategy.mem_t.tolist().count(k) for k in range(3)] == [20, 20, 20]  # 60 // 3 per experience


def test_agem_task_free_needs_reservoir_memory(tmp_path):
    with pytest.raises(ConfigError, match=r"scenario.boundaries='hidden'.*strategy.memory=reservoir"):
        _run_obj({"name": "agem"}, tmp_path, "hidden")
    with pytest.raises(ConfigError, match="strategy.memory"):
        _run_obj({"name": "agem", "memory": "ring"}, tmp_path, "visible")


def test_agem_reservoir_projection_on_a_constructed_gradient():
    """With the whole buffer as the reference batch, the step's gradient g becomes
    g - (g.g_ref / g_ref.g_ref) g_ref when g.g_ref < 0 and stays g otherwise."""
    from cl.core.strategy import RunInfo
    from cl.models.model import Model, build_head
    from cl.models.projection import flat_grad, grads_of, set_flat_grad
    from strategies.agem import AGEM, AGEMConfig
    import torch.nn as nn

    torch.manual_seed(0)
    bb = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    bb.out_dim = 6
    model = Model(bb, build_head("linear", 6, 3))
    s = AGEM(AGEMConfig(memory="reservoir", buffer_size=8, replay_batch_size=8), model,
             RunInfo(n_classes=3, input_shape=(4,), device=torch.device("cpu"), seed=0, boundaries="hidden",
                     protocol="online"))
    s.setup()
    bx, by = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    s.buffer.add(x=bx, y=by)
    model.observe(by)
    params = s.params()
    g_ref = grads_of(torch.nn.functional.cross_entropy(model(bx), by), params)
    v = torch.randn_like(g_ref)
    for g in (-g_ref + 0.1 * v, g_ref + 0.1 * v):  # conflicting, then agreeing
        set_flat_grad(params, g.clone())
        s.before_optimizer_step(None, None)
        got = flat_grad(params)
        dot = torch.dot(g, g_ref)
        want = g - dot / torch.dot(g_ref, g_ref) * g_ref if dot < 0 else g
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.dot(got, g_ref) > -1e-6


def test_lwf_online_visible_boundaries(tmp_path):
    r, res = _run_obj({"name": "lwf"}, tmp_path, "visible")
    assert r.strategy.old_classes == [0, 1, 2, 3, 4, 5] and r.strategy.teacher  # teacher taken at each boundary
    assert np.isfinite(res["metrics"]["online_acc"])


@pytest.mark.parametrize("name", ["lwf", "lwf-mc", "icarl"])
def test_distillation_needs_visible_boundaries(tmp_path, name):
    with pytest.raises(ConfigError, match=r"needs experience boundaries.*scenario.boundaries='hidden'.*visible"):
        _run_obj({"name": name}, tmp_path, "hidden")


@pytest.mark.parametrize("strategy", [{"name": "derpp", "buffer_size": 40, "replay_batch_size": 10},
                                      {"name": "agem", "memory": "reservoir", "buffer_size": 40, "replay_batch_size": 10},
                                      {"name": "gdumb", "buffer_size": 40, "fit_epochs": 3}])
def test_task_free_methods_ignore_boundaries(tmp_path, strategy):
    """DER++, reservoir A-GEM and GDumb use no boundary: the same stream with hidden boundaries gives the same
    run, bit for bit, as with visible ones (the shuffled order and the evaluation points are the same)."""
    a = _run_obj(strategy, tmp_path, "visible")[1]
    r, b = _run_obj(strategy, tmp_path, "hidden")
    assert a["R"] == b["R"] and a["metrics"]["online_acc"] == b["metrics"]["online_acc"]
    if strategy["name"] == "derpp":
        buf = r.strategy.buffer
        assert len(buf) == 40 and buf.items()["logits"].shape == (40, 6)
        assert len(set(buf.items()["y"].tolist())) >= 4  # a reservoir over the whole stream, not the last task


@pytest.mark.parametrize("strategy", [{"name": "agem", "memory": "reservoir", "buffer_size": 20},
                                      {"name": "slda", "covariance": "paper", "shrinkage": 0.01}])
def test_non_default_modes_resume_bitwise(tmp_path, monkeypatch, strategy):
    """The reliability check (declared state complete, bitwise resume from a boundary) for the modes the
    every-strategy test does not reach with its defaults."""
    import test_reliability_state as rs

    monkeypatch.setattr(rs, "_configs", lambda name: iter([{"strategy": dict(strategy), "scenario": rs.GAUSS,
                                                             "backbone": {"name": "mlp", "hidden": 16}}]))
    full, res, diff = rs.boundary_check(tmp_path, strategy["name"], monkeypatch)
    assert not diff and res["R"] == full["R"]


def test_online_benchmark_times_any_registered_strategy(capsys):
    """benchmarks/online.py --strategies: each named strategy (with field overrides) beside ER, test-then-train."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import online

    rows = online.main(["--models", "mlp", "--mlp-samples", "100", "--rounds", "1", "--no-avalanche",
                        "--skip", "plain,platform step,platform online",
                        "--strategies", "slda,gdumb:fit_epochs=1,agem:memory=reservoir"])
    by = {r[2]: r for r in rows}
    assert set(by) == {"er (test-then-train)", "slda (test-then-train)", "gdumb:fit_epochs=1 (test-then-train)",
                       "agem:memory=reservoir (test-then-train)"}
    assert by["er (test-then-train)"][6] == 1.0 and all(r[3] > 0 for r in rows)
    assert by["gdumb:fit_epochs=1 (test-then-train)"][7] > 0  # its retraining, timed apart as hook time
    assert "cost vs ER (C)" in capsys.readouterr().out
