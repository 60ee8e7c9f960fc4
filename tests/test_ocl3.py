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
