"""Tests written from the mutation run of strategies/_kalman_filter.py (issue 19): the head's defaults, both
parametrisations of gamma (and their edge values), the bias feature, and every filter quantity on a
one-dimensional case small enough to compute by hand:

    m = 1 (no bias), K = 2, A = 1, M = [1, -2], gamma = 0.5, sigma_w2 = 2, sigma2 = 0.5, phi = 2
    prior:   M- = [0.5, -1],  A- = 0.25 * 1 + 0.75 * 2 = 1.75
    latent:  mu = gamma * phi * M = [1, -2],  var = phi^2 A- = 7   (+ sigma2 = 7.5 with predictive noise)
    update with Y = [1, 0]:  S = 7.5,  gain = A- phi / S = 7 / 15,  residual = Y - phi M- = [0, 2]
             M = [0.5, -1 + 14 / 15],  A = 1.75 - 1.75^2 * 4 / 7.5
    Gaussian log predictive: sum_k -r_k^2 / (2 S) - log(S) / 2 - log(2 pi) / 2  with  r = [0, 2]
"""
from __future__ import annotations

import math

import pytest
import torch

from strategies._kalman_filter import KalmanHead, _log1m, _logit

D = torch.float64


def tiny(**kw):
    """The hand case of the module docstring."""
    args = dict(sigma_w2=2.0, sigma2=0.5, gamma=0.5, bias=False, mc_samples=0)
    args.update(kw)
    head = KalmanHead(1, 2, **args)
    head.A.fill_(1.0)
    head.M.copy_(torch.tensor([[1.0, -2.0]], dtype=D))
    return head, torch.tensor([[2.0]], dtype=D), torch.tensor([[1.0, 0.0]], dtype=D)


def test_defaults():
    h = KalmanHead(3, 2)
    assert (h.bias, h.mc_samples, h.predictive_noise, h.dtype, h.gamma_param, h.dim) == (True, 32, False, D, "log1m", 4)
    assert h.M.dtype == D and torch.equal(h.M, torch.zeros(4, 2, dtype=D))
    assert torch.equal(h.A, torch.eye(4, dtype=D))  # sigma_w2 = 1
    assert h.gamma.item() == pytest.approx(0.999, abs=1e-12)
    assert (h.beta.item(), h.sigma2.item(), h.sigma_w2.item()) == (1.0, 1.0, 1.0)
    assert h.psi.dtype == h.log_beta.dtype == h.log_s2.dtype == h.log_sw2.dtype == D
    assert h.psi.item() == pytest.approx(math.log(1e-3))
    h32 = KalmanHead(2, 2, sigma_w2=3.0, dtype=torch.float32)
    assert h32.M.dtype == h32.A.dtype == h32.psi.dtype == torch.float32
    assert torch.equal(h32.A, 3 * torch.eye(3))
    assert h32.sigma_w2.item() == pytest.approx(3.0)


def test_an_unknown_gamma_param_is_refused_with_the_choices():
    assert KalmanHead.GAMMA_PARAMS == ("log1m", "logit")
    with pytest.raises(ValueError, match=r"gamma_param must be one of \('log1m', 'logit'\), got 'tanh'"):
        KalmanHead(2, 2, gamma_param="tanh")


def test_log1m_and_logit_at_their_edges():
    assert _log1m(1.0) == -math.inf and _log1m(1.5) == -math.inf
    assert _log1m(0.75) == pytest.approx(math.log(0.25)) and _log1m(0.0) == 0.0
    assert _logit(1.0) == math.inf and _logit(1.5) == math.inf
    assert _logit(0.0) == -math.inf and _logit(-0.5) == -math.inf
    assert _logit(0.8) == pytest.approx(math.log(4.0)) and _logit(0.5) == 0.0


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.999, 1.0])
def test_both_parametrisations_give_back_the_initial_gamma(gamma):
    for param in KalmanHead.GAMMA_PARAMS:
        h = KalmanHead(2, 2, gamma=gamma, gamma_param=param)
        assert h.gamma.item() == pytest.approx(gamma, abs=1e-12), param
    lg = KalmanHead(2, 2, gamma=0.8, gamma_param="logit")
    assert lg.psi.item() == pytest.approx(math.log(4.0))
    with torch.no_grad():
        lg.psi.fill_(2.0)  # the logit: gamma = sigmoid(psi), not 1 - exp(psi)
    assert lg.gamma.item() == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_log1m_gamma_stays_in_the_unit_interval():
    h = KalmanHead(2, 2, gamma=0.5)
    assert h.psi.item() == pytest.approx(math.log(0.5))
    with torch.no_grad():
        h.psi.fill_(0.7)  # a step past psi = 0 would give gamma < 0: clamped to gamma = 0
    assert h.gamma.item() == 0.0
    with torch.no_grad():
        h.psi.fill_(-0.5)
    assert h.gamma.item() == pytest.approx(1 - math.exp(-0.5))


def test_scalars_are_exponentials_of_their_logs():
    h = KalmanHead(2, 2, sigma_w2=2.0, sigma2=0.5, beta=3.0)
    with torch.no_grad():
        h.log_beta.fill_(0.5), h.log_s2.fill_(-1.0), h.log_sw2.fill_(0.25)
    assert h.beta.item() == pytest.approx(math.exp(0.5))
    assert h.sigma2.item() == pytest.approx(math.exp(-1.0))
    assert h.sigma_w2.item() == pytest.approx(math.exp(0.25))


def test_phi_flattens_casts_and_appends_the_bias_feature():
    h = torch.arange(8, dtype=torch.float32).view(2, 2, 2)
    p = KalmanHead(4, 2).phi(h)
    assert p.dtype == D and p.shape == (2, 5)
    assert torch.equal(p, torch.tensor([[0, 1, 2, 3, 1], [4, 5, 6, 7, 1]], dtype=D))
    q = KalmanHead(4, 2, bias=False).phi(h)
    assert torch.equal(q, torch.arange(8, dtype=D).view(2, 4))


def test_prior_is_the_drifted_state_and_carries_no_gradient_by_default():
    head, _, _ = tiny()
    Mp, Ap = head.prior()
    assert torch.allclose(Mp, torch.tensor([[0.5, -1.0]], dtype=D), atol=1e-12)
    assert torch.allclose(Ap, torch.tensor([[1.75]], dtype=D), atol=1e-12)
    assert not Mp.requires_grad and not Ap.requires_grad  # gamma and sigma_w2 detached
    g = torch.tensor(0.0, dtype=D)
    Mp, Ap = head.prior(gamma=g)  # gamma given: the state is reset to the prior
    assert torch.equal(Mp, torch.zeros(1, 2, dtype=D)) and torch.allclose(Ap, torch.tensor([[2.0]], dtype=D))
    b = KalmanHead(1, 2, sigma_w2=2.0, gamma=0.5)  # with the bias: A- = gamma^2 A + (1 - gamma^2) sw2 I, 2 x 2
    b.A.copy_(torch.tensor([[1.0, 0.5], [0.5, 3.0]], dtype=D))
    _, Ap = b.prior()
    assert torch.allclose(Ap, torch.tensor([[0.25 + 1.5, 0.125], [0.125, 0.75 + 1.5]], dtype=D), atol=1e-12)


def test_latent_mean_and_variance_by_hand():
    head, phi, _ = tiny()
    mu, var = head.latent(phi)
    assert torch.allclose(mu, torch.tensor([[1.0, -2.0]], dtype=D), atol=1e-12)
    assert torch.allclose(var, torch.tensor([7.0], dtype=D), atol=1e-12)
    assert mu.requires_grad and var.requires_grad  # gamma and sigma_w2 learnable through the latent logits
    (dpsi,) = torch.autograd.grad(var.sum(), head.psi)
    # var = g^2 phi^2 A + (1 - g^2) sw2 phi^2, dvar/dg = 2 g phi^2 (A - sw2) = -4; dg/dpsi = -(1 - g) = -0.5
    assert dpsi.item() == pytest.approx(2.0)
    noisy, phi, _ = tiny(predictive_noise=True)
    assert torch.allclose(noisy.latent(phi)[1], torch.tensor([7.5], dtype=D), atol=1e-12)
    mu, var = head.latent(phi, gamma=torch.tensor(1.0, dtype=D))  # static: the stored posterior
    assert torch.allclose(mu, torch.tensor([[2.0, -4.0]], dtype=D)) and torch.allclose(var, torch.tensor([4.0], dtype=D))
    with torch.no_grad():
        head.A.fill_(-10.0)  # a numerically negative variance is clipped at 0
    assert head.latent(phi)[1].item() == 0.0
    two = torch.tensor([[2.0], [1.0]], dtype=D)
    assert torch.allclose(tiny()[0].latent(two)[1], torch.tensor([7.0, 1.75], dtype=D))  # per row


def test_deterministic_class_probabilities_are_the_masked_softmax_of_beta_mu():
    head, _, _ = tiny(beta=2.0)
    mu = torch.tensor([[1.0, -1.0], [0.0, 3.0]], dtype=D)
    var = torch.tensor([5.0, 1.0], dtype=D)  # ignored with no samples
    uniform = head.class_log_probs(mu * 0, var)  # nothing seen yet: every class allowed
    assert torch.allclose(uniform, torch.full((2, 2), math.log(0.5), dtype=D))
    assert torch.allclose(head.class_log_probs(mu, var), torch.log_softmax(2 * mu, -1))
    head.observe(torch.tensor([1]))
    lp = head.class_log_probs(mu, var)
    assert torch.isinf(lp[:, 0]).all() and (lp[:, 0] < 0).all() and torch.equal(lp[:, 1], torch.zeros(2, dtype=D))
    both = KalmanHead(1, 3, bias=False, mc_samples=0, beta=2.0)
    both.observe(torch.tensor([0, 2]))
    m3 = torch.tensor([[1.0, 5.0, -1.0]], dtype=D)
    expect = torch.log_softmax(torch.tensor([2.0, -2.0], dtype=D), -1)
    got = both.class_log_probs(m3, torch.ones(1, dtype=D))
    assert torch.allclose(got[0, [0, 2]], expect) and got[0, 1] == -math.inf
    got = both.class_log_probs(m3, torch.ones(1, dtype=D), beta=torch.tensor(0.5, dtype=D))
    assert torch.allclose(got[0, [0, 2]], torch.log_softmax(torch.tensor([0.5, -0.5], dtype=D), -1))


def test_monte_carlo_probabilities_follow_the_drawn_samples():
    head = KalmanHead(1, 3, bias=False, mc_samples=5, beta=1.5)
    head.observe(torch.tensor([0, 1]))
    mu = torch.tensor([[1.0, -0.5, 2.0], [0.0, 0.3, 0.0]], dtype=D)
    var = torch.tensor([4.0, 0.25], dtype=D)
    torch.manual_seed(3)
    got = head.class_log_probs(mu, var)
    torch.manual_seed(3)
    eps = torch.randn(5, 2, 3, dtype=D)
    f = 1.5 * (mu + var.sqrt()[:, None] * eps)
    p = torch.softmax(f[..., :2], -1).mean(0)  # mean over samples of the softmax over the seen classes
    assert torch.allclose(got[:, :2], p.log(), atol=1e-12)
    assert (got[:, 2] == -math.inf).all()
    # a sample count given explicitly overrides mc_samples; with zero variance every sample agrees
    one = head.class_log_probs(mu, torch.zeros(2, dtype=D), n_samples=1)
    assert torch.allclose(one[:, :2], torch.log_softmax(1.5 * mu[:, :2], -1), atol=1e-12)
    many = head.class_log_probs(mu, torch.zeros(2, dtype=D), n_samples=7)
    assert torch.allclose(many[:, :2], torch.log_softmax(1.5 * mu[:, :2], -1), atol=1e-12)
    det = head.class_log_probs(mu, var, n_samples=0)
    assert torch.allclose(det[:, :2], torch.log_softmax(1.5 * mu[:, :2], -1), atol=1e-12)
    torch.manual_seed(4)
    single = head.class_log_probs(mu, var, n_samples=1)  # one sample with variance: not the mean logits
    torch.manual_seed(4)
    e1 = torch.randn(1, 2, 3, dtype=D)
    assert torch.allclose(single[:, :2], torch.log_softmax(1.5 * (mu + var.sqrt()[:, None] * e1[0])[:, :2], -1), atol=1e-12)
    neg = head.class_log_probs(mu, var, n_samples=-1)  # a negative count is the deterministic rule too
    assert torch.allclose(neg[:, :2], torch.log_softmax(1.5 * mu[:, :2], -1), atol=1e-12)
    # the masked classes stay differentiable: the gradient reaches beta and is finite
    (gb,) = torch.autograd.grad(head.class_log_probs(mu, var)[:, :2].sum(), head.log_beta)
    assert torch.isfinite(gb)


def test_forward_is_float32_log_probabilities_of_the_prior_latent_logits():
    head, _, _ = tiny(beta=1.0)
    head.observe(torch.tensor([0, 1]))
    h = torch.tensor([[2.0]], dtype=torch.float32)
    out = head(h)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.log_softmax(torch.tensor([[1.0, -2.0]]), -1), atol=1e-6)


def test_gaussian_log_predictive_by_hand():
    head, phi, Y = tiny()
    lp = head.gaussian_log_predictive(phi, Y)
    S = 7.5
    expect = -0.5 * 4 / S - 2 * 0.5 * math.log(S) - 2 * 0.5 * math.log(2 * math.pi)
    assert lp.item() == pytest.approx(expect, abs=1e-12)
    # explicit gamma / noise variances replace the head's own
    lp = head.gaussian_log_predictive(phi, Y, gamma=torch.tensor(1.0, dtype=D), sigma2=torch.tensor(1.0, dtype=D),
                                      sigma_w2=torch.tensor(9.0, dtype=D))
    S, r = 4 * 1.0 + 1.0, [1 - 2.0, 0 + 4.0]  # phi^2 A + s2; Y - phi M
    expect = sum(-0.5 * ri ** 2 / S for ri in r) - math.log(S) - math.log(2 * math.pi)
    assert lp.item() == pytest.approx(expect, abs=1e-12)
    # two samples: S is 2 x 2 (phi phi^T terms), Y one column per class
    two = torch.tensor([[2.0], [1.0]], dtype=D)
    Y2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    Sm = 1.75 * two @ two.t() + 0.5 * torch.eye(2, dtype=D)
    R = Y2 - 0.5 * two @ head.M
    dist = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=D), Sm)
    assert head.gaussian_log_predictive(two, Y2).item() == pytest.approx(dist.log_prob(R.t()).sum().item(), abs=1e-10)
    # differentiable in gamma, the noise variances and the features
    phi = phi.clone().requires_grad_(True)
    g = torch.autograd.grad(head.gaussian_log_predictive(phi, Y), [head.psi, head.log_s2, head.log_sw2, phi])
    assert all(torch.isfinite(x).all() and x.abs().sum() > 0 for x in g)


def test_update_by_hand_and_joseph_form():
    for joseph in (False, True):
        head, phi, Y = tiny()
        phi.requires_grad_(True)
        head.update(phi, Y, joseph=joseph)
        assert torch.allclose(head.M, torch.tensor([[0.5, -1 + 14 / 15]], dtype=D), atol=1e-12), joseph
        assert torch.allclose(head.A, torch.tensor([[1.75 - 1.75 ** 2 * 4 / 7.5]], dtype=D), atol=1e-12), joseph
        assert not head.M.requires_grad and not head.A.requires_grad  # no autograd graph in the state
    # two samples, a 2-d feature: the posterior of joint Gaussian conditioning, symmetric, either form
    for joseph in (False, True):
        h = KalmanHead(2, 2, sigma_w2=1.5, sigma2=0.25, gamma=0.8, bias=False)
        h.A.copy_(torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=D))
        h.M.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]], dtype=D))
        P = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=D)
        Y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
        Mp = 0.8 * h.M.clone()
        Ap = 0.64 * h.A.clone() + 0.36 * 1.5 * torch.eye(2, dtype=D)
        S = P @ Ap @ P.t() + 0.25 * torch.eye(2, dtype=D)
        Kg = Ap @ P.t() @ torch.linalg.inv(S)
        h.update(P, Y, joseph=joseph)
        assert torch.allclose(h.M, Mp + Kg @ (Y - P @ Mp), atol=1e-12)
        assert torch.allclose(h.A, Ap - Kg @ P @ Ap, atol=1e-12)
        assert torch.equal(h.A, h.A.t())


def test_update_drifts_with_the_current_gamma_and_noise():
    head, phi, Y = tiny()
    with torch.no_grad():
        head.log_s2.fill_(math.log(1.5))  # S = 7 + 1.5
    head.update(phi, Y)
    assert torch.allclose(head.M, torch.tensor([[0.5, -1 + 2 * 3.5 / 8.5]], dtype=D), atol=1e-12)
    assert torch.allclose(head.A, torch.tensor([[1.75 - 1.75 ** 2 * 4 / 8.5]], dtype=D), atol=1e-12)


def test_one_hot_targets_in_the_filter_dtype():
    h = KalmanHead(2, 4, dtype=torch.float32)
    Y = h.one_hot(torch.tensor([3, 0]))
    assert Y.dtype == torch.float32 and torch.equal(Y, torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 0]]))
    assert KalmanHead(2, 3).one_hot(torch.tensor([1])).dtype == D


def test_forward_runs_in_the_filters_own_dtype_under_autocast():
    head = KalmanHead(3, 2, dtype=torch.float32, mc_samples=0, bias=False)
    g = torch.Generator().manual_seed(0)
    head.M.copy_(torch.randn(3, 2, generator=g))
    h = torch.randn(4, 3, generator=g)
    ref = head(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 run: the filter still computes in float32
        out = head(h)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(ref, torch.log_softmax(0.999 * h @ head.M, -1), atol=1e-6)
