"""Mechanism tests for the Kalman-filter head and the kalman / kalman-ft strategies (methods.md section 3)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from strategies._kalman_filter import KalmanHead
from test_strategies_er_family import make


def random_head(m=4, K=3, B=5, gamma=0.8, s2=0.3, sw2=1.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = KalmanHead(m, K, sigma_w2=sw2, sigma2=s2, gamma=gamma, bias=False)
    Q = torch.randn(m, m, generator=g, dtype=torch.float64)
    head.A.copy_(Q @ Q.t() / m + 0.2 * torch.eye(m, dtype=torch.float64))
    head.M.copy_(torch.randn(m, K, generator=g, dtype=torch.float64))
    phi = torch.randn(B, m, generator=g, dtype=torch.float64)
    Y = torch.randn(B, K, generator=g, dtype=torch.float64)
    return head, phi, Y


def joint_gaussian(head, phi, Y, gamma):
    """Direct computation: the joint Gaussian of (w_{n-1}, w_n, y) built from the generative model
    (w_{n-1} ~ N(M_k, A); w_n = gamma w_{n-1} + sqrt(1-gamma^2) sw ξ; y = Phi w_n + s e),
    conditioned on y with a generic solve, per class k."""
    A, M = head.A.numpy(), head.M.numpy()
    s2, sw2 = head.sigma2.item(), head.sigma_w2.item()
    P, Yn = phi.numpy(), Y.numpy()
    m, B = A.shape[0], P.shape[0]
    L = np.linalg.cholesky(A)
    n = 2 * m + B
    T = np.zeros((n, n))  # rows: w_{n-1}, w_n, y ; columns: u, ξ, e
    T[:m, :m] = L
    T[m:2 * m, :m] = gamma * L
    T[m:2 * m, m:2 * m] = math.sqrt((1 - gamma ** 2) * sw2) * np.eye(m)
    T[2 * m:, :] = P @ T[m:2 * m, :]
    T[2 * m:, 2 * m:] = math.sqrt(s2) * np.eye(B)
    C = T @ T.T
    Cww, Cwy, Cyy = C[m:2 * m, m:2 * m], C[m:2 * m, 2 * m:], C[2 * m:, 2 * m:]
    post_m, logp = [], 0.0
    for k in range(M.shape[1]):
        mu_w = gamma * M[:, k]
        mu_y = P @ mu_w
        post_m.append(mu_w + Cwy @ np.linalg.solve(Cyy, Yn[:, k] - mu_y))
        logp += multivariate_normal(mu_y, Cyy).logpdf(Yn[:, k])
    post_A = Cww - Cwy @ np.linalg.solve(Cyy, Cwy.T)
    prior_mean = gamma * (P @ M)  # latent logits under the prior
    prior_var = np.einsum("bi,ij,bj->b", P, Cww, P)
    return np.stack(post_m, 1), post_A, logp, prior_mean, prior_var


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_predict_and_update_match_joint_gaussian_conditioning(seed):
    head, phi, Y = random_head(m=3 + seed, K=2 + seed, B=4 + seed, gamma=[0.5, 0.9, 0.99][seed], seed=seed)
    gamma = head.gamma.item()
    ref_M, ref_A, ref_logp, ref_mu, ref_var = joint_gaussian(head, phi, Y, gamma)
    with torch.no_grad():
        mu, var = head.latent(phi)
        logp = head.gaussian_log_predictive(phi, Y)
    np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(var.numpy(), ref_var, rtol=1e-10)
    assert abs(logp.item() - ref_logp) < 1e-8 * max(1, abs(ref_logp))
    head.update(phi, Y)
    np.testing.assert_allclose(head.M.numpy(), ref_M, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(head.A.numpy(), ref_A, rtol=1e-9, atol=1e-10)
    assert torch.equal(head.A, head.A.t())  # symmetrised


def test_joseph_form_gives_the_same_posterior():
    h1, phi, Y = random_head(seed=3)
    h2, _, _ = random_head(seed=3)
    h1.update(phi, Y)
    h2.update(phi, Y, joseph=True)
    assert torch.allclose(h1.A, h2.A, atol=1e-10) and torch.allclose(h1.M, h2.M, atol=1e-12)


def test_gamma_one_is_bayesian_linear_regression():
    m, K, s2, sw2 = 5, 3, 0.5, 2.0
    head = KalmanHead(m, K, sigma_w2=sw2, sigma2=s2, gamma=1.0, bias=False)
    assert head.gamma.item() == 1.0
    g = torch.Generator().manual_seed(0)
    Phis, Ys = [], []
    for _ in range(6):  # sequential batches of 4
        phi = torch.randn(4, m, generator=g, dtype=torch.float64)
        Y = torch.randn(4, K, generator=g, dtype=torch.float64)
        head.update(phi, Y)
        Phis.append(phi)
        Ys.append(Y)
    Phi, Yall = torch.cat(Phis), torch.cat(Ys)
    prec = torch.eye(m, dtype=torch.float64) / sw2 + Phi.t() @ Phi / s2
    cov = torch.linalg.inv(prec)
    mean = cov @ Phi.t() @ Yall / s2
    assert torch.allclose(head.A, cov, atol=1e-10)
    assert torch.allclose(head.M, mean, atol=1e-10)


def test_gamma_zero_resets_to_the_prior_each_step():
    head, phi, Y = random_head(gamma=0.0)
    Mp, Ap = head.prior()
    assert torch.allclose(Mp, torch.zeros_like(Mp), atol=1e-10)
    assert torch.allclose(Ap, head.sigma_w2 * torch.eye(head.dim, dtype=torch.float64), atol=1e-10)


def test_gamma_gradient_matches_finite_differences():
    head, phi, Y = random_head(gamma=0.7, seed=4)
    lp = head.gaussian_log_predictive(phi, Y)
    (g,) = torch.autograd.grad(lp, head.psi)
    eps = 1e-6
    with torch.no_grad():
        f = lambda gm: joint_gaussian(head, phi, Y, gm)[2]  # noqa: E731
        gm = head.gamma.item()
        dgam = (f(gm + eps) - f(gm - eps)) / (2 * eps)
    assert abs(g.item() - dgam * -(1 - gm)) < 1e-5 * max(1, abs(g.item()))  # gamma = 1 - exp(psi)


def test_mc_predictive_probabilities():
    head = KalmanHead(2, 4, beta=2.0, bias=False, mc_samples=20000)
    head.observe(torch.arange(4))
    mu = torch.tensor([[1.0, 0.0, -1.0, 0.5]], dtype=torch.float64)
    # zero variance: exactly softmax(beta * mu)
    lp = head.class_log_probs(mu, torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(lp.exp(), torch.softmax(2 * mu, -1), atol=1e-12)
    # with variance: the MC estimate of E softmax(beta (mu + s eps)) is flatter than softmax(beta mu)
    torch.manual_seed(0)
    p = head.class_log_probs(mu, torch.tensor([4.0], dtype=torch.float64)).exp()
    assert abs(p.sum().item() - 1) < 1e-9 and p.max() < torch.softmax(2 * mu, -1).max()
    # unseen classes get probability 0
    head.seen[3] = False
    assert head.class_log_probs(mu, torch.ones(1, dtype=torch.float64))[0, 3] == float("-inf")


def stream(n_batches=12, B=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(10, 16, generator=g) * 2
    ys = [torch.randint(0, 4 + 6 * (i >= 6), (B,), generator=g) for i in range(n_batches)]
    return [(means[y] + torch.randn(B, 16, generator=g), y) for y in ys]


def run_test_then_train(s, batches):
    preds = []
    for x, y in batches:
        with torch.no_grad():
            s.model.eval()
            preds.append(s.predict(x).clone())
            s.model.train()
        s.train_step(x, y)
    return preds


def test_test_then_train_prediction_never_uses_its_label():
    batches = stream()
    torch.manual_seed(0)
    s1, _ = make("kalman", backbone="identity", mc_samples=4)
    p1 = run_test_then_train(s1, batches)
    k = 7
    altered = [(x, (y + 3) % 10 if i == k else y) for i, (x, y) in enumerate(batches)]
    torch.manual_seed(0)
    s2, _ = make("kalman", backbone="identity", mc_samples=4)
    p2 = run_test_then_train(s2, altered)
    for i in range(k + 1):  # up to and including batch k: identical predictions
        assert torch.equal(p1[i], p2[i]), i
    assert not torch.allclose(p1[k + 1], p2[k + 1])  # the altered label is learned only afterwards


def test_prediction_uses_the_prior_quantities():
    s, _ = make("kalman", backbone="identity", gamma=0.6, learn_gamma=False, learn_beta=False, mc_samples=0,
                normalize=False)
    for x, y in stream(4):
        s.train_step(x, y)
    x, y = stream(1, seed=5)[0]
    head = s.model.head
    phi = head.phi(x)
    with torch.no_grad():
        logits = s.predict(x)
        prior_mu = 0.6 * phi @ head.M  # drifted once from the stored posterior
        assert torch.allclose(logits, torch.log_softmax(prior_mu.masked_fill(~head.seen, -math.inf), -1).float(),
                              atol=1e-6)
        s.train_step(x, y)  # the posterior after learning (x, y) would be a different (leaky) prediction
        assert not torch.allclose(logits, s.predict(x), atol=1e-3)


@pytest.mark.parametrize("objective", ["mc"])
def test_gamma_step_goes_down_on_a_contradicting_batch_and_up_on_a_consistent_one(objective):
    g = torch.Generator().manual_seed(1)
    means = torch.randn(4, 8, generator=g) * 2

    def batch(rotate):
        y = torch.randint(0, 4, (10,), generator=g)
        return means[y] + 0.5 * torch.randn(10, 8, generator=g), (y + rotate) % 4

    torch.manual_seed(0)
    # plain SGD: the direction of one step is the sign of the objective's gradient (Adam's momentum would
    # carry the 20 consistent steps over)
    s, _ = make("kalman", backbone="identity", scenario={"name": "gaussian", "dim": 8}, gamma=0.95,
                learn_beta=False, beta=5.0, normalize=True, gamma_objective=objective, gamma_optimizer="sgd",
                gamma_lr=1.0)
    for _ in range(20):
        s.train_step(*batch(0))
    state = {k: v.clone() for k, v in s.model.state_dict().items()}
    g0 = s.model.head.gamma.item()
    s.train_step(*batch(0))
    up = s.model.head.gamma.item()
    s.model.load_state_dict(state)
    s.train_step(*batch(2))  # labels contradict everything learned: forgetting (lower gamma) is favoured
    down = s.model.head.gamma.item()
    assert down < g0 < up, (down, g0, up)


def test_learned_gamma_is_lower_on_a_non_stationary_stream():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(4, 8, generator=g) * 2
    gam = {}
    for shift in (0, 5):
        torch.manual_seed(0)
        s, _ = make("kalman", backbone="identity", scenario={"name": "gaussian", "dim": 8}, gamma=0.99,
                    learn_beta=False, beta=5.0, normalize=True, mc_samples=8)
        for i in range(60):
            y = torch.randint(0, 4, (10,), generator=g)
            x = means[y] + 0.5 * torch.randn(10, 8, generator=g)
            s.train_step(x, (y + (i // shift)) % 4 if shift else y)  # labels rotate every 5 batches
        gam[shift] = s.model.head.gamma.item()
    assert gam[5] < gam[0] - 0.002, gam


def test_kalman_ft_trains_the_backbone_with_the_filter_state_fixed():
    torch.manual_seed(0)
    s, _ = make("kalman-ft", lr=0.05)
    params0 = [p.detach().clone() for p in s.model.backbone.parameters()]
    assert all(p.requires_grad for p in s.model.backbone.parameters())
    assert not s.model.head.M.requires_grad and not s.model.head.A.requires_grad
    for x, y in stream(5):
        s.train_step(x, y)
    moved = [not torch.equal(a, b) for a, b in zip(params0, s.model.backbone.parameters())]
    assert all(moved)
    # frozen mode leaves a backbone untouched
    s2, _ = make("kalman")
    b0 = [p.detach().clone() for p in s2.model.backbone.parameters()]
    for x, y in stream(3):
        s2.train_step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(b0, s2.model.backbone.parameters()))


def test_prediction_and_training_see_the_same_features():
    """With normalize=True the filter learns on normalised features; predictions must use them too."""
    s, _ = make("kalman", backbone="identity", normalize=True, mc_samples=0, learn_beta=False)
    x, y = stream(1)[0]
    s.train_step(x, y)
    head = s.model.head
    with torch.no_grad():
        mu, _ = head.latent(head.phi(torch.nn.functional.normalize(x, dim=1)))
        assert torch.allclose(s.predict(x), torch.log_softmax(mu.masked_fill(~head.seen, -math.inf), -1).float(),
                              atol=1e-6)
