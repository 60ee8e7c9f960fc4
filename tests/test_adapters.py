"""LoRA sets (peft) and prompt tokens: parameter counts, identity at init, switching, merging."""
import pytest
import torch
import torch.nn as nn

from cl.models.adapters import LoraSet, Prompt, PromptPool, detect_family, lora_targets
from cl.models.backbones.small import ResNetConfig, resnet18r
from cl.models.backbones.timm_models import SmallViTConfig, vit_tiny


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return vit_tiny(SmallViTConfig(depth=2, embed_dim=64, num_heads=2), (3, 32, 32))


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=32))


def _randomize(lora, name):
    with torch.no_grad():
        for p in lora.parameters(name):
            p.normal_(0, 0.5)


def test_lora_vit_counts_identity_switch_merge():
    torch.manual_seed(0)
    b = vit_tiny(SmallViTConfig(depth=2, embed_dim=64, num_heads=2), (3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y0 = b(x)
    lora = LoraSet(b, r=4)
    assert lora.family == "vit" and lora.trainable_parameters() == 0
    lora.add("t0")
    d, r, depth = 64, 4, 2
    expected = depth * (r * (d + 3 * d) + r * (d + d))  # qkv: D -> 3D, proj: D -> D; patch_embed.proj untouched
    assert lora.trainable_parameters("t0") == expected
    assert lora.trainable_parameters() == expected
    assert not any("patch_embed" in n for n, p in b.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.equal(b(x), y0)  # an untrained adapter is the identity
    _randomize(lora, "t0")
    with torch.no_grad():
        y_t0 = b(x)
    assert not torch.allclose(y_t0, y0)
    lora.add("t1")
    assert lora.active == "t1" and lora.trainable_parameters() == expected  # only the active adapter trains
    with torch.no_grad():
        assert torch.allclose(b(x), y0, atol=1e-6)
    _randomize(lora, "t1")
    with torch.no_grad():
        y_t1 = b(x)
    lora.switch("t0")
    with torch.no_grad():
        assert torch.allclose(b(x), y_t0, atol=1e-6)
        with lora.disabled():
            assert torch.allclose(b(x), y0, atol=1e-6)
        assert torch.allclose(b(x), y_t0, atol=1e-6)  # back on after the context
    lora.switch("t1")
    with torch.no_grad():
        assert torch.allclose(b(x), y_t1, atol=1e-6)
    lora.merge("t1")
    assert lora.names == ["t0"]
    with torch.no_grad():
        with lora.disabled():
            assert torch.allclose(b(x), y_t1, atol=1e-4)  # folded into the base weights
    sd = lora.state_dict("t0")
    assert sd and all(".t0." in k for k in sd)


def test_lora_bert_and_cnn_families():
    bert = tiny_bert()
    assert detect_family(bert) == "bert"
    lora = LoraSet(bert, r=2)
    lora.add("a")
    h, r, layers = 32, 2, 2
    assert lora.trainable_parameters("a") == layers * 2 * r * (h + h)  # query and value, D -> D
    ids = torch.randint(1, 50, (2, 7))
    lora2 = LoraSet(resnet18r(ResNetConfig(nf=4), (3, 16, 16)), r=2)
    assert lora2.family == "cnn"
    net = lora2.module
    with torch.no_grad():
        y0 = net(torch.ones(2, 3, 16, 16))
    lora2.add("a")
    convs = [m for n, m in resnet18r(ResNetConfig(nf=4), (3, 16, 16)).named_modules() if isinstance(m, nn.Conv2d)]
    exp = sum(2 * c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels * 2 for c in convs)
    assert lora2.trainable_parameters("a") == exp
    with torch.no_grad():
        assert torch.allclose(net(torch.ones(2, 3, 16, 16)), y0, atol=1e-6)
    assert bert(input_ids=ids).last_hidden_state.shape == (2, 7, 32)
    assert isinstance(lora_targets(bert, "bert"), list)


def test_lora_keeps_outside_modules_trainable(vit):
    from cl.models.model import Model, build_head

    torch.manual_seed(1)
    b = vit_tiny(SmallViTConfig(depth=1, embed_dim=32, num_heads=2), (3, 32, 32))
    m = Model(b, build_head("linear", b.out_dim, 5))
    lora = LoraSet(m.backbone, r=2)
    lora.add("x")
    head = sum(p.numel() for p in m.head.parameters())
    from cl.models.model import trainable_parameters

    assert trainable_parameters(m) == head + lora.trainable_parameters("x")
    with pytest.raises(KeyError):
        lora.switch("nope")


def test_prompts_and_pool(vit):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = vit(x)
        p = Prompt(3, vit.prompt_dim)
        assert p().shape == (3, 64) and p(2).shape == (2, 3, 64)
        with_p = vit(x, prompts=p())
        assert with_p.shape == base.shape and not torch.allclose(with_p, base)
        pooled = vit(x, prompts=p(2), pool="prompts")
        assert pooled.shape == (2, 64)
    pool = PromptPool(size=6, length=2, dim=vit.prompt_dim, top_k=3)
    P, idx, key_loss = pool(base)
    assert P.shape == (2, 6, 64) and idx.shape == (2, 3) and key_loss.requires_grad
    assert torch.equal(idx, pool.similarity(base).topk(3, dim=1).indices)
    P2, idx2, _ = pool(base, index=torch.tensor([1, 4]))
    assert P2.shape == (2, 2, 64) and idx2.tolist() == [[1], [4]]
    out = vit(x, prompts=P, pool="prompts")
    (out.sum() + key_loss).backward()
    assert pool.prompts.grad is not None and pool.keys.grad is not None
    with pytest.raises(ValueError):
        PromptPool(size=2, length=1, dim=4, top_k=3)


def test_peft_prompt_tuning_text():
    from cl.models.adapters import peft_prompt_tuning

    pm = peft_prompt_tuning(tiny_bert(), n_tokens=4)
    n = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert n == 4 * 32
    out = pm(input_ids=torch.randint(1, 50, (2, 5)), attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert out.last_hidden_state.shape == (2, 9, 32)
