"""benchmarks/adapters.py: every method runs, both paths train the same parameters and take the same step."""
from __future__ import annotations

import math
import types

import pytest
import torch

from benchmarks import adapters as bench

TINY = ["--img", "32", "--depth", "1", "--batch", "2", "--rounds", "1", "--iters", "1", "--warmup", "0",
        "--threads", "1"]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_main_every_method_same_step(tmp_path, one_thread):
    out = tmp_path / "speed.md"
    rows = bench.main(TINY + ["--methods", *bench.METHODS, "--out", str(out)])
    assert [r["method"] for r in rows] == list(bench.METHODS)
    text = out.read_text()
    for r in rows:
        assert r["platform img/s"] > 0 and r["reference img/s"] > 0
        assert math.isclose(r["ratio"], r["platform img/s"] / r["reference img/s"])
        assert r["trainable"] == r["trainable_ref"] > 0
        # two steps from the same weights and seed: the same losses (the second one depends on the first
        # step's update of the trainable weights, so an adapter that is not in the forward would show)
        assert len(r["loss_platform"]) == 2
        for a, b in zip(r["loss_platform"], r["loss_reference"]):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), r["method"]
        assert f"| {r['method']} |" in text
    assert "<!-- cpu -->" in text and "Load average" in text and "peft" in text


def test_trainable_counts_by_hand(one_thread):
    """Depth 1, dim 192, 100 classes: the adapter's and SSF's parameter counts worked out by hand."""
    args = types.SimpleNamespace(model="vit_tiny_patch16_224", img=32, depth=1)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    head = 192 * 100 + 100
    plat, ref = bench.build_pair("adapter-bank", args, torch.device("cpu"), x, y, lambda: torch.autocast("cpu", enabled=False))
    assert plat.n_trainable == ref.n_trainable == head + (192 * 64 + 64) + (64 * 192 + 192)
    plat, ref = bench.build_pair("ssf", args, torch.device("cpu"), x, y, lambda: torch.autocast("cpu", enabled=False))
    # patch conv 192, norm1 192, qkv 576, proj 192, norm2 192, fc1 768, fc2 192, final norm 192; scale + shift
    assert plat.n_trainable == head + 2 * (192 * 6 + 576 + 768)


def test_same_step_catches_an_adapter_left_out(one_thread):
    """The check fails when the platform's adapter set is switched off (the bank's default before activate)."""
    args = types.SimpleNamespace(model="vit_tiny_patch16_224", img=32, depth=1)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    plat, ref = bench.build_pair("adapter-bank", args, torch.device("cpu"), x, y,
                                 lambda: torch.autocast("cpu", enabled=False))
    plat.extra.activate(None)
    lp, lr = bench.same_step(plat, ref)
    assert lp[0] == pytest.approx(lr[0], rel=1e-6)  # zero-init up-projection: identical at the start
    assert abs(lp[1] - lr[1]) > 1e-4  # after one update the reference's adapter changes the output


def test_gpu_mode_without_cuda_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--gpu", "--out", str(tmp_path / "x.md")]) is None
    assert "no CUDA" in capsys.readouterr().out
    assert not (tmp_path / "x.md").exists()


def test_write_section_keeps_the_other_mode(tmp_path):
    p = tmp_path / "r.md"
    bench.write_section(p, "cpu", "## CPU: one\n")
    bench.write_section(p, "gpu", "## GPU: two\n")
    bench.write_section(p, "cpu", "## CPU: three\n")
    t = p.read_text()
    assert t.startswith("# Adapter training speed")
    assert "three" in t and "two" in t and "one" not in t
    assert t.index("<!-- cpu -->") < t.index("<!-- gpu -->")  # replaced in place
