"""Mechanism tests for ER-ACE and UER (methods.md sections 1 and 2)."""
import torch
import torch.nn.functional as F

from cl.core.config import resolve, section_config
from cl.train.engine import build_model
from cl.core.registry import scenarios, strategies
from cl.core.strategy import RunInfo
from conftest import tiny


def make(name, backbone="mlp", scenario="gaussian", **cfg):
    """A strategy on a gaussian scenario (dim 16, 10 classes), built as the engine builds it."""
    resolved = resolve(tiny({"name": name, **cfg}, scenario=scenario, backbone=backbone))
    torch.manual_seed(0)
    sc = scenarios.get(resolved["scenario"]["name"]).obj(section_config(resolved, "scenario"), 0)
    cls = strategies.get(name).obj
    scfg = section_config(resolved, "strategy")
    model = build_model(cls, scfg, resolved, sc, torch.device("cpu"))
    s = cls(scfg, model, RunInfo(sc.n_classes, sc.input_shape, torch.device("cpu"), 0))
    s.setup()
    return s, sc


def head_weight(s):
    return s.model.head.weight


# -- ER-ACE ------------------------------------------------------------------------------------------

def test_er_ace_seen_but_absent_classes_get_no_gradient_from_the_incoming_batch():
    s, sc = make("er-ace")
    # learn classes 0..3 (they become "seen"), then an incoming batch with classes 4 and 5 only
    for c in range(0, 4, 2):
        x = torch.randn(10, 16)
        y = torch.tensor([c, c + 1] * 5)
        s.train_step(x, y)
    assert s.seen[:4].all() and not s.seen[4:].any()
    x, y = torch.randn(10, 16), torch.tensor([4, 5] * 5)
    s.model.observe(y)
    W = head_weight(s)
    s.model.zero_grad()
    s.incoming_loss(x, y).backward()
    g = W.grad
    assert g[:4].abs().max() == 0, "seen-but-absent classes must get no gradient from the incoming batch"
    assert g[4:6].abs().sum(1).gt(0).all(), "present classes get a gradient"
    # the same batch through plain CE (ER) does push the old classes' logits down
    s.model.zero_grad()
    F.cross_entropy(s.model(x), y).backward()
    assert W.grad[:4].abs().sum(1).gt(0).all()
    # and the replay term of ER-ACE uses all seen logits
    s.model.zero_grad()
    s.loss(x, y).backward()
    assert W.grad[:4].abs().sum() > 0


def test_er_ace_masks_present_classes_and_keeps_the_seen_set_explicit():
    s, _ = make("er-ace", buffer_size=20)
    # classes arrive out of index order: 7, then 2; the explicit set records exactly those
    s.train_step(torch.randn(4, 16), torch.tensor([7, 7, 7, 7]))
    s.train_step(torch.randn(4, 16), torch.tensor([2, 2, 2, 2]))
    assert s.seen.nonzero().flatten().tolist() == [2, 7]
    # incoming batch of class 2: class 7 is seen and absent -> no gradient; class 2 present -> gradient
    x, y = torch.randn(6, 16), torch.tensor([2] * 6)
    s.model.zero_grad()
    s.incoming_loss(x, y).backward()
    assert head_weight(s).grad[7].abs().max() == 0
    # (a single present class has a zero CE gradient only if it is the only unmasked logit)
    s.model.zero_grad()
    s.incoming_loss(x, torch.tensor([2, 2, 2, 7, 7, 7])).backward()
    assert head_weight(s).grad[[2, 7]].abs().sum(1).gt(0).all()


# -- UER ---------------------------------------------------------------------------------------------

def test_uer_head_is_bias_free():
    s, _ = make("uer")
    assert s.model.head.fc.bias is None


def test_uer_incoming_gradient_leaves_class_norms_unchanged_to_first_order_replay_changes_them():
    s, _ = make("uer", buffer_size=50)
    x, y = torch.randn(10, 16), torch.tensor([0, 1] * 5)
    s.train_step(x, y)  # fills the buffer
    x, y = torch.randn(10, 16), torch.tensor([2, 3] * 5)
    s.model.observe(y)
    W = head_weight(s)
    # d||W_c||^2 = 2 W_c . dW_c: the cosine (incoming) gradient is orthogonal to every row W_c
    s.model.zero_grad()
    s.incoming_loss(x, y).backward()
    radial = (W.grad * W).sum(1) / (W.grad.norm(dim=1) * W.norm(dim=1) + 1e-12)
    assert W.grad[2:4].norm(dim=1).gt(1e-4).all()
    assert radial.abs().max() < 1e-5, radial
    # a small SGD step along it changes the norms only to second order
    with torch.no_grad():
        lr = 1e-3
        n0 = W.norm(dim=1)
        n1 = (W - lr * W.grad).norm(dim=1)
        assert (n1 - n0).abs().max() < 10 * (lr * W.grad.norm(dim=1)).max() ** 2 / n0.min() + 1e-7
    # the replay term (dot-product logits) has a radial component: it changes the norms
    mem = s.buffer.sample(10)
    s.model.zero_grad()
    F.cross_entropy(s.model(mem["x"]), mem["y"]).backward()
    radial_r = (W.grad * W).sum(1)[:2]
    assert radial_r.abs().max() > 1e-4
    # the full loss = incoming (cosine) + replay (dot); plain CE on dot logits would be radial too
    s.model.zero_grad()
    F.cross_entropy(s.model(x), y).backward()
    assert (W.grad * W).sum(1)[2:4].abs().max() > 1e-4


def test_uer_cosine_vs_dot_product_inference():
    s, _ = make("uer")
    s.model.observe(torch.arange(10))
    with torch.no_grad():
        s.model.head.weight.mul_(torch.linspace(0.2, 5, 10)[:, None])  # very different class norms
    x = torch.randn(50, 16)
    h = s.model.features(x)
    W = s.model.head.weight
    dot = s.predict(x)
    assert torch.allclose(dot, h @ W.t(), atol=1e-5)
    s.cfg.infer = "cosine"
    cos = s.predict(x)
    ref = F.normalize(h, dim=1) @ F.normalize(W, dim=1).t() / s.cfg.tau
    assert torch.allclose(cos, ref, atol=1e-3)
    # rescaling a class weight changes the dot-product ranking but not the cosine one
    assert not torch.equal(dot.argmax(1), cos.argmax(1))


def test_uer_loss_is_cosine_on_incoming_and_dot_on_replay():
    s, _ = make("uer", buffer_size=20, tau=0.5)
    torch.manual_seed(1)
    xb, yb = torch.randn(10, 16), torch.tensor([0, 1] * 5)
    s.train_step(xb, yb)
    x, y = torch.randn(10, 16), torch.tensor([2, 3] * 5)
    s.model.observe(y)
    torch.manual_seed(5)
    total = s.loss(x, y)
    torch.manual_seed(5)
    mem = s.buffer.sample(10)
    h = s.model.features(x)
    W = s.model.head.weight
    cos = F.normalize(h, dim=1) @ F.normalize(W, dim=1).t() / 0.5
    ref = F.cross_entropy(s.model.head.mask(cos), y) + F.cross_entropy(s.model(mem["x"]), mem["y"])
    assert torch.allclose(total, ref, atol=1e-4)

