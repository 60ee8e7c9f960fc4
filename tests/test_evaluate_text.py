"""Evaluation of text test sets in length buckets (cl/train/evaluate.py) and CPU bf16 evaluation."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from cl.core.config import resolve, run_id
from cl.train.evaluate import evaluate, length_batches


def _ids(lengths, width):
    x = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.arange(1, n + 1) + 100 * i  # non-zero ids, distinct per row
    return x


def _padded_cost(batches, cost):
    return sum((stop - start) * w + cost for start, stop, w in batches)


def test_length_batches_sort_by_width_and_minimise_padding_plus_call_cost():
    lengths = [3] * 10 + [20] * 9 + [4] * 2
    x = _ids(lengths, 30)
    order, batches = length_batches(x, batch_size=512, call_cost=16)
    assert [lengths[i] for i in order.tolist()] == sorted(lengths)
    # the 3- and 4-token rows share a batch of width 4 (48 + 16 tokens: less than 30 + 16 + 8 + 16), the
    # 20-token rows get their own (merging them all would cost 21 x 20 + 16)
    assert batches == [(0, 12, 4), (12, 21, 20)]
    # a call cost larger than the padding saved merges everything into one batch of the longest width
    assert length_batches(x, 512, call_cost=1000)[1] == [(0, 21, 20)]
    # no call cost: one batch per distinct width
    assert length_batches(x, 512, call_cost=0)[1] == [(0, 10, 3), (10, 12, 4), (12, 21, 20)]
    # the batch size caps every batch and the cut is optimal: brute force over all cuts of the 3 groups
    _, small = length_batches(x, batch_size=5, call_cost=16)
    assert all(stop - start <= 5 for start, stop, _ in small)
    assert sum(stop - start for start, stop, _ in small) == len(lengths)
    import itertools
    groups = [(0, 10, 3), (10, 12, 4), (12, 21, 20)]
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=2):
        parts, cur = [], [groups[0]]
        for g, c in zip(groups[1:], cuts):
            if c:
                parts.append(cur); cur = [g]
            else:
                cur.append(g)
        parts.append(cur)
        bs = [(i, min(i + 5, p[-1][1]), p[-1][2]) for p in parts for i in range(p[0][0], p[-1][1], 5)]
        best = min(best, _padded_cost(bs, 16))
    assert _padded_cost(small, 16) == best


class _Model(nn.Module):
    """Logits from the real tokens only (padding-invariant): class = (sum of ids) mod 3."""

    def forward(self, x):
        return nn.functional.one_hot(x.sum(1) % 3, 3).float()


class _Strategy:
    def __init__(self):
        self.model, self.widths, self.autocast = _Model(), [], []

    def predict(self, x, t=None):
        self.widths.append(x.shape[1])
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.model(x)


def test_text_evaluation_in_length_buckets_gives_the_same_accuracy_and_trims_padding():
    lengths = [2, 30, 3, 2, 4, 25, 3, 2, 3, 28, 2, 3, 4, 2, 3]
    x = _ids(lengths, 32)
    y = x.sum(1) % 3
    y[::4] = (y[::4] + 1) % 3  # some wrong labels: accuracy is not 1
    exps = [SimpleNamespace(test_x=x, test_y=y, task_id=0), SimpleNamespace(test_x=x[:7], test_y=y[:7], task_id=1)]
    plain, bucketed = _Strategy(), _Strategy()
    a = evaluate(plain, exps, lambda v: v, 512, False, "cpu")
    b = evaluate(bucketed, exps, lambda v: v, 512, False, "cpu", by_length=True)
    assert a == b and 0 < a[0] < 1
    assert plain.widths == [32, 32]
    assert max(bucketed.widths) == 30 and min(bucketed.widths) <= 4  # short utterances no longer pay for the longest
    assert not any(bucketed.autocast)


def test_cpu_bf16_evaluation_runs_under_autocast_only_when_asked():
    x = _ids([3, 4, 5], 8)
    exps = [SimpleNamespace(test_x=x, test_y=x.sum(1) % 3, task_id=0)]
    s = _Strategy()
    assert evaluate(s, exps, lambda v: v, 512, False, "cpu", cpu_bf16=True) == [1.0]
    assert s.autocast == [True]
    assert not torch.is_autocast_enabled("cpu")


# every field added after results were recorded, at its default, leaves the run ids of older configs as they were
IMPLICIT_CASES = [("protocol", "eval_amp", "er", True), ("strategy", "prompt_lr", "l2p", 1e-4),
                  ("scenario", "mean", "er", [0.5] * 3), ("scenario", "std", "er", [2.0] * 3),
                  ("strategy", "head_tau", "er", 0.1), ("strategy", "mask_unseen", "er", False),
                  ("strategy", "cutmix_prob", "gdumb", 0.5), ("strategy", "cutmix_alpha", "gdumb", 2.0),
                  ("strategy", "fit_clip", "gdumb", 10.0), ("strategy", "exclude_current", "er", True),
                  ("strategy", "project_from", "agem", "second_experience")]


def test_every_implicit_field_is_covered():
    from cl.core.config import ID_IMPLICIT_FIELDS

    assert {(sec, f) for sec, fields in ID_IMPLICIT_FIELDS.items() for f in fields} == \
        {(sec, f) for sec, f, _, _ in IMPLICIT_CASES}


@pytest.mark.parametrize("section,field,strategy,other", IMPLICIT_CASES)
def test_a_later_field_at_its_default_keeps_run_ids_and_a_change_changes_them(section, field, strategy, other):
    from cl.core.config import ID_IMPLICIT_FIELDS

    base = {"strategy": strategy, "scenario": "split-mnist", "backbone": "mlp", "seed": 0}
    if strategy == "l2p":
        base.update(scenario="clinc150", backbone="minilm")
    if section == "scenario":  # the normalisation fields of the image datasets (split-mnist's config has none)
        base.update(scenario="split-cifar10", backbone="resnet18r")
    default = resolve(base)
    assert default[section][field] == ID_IMPLICIT_FIELDS[section][field]
    legacy = {k: (dict(v) if isinstance(v, dict) else v) for k, v in default.items()}
    del legacy[section][field]  # a config from before the field existed
    assert run_id(default) == run_id(legacy)
    name = {"strategy": {"name": strategy}, "scenario": {"name": base["scenario"]}}.get(section, {})
    changed = {**base, section: {**name, field: other}}
    assert run_id(resolve(changed)) != run_id(default)