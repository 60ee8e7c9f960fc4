"""Tests written from the mutation run of strategies/sprompts.py (issue 19): the official defaults, one prompt per
task of ``length`` tokens drawn with ``init_std``, the prompted and un-prompted features, and the parameters each
task trains.  Tiny ViTs (16 x 16 images, 4 patches)."""
from __future__ import annotations

import pytest
import torch

from cl.core.registry import ConfigError, backbones
from cl.models.backbones import build_backbone
from strategies.sprompts import SPromptsConfig

from test_strategies2_mechanism import make_strategy
from tiny_prompt_models import SHAPE, scenario, vit


def test_defaults_are_the_official_code():
    c = SPromptsConfig()
    assert (c.lr, c.optimizer, c.momentum, c.weight_decay, c.length) == (0.01, "sgd", 0.9, 2e-4, 10)
    assert (c.key_metric, c.train_eval_mode, c.init_std) == ("l1", True, 0.02)
    s = make_strategy("sprompts", vit(), scenario())
    assert len(s.model.experts) == 2 and s.model.experts[0].tokens.shape == (10, 16)
    torch.manual_seed(0)
    big = make_strategy("sprompts", vit(), scenario(), length=200)
    tokens = torch.cat([e.tokens.detach().flatten() for e in big.model.experts])
    assert float(tokens.std()) == pytest.approx(0.02, rel=0.1) and abs(float(tokens.mean())) < 0.005
    opt = s.optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"], opt.param_groups[0]["weight_decay"]) == (0.01, 0.9, 2e-4)


def test_init_std_and_length_are_passed_to_every_prompt():
    s = make_strategy("sprompts", vit(), scenario(), length=300, init_std=0.5)
    for e in s.model.experts:
        assert e.tokens.shape == (300, 16) and float(e.tokens.std()) == pytest.approx(0.5, rel=0.1)
    assert not torch.equal(s.model.experts[0].tokens, s.model.experts[1].tokens)


def test_a_backbone_without_prompt_tokens_is_a_config_error():
    mlp = build_backbone("mlp", backbones.get("mlp").config(hidden=8), SHAPE)
    with pytest.raises(ConfigError, match="sprompts needs a backbone with prompt tokens .a ViT or minilm.; MLP.* has none"):
        make_strategy("sprompts", mlp, scenario())


def test_expert_features_are_the_tasks_prompted_forward_and_the_query_is_unprompted():
    s = make_strategy("sprompts", vit(), scenario(), init_std=1.0)
    m = s.model.eval()
    x = torch.rand(3, *SHAPE) * 2 - 1
    with torch.no_grad():
        for t in (0, 1):
            want = m.backbone(x, prompts=m.experts[t].tokens)
            assert torch.allclose(s.expert_features(t, x), want, atol=1e-6)
        assert not torch.allclose(s.expert_features(0, x), s.expert_features(1, x), atol=1e-4)
        assert torch.allclose(s.query_features(x), m.backbone(x), atol=1e-6)
        assert not torch.allclose(s.query_features(x), s.expert_features(0, x), atol=1e-4)
    assert [id(p) for p in s.expert_parameters(1)] == [id(s.model.experts[1].tokens)]
    assert s.expert_size(0) == 10 * 16
