"""Tests written from the mutation run of strategies/der.py and strategies/derpp.py (issue 19): the defaults
and their source, the bounds of the validation, which logits the CE terms see, and the step's objective as a
sum of its terms, each on a constructed case."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.core.registry import ConfigError
from strategies.der import DERConfig, mask_logits
from strategies.derpp import DERPPConfig

from test_baselines_replay import build


def test_defaults_are_mammoths_seq_cifar10_best_args():
    """mammoth utils/best_args.py (seq-cifar10, buffers 200/500): lr 0.03, alpha 0.3 (DER), alpha 0.1 and
    beta 0.5 (DER++), minibatch 32; buffer 500 in total."""
    c = DERConfig()
    assert (c.lr, c.buffer_size, c.replay_batch_size, c.alpha, c.ce_classes) == (0.03, 500, 32, 0.3, "all")
    p = DERPPConfig()
    assert (p.lr, p.buffer_size, p.replay_batch_size, p.alpha, p.beta) == (0.03, 500, 32, 0.1, 0.5)


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_validation_bounds(name):
    build(name, buffer_size=0, replay_batch_size=1)  # the smallest valid values
    for bad in ({"buffer_size": -1, "replay_batch_size": 1}, {"buffer_size": 0, "replay_batch_size": 0},
                {"buffer_size": 5, "replay_batch_size": 0}, {"buffer_size": -1, "replay_batch_size": 4}):
        with pytest.raises(ConfigError, match="buffer_size must be >= 0 and strategy.replay_batch_size >= 1"):
            build(name, **bad)
    with pytest.raises(ConfigError, match="ce_classes"):
        build(name, ce_classes="old")


def test_mask_logits_masks_unseen_classes_and_is_the_identity_without_a_masked_head():
    s = build("der", n_classes=4)
    s.model.observe(torch.tensor([1, 2]))
    raw = torch.arange(8.0).view(2, 4)
    got = mask_logits(s.model, raw)
    assert torch.equal(got[:, 1:3], raw[:, 1:3]) and torch.isinf(got[:, [0, 3]]).all()

    class Plain:
        head = torch.nn.Identity()

    assert mask_logits(Plain(), raw) is raw


@pytest.mark.parametrize("ce_classes", ["all", "seen"])
def test_loss_is_ce_plus_replay_term_with_the_chosen_classes(ce_classes):
    """loss = CE(chosen logits of x, y) + alpha * MSE(replayed logits, stored); 'all' keeps every output in
    the CE (mammoth), 'seen' only the classes observed so far."""
    s = build("der", n_classes=4, buffer_size=10, alpha=0.7, replay_batch_size=3, ce_classes=ce_classes)
    s.model.observe(torch.tensor([0, 1]))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        s.model.head.fc.bias.copy_(torch.tensor([0.0, 0.0, 3.0, -1.0]))  # unseen classes matter in 'all'
    raw = s.model.head.fc(x)
    ce_all, ce_seen = F.cross_entropy(raw, y), F.cross_entropy(raw[:, :2], y)
    assert not torch.allclose(ce_all, ce_seen)
    ce = ce_all if ce_classes == "all" else ce_seen
    loss, out = s.loss(x, y)  # empty buffer: the CE alone
    assert torch.allclose(loss, ce) and torch.allclose(out["logits"], raw) and not out["logits"].requires_grad
    s.buffer.add(x=torch.randn(3, 3), y=torch.zeros(3, dtype=torch.long), logits=torch.randn(3, 4))
    torch.manual_seed(3)
    loss, _ = s.loss(x, y)
    torch.manual_seed(3)
    mem = s.buffer.sample(3)
    want = ce + 0.7 * ((s.model.head.fc(mem["x"]) - mem["logits"]) ** 2).mean()
    assert torch.allclose(loss, want)


def test_derpp_label_replay_uses_the_chosen_classes_too():
    s = build("derpp", n_classes=4, buffer_size=10, alpha=0.0, beta=1.0, replay_batch_size=4, ce_classes="seen")
    s.model.observe(torch.tensor([0, 1]))
    with torch.no_grad():
        s.model.head.fc.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 5.0]))
    s.buffer.add(x=torch.randn(4, 3), y=torch.tensor([0, 1, 0, 1]), logits=torch.randn(4, 4))
    torch.manual_seed(4)
    got = s.replay_loss()
    torch.manual_seed(4)
    s.buffer.sample(4)
    mem = s.buffer.sample(4)
    assert torch.allclose(got, F.cross_entropy(s.model.head.fc(mem["x"])[:, :2], mem["y"]))
