"""Classification heads and the nearest-class-mean head on hand-computed cases (issue 19 mutation testing):
masking of unseen classes, cosine logits with their epsilon and temperature, exact running class means
whatever the batching, both scoring rules and the scale."""
import math

import pytest
import torch

from cl.core.registry import ConfigError
from cl.models.heads import HEADS, CosineHead, IncrementalLinear, MaskedHead, cosine_logits, masked_cross_entropy
from cl.models.prototypes import METRICS, PrototypeHead

NEG_INF = float("-inf")


# -- heads -----------------------------------------------------------------------------------------

def test_masked_head_marks_observed_classes_and_masks_only_the_others():
    head = MaskedHead(4)
    assert head.seen.tolist() == [False] * 4 and head.seen.dtype == torch.bool
    head.observe(torch.tensor([2, 0, 2]))
    assert head.seen.tolist() == [True, False, True, False]
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]])
    out = head.mask(logits)
    assert out.tolist() == [[1.0, NEG_INF, 3.0, NEG_INF], [-1.0, NEG_INF, -3.0, NEG_INF]]
    assert logits[0, 1] == 2.0  # not in place
    assert "seen" in head.state_dict()  # a buffer: saved and restored with the model


def test_incremental_linear_is_the_linear_layer_on_seen_classes():
    torch.manual_seed(0)
    head = IncrementalLinear(3, 5)
    assert head.weight is head.fc.weight and head.weight.shape == (5, 3) and head.fc.bias is not None
    h = torch.randn(4, 3)
    assert torch.isinf(head(h)).all()  # nothing seen yet
    head.observe(torch.tensor([1, 4]))
    out, ref = head(h), head.fc(h)
    assert torch.equal(out[:, [1, 4]], ref[:, [1, 4]])
    assert (out[:, [0, 2, 3]] == NEG_INF).all()
    assert IncrementalLinear(3, 5, bias=False).fc.bias is None


def test_cosine_logits_values_and_epsilon():
    h = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    out = cosine_logits(h, w)
    assert out[0].tolist() == pytest.approx([0.6, 0.8, -0.6], abs=1e-6)
    assert out[1].tolist() == [0.0, 0.0, 0.0]  # the epsilon keeps a zero feature finite
    # the epsilon is added to the norms: a feature of norm 1e-6 is scaled by 1e-6 / (1e-6 + 1e-6)
    tiny = cosine_logits(torch.tensor([[1e-6, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(tiny) == pytest.approx(0.5, rel=1e-3)
    assert float(cosine_logits(torch.tensor([[1e-6, 0.0]]), torch.tensor([[1.0, 0.0]]), eps=1e-9)) == pytest.approx(
        1 / (1 + 1e-3), rel=1e-4)
    assert float(cosine_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([[1e-6, 0.0]]))) == pytest.approx(0.5, rel=1e-3)


def test_cosine_head_divides_the_cosine_by_the_temperature():
    head = CosineHead(2, 3)
    assert head.tau == 0.09 and head.weight.shape == (3, 2) and isinstance(head.weight, torch.nn.Parameter)
    assert head.weight.abs().sum() > 0  # initialised, not left empty
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    head.observe(torch.tensor([0, 2]))
    out = head(torch.tensor([[2.0, 0.0]])).detach()
    assert out[0, 0] == pytest.approx(1 / 0.09, rel=1e-5)
    assert out[0, 2] == pytest.approx(2 ** -0.5 / 0.09, rel=1e-5)
    assert out[0, 1] == NEG_INF
    assert CosineHead(2, 3, tau=0.5).tau == 0.5


def test_kaiming_init_bound_of_the_cosine_head():
    torch.manual_seed(0)
    head = CosineHead(400, 50)
    bound = 1 / math.sqrt(400)  # kaiming_uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.95 * bound


def test_heads_registry():
    assert HEADS == {"linear": IncrementalLinear, "cosine": CosineHead}


def test_strategy_head_tau_sets_the_cosine_temperature_and_is_refused_elsewhere():
    from types import SimpleNamespace as NS

    from cl.models.model import head_of

    torch.manual_seed(0)
    head = head_of(NS(head="cosine", head_tau=0.1), 3, 2)  # AML's distLinear: scale 10
    head.observe(torch.tensor([0, 1]))
    h = torch.randn(4, 3)
    assert torch.allclose(head(h), 10.0 * cosine_logits(h, head.weight))
    assert head_of(NS(head="cosine", head_tau=None), 3, 2).tau == 0.09  # unset: the head's default
    assert isinstance(head_of(NS(head="linear"), 3, 2), IncrementalLinear)
    with pytest.raises(ConfigError, match="head_tau=0.1 is the temperature of the cosine head: set strategy.head=cosine"):
        head_of(NS(head="linear", head_tau=0.1), 3, 2)
    with pytest.raises(ConfigError, match="head_tau must be > 0"):
        head_of(NS(head="cosine", head_tau=0.0), 3, 2)


def test_masked_cross_entropy_is_cross_entropy_over_the_seen_classes():
    logits = torch.tensor([[2.0, NEG_INF, 0.5], [0.1, NEG_INF, 1.0]], dtype=torch.bfloat16)
    y = torch.tensor([0, 2])
    loss = masked_cross_entropy(logits, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    seen = logits.float()[:, [0, 2]]
    ref = torch.nn.functional.cross_entropy(seen, torch.tensor([0, 1]))
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)


# -- nearest-class-mean head --------------------------------------------------------------------------

def test_running_means_are_exact_whatever_the_batching():
    torch.manual_seed(0)
    h, y = torch.randn(12, 3), torch.tensor([0, 1, 0, 2, 1, 0, 0, 2, 1, 1, 0, 2])
    one, many = PrototypeHead(3, 4), PrototypeHead(3, 4)
    one.update(h, y)
    for i in range(0, 12, 5):
        many.update(h[i:i + 5], y[i:i + 5])
    hn = h / h.norm(dim=1, keepdim=True)
    want = torch.stack([hn[y == c].mean(0) for c in range(3)])
    for head in (one, many):
        assert head.sums.dtype == torch.float64 and head.counts.tolist() == [5.0, 4.0, 3.0, 0.0]
        assert torch.allclose(head.means[:3], want, atol=1e-6)
        assert head.means.dtype == torch.float32
        assert head.means[3].tolist() == [0.0, 0.0, 0.0]  # no sample: zero, not NaN
        assert head.seen.tolist() == [True, True, True, False]


def test_raw_feature_means_without_normalisation_and_flattened_inputs():
    head = PrototypeHead(4, 2, normalize=False)
    head.update(torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[3.0, 0.0], [1.0, 0.0]]]), torch.tensor([1, 1]))
    assert head.means[1].tolist() == [2.0, 1.0, 2.0, 2.0]


def test_euclidean_scores_are_minus_the_distance_to_the_means_of_normalised_features():
    head = PrototypeHead(2, 3, metric="euclidean", normalize=True)
    head.update(torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 1]))  # means (1,0) and (0,1)
    out = head(torch.tensor([[3.0, 0.0], [1.0, 1.0]]))
    assert out[0, :2].tolist() == pytest.approx([0.0, -math.sqrt(2)], abs=1e-6)
    d = math.sqrt((1 - 2 ** -0.5) ** 2 + 0.5)
    assert out[1, :2].tolist() == pytest.approx([-d, -d], abs=1e-6)
    assert (out[:, 2] == NEG_INF).all()
    raw = PrototypeHead(2, 2, normalize=False)
    raw.update(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert float(raw(torch.tensor([[5.0, 4.0]]))[0, 0]) == pytest.approx(-5.0)


def test_cosine_scores_and_scale():
    head = PrototypeHead(2, 2, metric="cosine", normalize=False, scale=10.0)
    head.update(torch.tensor([[4.0, 0.0], [2.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0, 1]))
    assert head.means.tolist() == [[3.0, 0.0], [0.0, 3.0]]
    out = head(torch.tensor([[1.0, 1.0], [0.0, -2.0]]))
    assert out.tolist() == [[pytest.approx(10 * 2 ** -0.5, rel=1e-5)] * 2, [0.0, pytest.approx(-10.0, rel=1e-5)]]
    assert PrototypeHead(2, 2).scale == 1.0 and PrototypeHead(2, 2).metric == "euclidean"


def test_unknown_metric_is_a_config_error_naming_the_choices():
    assert METRICS == ("euclidean", "cosine")
    with pytest.raises(ConfigError, match="cosine"):
        PrototypeHead(2, 2, metric="cosin")


def test_prototype_update_keeps_no_autograd_graph():
    head = PrototypeHead(2, 2)
    h = torch.randn(3, 2, requires_grad=True)
    head.update(h * 3, torch.tensor([0, 1, 1]))
    assert not head.sums.requires_grad and head.sums.grad_fn is None and not head.means.requires_grad


def test_mask_unseen_false_scores_every_class_in_training_and_at_test():
    from types import SimpleNamespace as NS

    import torch.nn as nn

    from cl.core.strategy import RunInfo
    from cl.models.model import check_mask_unseen
    from strategies.er import ER, ERConfig

    class Body(nn.Identity):
        out_dim = 3

    grads = {}
    for mask in (True, False):
        cfg = ERConfig(mask_unseen=mask, buffer_size=4)
        torch.manual_seed(0)
        model = ER.build_model(cfg, Body(), NS(n_classes=4))
        check_mask_unseen(model, cfg, "er")  # the linear head takes the setting: no error
        s = ER(cfg, model, RunInfo(n_classes=4, input_shape=(3,), device=torch.device("cpu"), seed=0))
        s.setup()
        x, y = torch.randn(6, 3), torch.tensor([0, 1] * 3)
        model.observe(y)
        out = model(x)
        assert torch.isinf(out[:, 2:]).all() == mask and torch.isfinite(out[:, :2]).all()
        s.loss(x, y).backward()
        grads[mask] = model.head.fc.weight.grad[2:].abs().sum().item()
    # masked: the classes not seen get no gradient; a fixed head pushes their logits down
    assert grads[True] == 0.0 and grads[False] > 0.0


def test_mask_unseen_false_is_refused_for_a_strategy_with_its_own_head():
    from types import SimpleNamespace as NS

    import torch.nn as nn

    from cl.models.model import check_mask_unseen

    model = nn.Module()
    model.head = PrototypeHead(3, 4)
    with pytest.raises(ConfigError, match="strategy.mask_unseen=false: strategy 'ncm' scores classes with its own head"):
        check_mask_unseen(model, NS(mask_unseen=False), "ncm")
    check_mask_unseen(model, NS(mask_unseen=True), "ncm")  # the default: nothing to check
