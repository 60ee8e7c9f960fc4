"""Tests written from the mutation run of strategies/packnet.py (issue 19): the defaults (the authors'),
prune_ratio's bounds, the magnitude pruning on hand-set weights (which weights are released, ties at the
cut-off, earlier tasks' weights untouched, the last task kept whole unless prune_last), the retraining pass
(epochs, batches of the largest batch seen, the preprocessing, lr * retrain_lr_factor, only the task's own
weights), what a training step may change, inference with the weights of tasks 0..t only (the current task
whole before it is packed), the reported fractions and the checkpointed state."""
from __future__ import annotations

import pytest
import torch
from test_mutation_task_il import (
    assert_batchnorm_trained_on_the_first_task_only,
    build_iso,
    exp_of,
)

from cl.core.registry import ConfigError
from cl.models.backbones.small import CNNConfig, SmallCNN
from strategies.packnet import PackNetConfig, prunable_layers

X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0], [2.0, 0.1, 0.4], [-0.5, 1.5, 1.0]])
L1, L2 = "backbone.net.1.weight", "backbone.net.3.weight"


def test_defaults_follow_the_authors_code():
    c = PackNetConfig()
    assert (c.prune_ratio, c.retrain_epochs, c.retrain_lr_factor, c.prune_last) == (0.5, 1, 0.1, False)


def test_prune_ratio_bounds():
    for ok in (0.0, 0.999):
        build_iso("packnet", prune_ratio=ok)
    for bad in (1.0, -0.01, 1.5):
        with pytest.raises(ConfigError, match=rf"strategy.prune_ratio={bad}: must be in \[0, 1\)"):
            build_iso("packnet", prune_ratio=bad)


def test_retraining_bounds():
    build_iso("packnet", retrain_epochs=0, retrain_lr_factor=1e-6)  # the smallest valid values
    for bad in ({"retrain_epochs": -1}, {"retrain_lr_factor": 0.0}, {"retrain_lr_factor": -0.1}):
        with pytest.raises(ConfigError, match="packnet: retrain_epochs must be >= 0 and retrain_lr_factor > 0"):
            build_iso("packnet", **bad)
    with pytest.raises(ConfigError, match="got retrain_epochs=-2, retrain_lr_factor=0.0"):
        build_iso("packnet", retrain_epochs=-2, retrain_lr_factor=0.0)


def test_layers_and_initial_state():
    s = build_iso("packnet")
    assert s.layers == [L1, L2] == prunable_layers(s.model)
    assert all(o.dtype == torch.int16 and not o.any() for o in s.owner.values())
    assert s.packed is False and s.batch_size == 1 and s.task == 0


def _randomise(s, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in s.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def _set(s, name, values):
    with torch.no_grad():
        dict(s.model.named_parameters())[name].copy_(torch.tensor(values, dtype=torch.float32).view_as(s.owner[name]))


def test_prune_releases_the_smallest_free_weights_and_gives_the_rest_to_the_task():
    s = build_iso("packnet", n_tasks=3, prune_ratio=0.5)
    w = [0.1 * (i + 1) * (-1) ** i for i in range(12)]  # |w| = 0.1 .. 1.2, signs alternating
    _set(s, L1, w)
    s.task = 0
    s.prune()
    o, p = s.owner[L1].view(-1), dict(s.model.named_parameters())[L1].view(-1)
    assert o.tolist() == [0] * 6 + [1] * 6  # the 6 largest magnitudes kept (k = round(0.5 * 12))
    assert torch.all(p[:6] == 0) and torch.allclose(p[6:], torch.tensor(w[6:]))
    # task 1 prunes only its own (free) weights: half of 6, here with a tie at the cut-off (released too)
    _set(s, L1, [0.5, -0.2, 0.3, 0.3, 0.9, 0.05] + [9.0] * 6)
    s.task = 1
    s.prune()
    assert o.tolist() == [2, 0, 0, 0, 2, 0] + [1] * 6
    assert p[:6].tolist() == pytest.approx([0.5, 0, 0, 0, 0.9, 0]) and torch.all(p[6:] == 9.0)
    # the other layer: 16 free weights at task 0, 8 released; at task 1 its 8 free weights are all zero
    # (released at task 0, not trained since): a tie at the cut-off releases them all
    o2 = s.owner[L2]
    assert int((o2 == 1).sum()) == 8 and int((o2 == 0).sum()) == 8


def test_a_single_released_weight():
    s = build_iso("packnet", n_tasks=3, prune_ratio=0.1)
    _set(s, L1, [float(i + 1) * (-1) ** i for i in range(12)])
    s.prune()  # round(0.1 * 12) = 1: the smallest magnitude only
    assert s.owner[L1].view(-1).tolist() == [0] + [1] * 11
    assert dict(s.model.named_parameters())[L1].view(-1)[0].item() == 0.0


def test_round_of_the_released_count():
    s = build_iso("packnet", n_tasks=3, prune_ratio=0.3)
    _set(s, L1, [float(i + 1) for i in range(12)])
    s.task = 0
    s.prune()  # round(0.3 * 12) = round(3.6) = 4 released
    assert s.owner[L1].view(-1).tolist() == [0] * 4 + [1] * 8


@pytest.mark.parametrize("prune_last,kept", [(False, 12), (True, 6)])
def test_the_last_task_is_not_pruned_unless_prune_last(prune_last, kept):
    s = build_iso("packnet", n_tasks=2, prune_last=prune_last)
    _set(s, L1, [float(i + 1) for i in range(12)])
    s.task = 1  # the last of 2
    s.prune()
    assert int((s.owner[L1] == 2).sum()) == kept and int((s.owner[L1] == 0).sum()) == 12 - kept
    s.task = 0  # the first of 2 is pruned either way
    s2 = build_iso("packnet", n_tasks=2, prune_last=prune_last)
    _set(s2, L1, [float(i + 1) for i in range(12)])
    s2.prune()
    assert int((s2.owner[L1] == 1).sum()) == 6


def test_prune_ratio_zero_keeps_every_free_weight():
    s = build_iso("packnet", n_tasks=3, prune_ratio=0.0)
    _set(s, L1, [float(i + 1) for i in range(12)])
    s.prune()
    assert torch.all(s.owner[L1] == 1) and torch.all(dict(s.model.named_parameters())[L1] != 0)


def _trained(s, task, classes, steps_bs=(4,)):
    y = torch.tensor([classes[i % len(classes)] for i in range(4)])
    s.before_experience(exp_of(X, y, classes, task))
    for bs in steps_bs:
        s.train_step(X[:bs], y[:bs], task)
    return y


def test_the_batch_size_is_the_largest_seen_and_a_boundary_resets_it():
    s = build_iso("packnet")
    _trained(s, 0, [0, 1], steps_bs=(2, 3, 1))
    assert s.batch_size == 3 and s.packed is False
    s.before_experience(exp_of(X, torch.tensor([2, 3, 2, 3]), [2, 3], 1))
    assert s.batch_size == 1 and s.packed is False


@pytest.mark.parametrize("epochs", [1, 2])  # 1: the default, the smallest count that retrains
def test_retraining_runs_epochs_over_the_data_in_batches_at_a_tenth_of_the_lr(epochs):
    s = build_iso("packnet", n_tasks=3, retrain_epochs=epochs, lr=0.2, momentum=0.5, retrain_lr_factor=0.25)
    _randomise(s)
    n = 7
    x = (torch.arange(n * 3).view(n, 3) * 10).to(torch.uint8)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    e = exp_of(x, y, [0, 1], 0)
    s.before_experience(e)
    s.train_step(x[:3].float() / 255, y[:3], 0)
    calls = []
    step = s._step

    def spy(xb, yb, t):
        calls.append((xb.clone(), yb.clone(), t))
        return step(xb, yb, t)

    s._step = spy
    before = {n_: p.detach().clone() for n_, p in s.model.named_parameters()}
    s.after_experience(e)
    assert s.packed
    assert [len(c[1]) for c in calls] == [3, 3, 1] * epochs  # epochs of ceil(7 / 3) batches
    assert all(c[2] == 0 for c in calls)
    for ep in (calls[3 * i:3 * i + 3] for i in range(epochs)):  # every sample once per epoch, preprocessed
        xs, ys = torch.cat([c[0] for c in ep]), torch.cat([c[1] for c in ep])
        order = xs[:, 0].argsort()
        assert torch.allclose(xs[order], x.float() / 255) and torch.equal(ys[order], y)
    g = s.optimizer.param_groups[0]
    assert g["lr"] == pytest.approx(0.05) and g["momentum"] == 0.5
    params = dict(s.model.named_parameters())
    for n_ in s.layers:  # only the task's kept weights changed; released ones are zero
        o = s.owner[n_]
        assert torch.all(params[n_][o == 0] == 0)
        assert not torch.equal(params[n_][o == 1], before[n_][o == 1])


def test_no_retraining_with_retrain_epochs_zero():
    s = build_iso("packnet", retrain_epochs=0)
    _trained(s, 0, [0, 1])
    opt = s.optimizer
    s._step = lambda *a: pytest.fail("no retraining step")
    s.after_experience(exp_of(X, torch.tensor([0, 1, 0, 1]), [0, 1], 0))
    assert s.optimizer is opt and s.packed


def test_a_later_task_trains_only_free_weights_and_no_bias():
    s = build_iso("packnet", n_tasks=3, retrain_epochs=0, lr=0.5, momentum=0.9, weight_decay=0.1)
    _randomise(s)
    params = dict(s.model.named_parameters())
    b0 = {n: p.detach().clone() for n, p in params.items() if n.endswith("bias") and n.startswith("backbone")}
    y = _trained(s, 0, [0, 1], steps_bs=(4, 4))
    assert all(not torch.equal(params[n], b) for n, b in b0.items())  # the first task trains the biases
    s.after_experience(exp_of(X, y, [0, 1], 0))
    before = {n: p.detach().clone() for n, p in params.items()}
    _trained(s, 1, [2, 3], steps_bs=(4, 4, 4))
    for n in s.layers:
        mine = s.owner[n] == 1
        assert torch.equal(params[n][mine], before[n][mine])  # task 0's weights: bitwise
        assert torch.all(params[n].grad[mine] == 0)
        assert not torch.equal(params[n][~mine], before[n][~mine])
    for n in b0:
        assert torch.equal(params[n], before[n]), n


def test_batchnorm_is_trained_on_the_first_task_only():
    s = build_iso("packnet", backbone=SmallCNN(CNNConfig(channels=2, blocks=1), (1, 4, 4)), input_shape=(1, 4, 4),
                  retrain_epochs=0)
    assert_batchnorm_trained_on_the_first_task_only(s, s.model.backbone.net[1], torch.randn(4, 1, 4, 4))


def test_inference_uses_the_weights_of_tasks_up_to_t_and_the_current_task_whole_before_packing():
    s = build_iso("packnet", n_tasks=4)
    s.model.observe(torch.arange(4))
    g = torch.Generator().manual_seed(1)
    params = dict(s.model.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=g))
        for n in s.layers:
            s.owner[n].copy_(torch.randint(0, 4, s.owner[n].shape, generator=g))

    def masked(t):
        ref = {n: p.detach().clone() for n, p in params.items()}
        for n in s.layers:
            o = s.owner[n]
            ref[n] = ref[n] * ((o >= 1) & (o <= t + 1))
        return torch.func.functional_call(s.model, ref, (X,))

    s.task, s.packed = 1, False
    with torch.no_grad():
        assert torch.equal(s.predict(X, 1), s.model(X))  # task 1 still training: every weight
        assert torch.allclose(s.predict(X, 0), masked(0))
        assert torch.allclose(s.predict(X, 2), masked(2))
        s.packed = True
        assert torch.allclose(s.predict(X, 1), masked(1))
        assert not torch.allclose(masked(1), s.model(X)) and not torch.allclose(masked(1), masked(0))
        assert not torch.allclose(masked(1), masked(2))


def test_reported_fractions_and_state_round_trip():
    s = build_iso("packnet")
    with torch.no_grad():
        s.owner[L1].view(-1)[:4] = 1  # 4 of 12
        s.owner[L2].view(-1)[:2] = 2  # 2 of 16
    assert s.extra_metrics() == {"weights_used": [0.3333, 0.125]}
    s.packed, s.task = True, 1
    st = s.extra_state()
    s2 = build_iso("packnet")
    s2.load_extra_state(st)
    assert s2.packed is True and s2.task == 1
    assert all(torch.equal(s2.owner[n], s.owner[n]) and s2.owner[n].dtype == torch.int16 for n in s.owner)
