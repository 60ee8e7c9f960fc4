"""Tests written from the mutation run of strategies/_closed_form.py (issue 19): the inert optimiser of the
closed-form strategies and the current-task cross-entropy of SLCA and InfLoRA (hand-computed, with and
without augmentation, on token ids whose padding is trimmed)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.strategy import Strategy
from cl.models.heads import IncrementalLinear
from strategies._closed_form import current_task_ce, inert_optimizer


def test_inert_optimiser_holds_one_zero_scalar_at_lr_zero():
    s = SimpleNamespace()
    opt = inert_optimizer(s)
    assert isinstance(opt, torch.optim.SGD)
    (g,) = opt.param_groups
    assert g["params"] == [s._dummy] and g["lr"] == 0.0
    assert s._dummy.shape == () and s._dummy.item() == 0.0 and s._dummy.requires_grad


class _Tokens(nn.Module):
    """Mean of embedded token ids; records the widths it was given."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 3)
        self.widths = []

    def forward(self, x):
        self.widths.append(x.shape[1])
        return self.emb(x).mean(1)


def _strategy(backbone, head, current, augment=None):
    s = SimpleNamespace(model=SimpleNamespace(backbone=backbone, head=head), current=current, augment=augment)
    s.augmented = lambda x: Strategy.augmented(s, x)  # the real method, on this stand-in
    return s


def test_current_task_ce_is_local_to_the_current_classes_of_the_unmasked_head():
    torch.manual_seed(0)
    head = IncrementalLinear(3, 5)  # nothing seen: the masked forward would be all -inf
    bb = _Tokens()
    x = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]])  # two padding columns in every row
    y = torch.tensor([3, 1])
    current = torch.tensor([False, True, False, True, False])
    got = current_task_ce(_strategy(bb, head, current), x, y)
    assert bb.widths == [2]  # padding trimmed
    logits = head.raw(bb.emb(x[:, :2]).mean(1))
    want = F.cross_entropy(logits[:, [1, 3]], torch.tensor([1, 0]))
    assert torch.allclose(got, want, atol=1e-6)


def test_current_task_ce_augments_when_the_run_has_an_augmentation():
    torch.manual_seed(0)
    head = IncrementalLinear(2, 3)
    bb = nn.Identity()
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    y = torch.tensor([0, 1])
    current = torch.tensor([True, True, False])
    got = current_task_ce(_strategy(bb, head, current, augment=lambda v: v * 2), x, y)
    want = F.cross_entropy(head.raw(x * 2)[:, :2], y)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, F.cross_entropy(head.raw(x)[:, :2], y))
