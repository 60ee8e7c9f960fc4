"""Text data: MiniLM tokenisation, CLINC150 and user CSV/JSONL scenarios, and pretrained MiniLM
beating its random init on CLINC150."""
import json

import pytest
import torch

from cl.core.registry import ConfigError
from cl.models.text import PAD_ID, attention_mask, tokenize
from conftest import needs_shared


def test_tokenize_pads_with_zero():
    ids = tokenize(["hello world", "a much longer sentence than the first one"], max_length=8)
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    assert ids[0, -1] == PAD_ID and attention_mask(ids)[0].sum() == 4  # [CLS] hello world [SEP]
    assert tokenize(["hi"], max_length=32).shape == (1, 3)


@pytest.fixture(scope="module")
def clinc():
    from scenarios.text import Clinc150Config, clinc150

    return clinc150(Clinc150Config(train_per_class=4, test_per_class=3), 0)


@needs_shared("clinc150.json", "clinc150_domains.json")
def test_clinc150_scenario(clinc):
    assert len(clinc) == 10 and clinc.n_classes == 150 and clinc.modality == "text"
    assert all(len(e.classes) == 15 for e in clinc)
    assert clinc[1].classes == list(range(15, 30)) and len(clinc[0]) == 15 * 4
    assert len(clinc.class_names) == 150 and clinc.meta["domains"][0] == "banking"
    assert clinc[0].train_x.dtype == torch.long


@needs_shared("clinc150.json", "clinc150_domains.json")
def test_minilm_pretrained_beats_random_on_clinc150(clinc):
    from cl.models.backbones.text import MiniLMConfig, minilm

    sc = clinc[:3]  # 45 intents, 4 train / 3 test sentences each
    xtr = torch.cat([e.train_x for e in sc]); ytr = torch.cat([e.train_y for e in sc])
    xte = torch.cat([e.test_x for e in sc]); yte = torch.cat([e.test_y for e in sc])
    accs = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        b = minilm(MiniLMConfig(pretrained=pretrained), sc.input_shape)
        assert b.out_dim == 384 and b.family == "bert"
        with torch.inference_mode():
            ftr, fte = b(xtr), b(xte)
        mu = torch.stack([ftr[ytr == c].mean(0) for c in range(45)])
        accs[pretrained] = (torch.cdist(fte, mu).argmin(1) == yte).float().mean().item()
        if pretrained:
            with torch.inference_mode():  # prompt tokens (prefix embeddings) go through the same encoder
                p = torch.zeros(2, 384)
                assert b(xte[:3], prompts=p).shape == (3, 384)
                assert b(xte[:3], prompts=p, pool="prompts").shape == (3, 384)
    assert accs[True] > accs[False] + 0.15, accs
    assert accs[True] > 0.7, accs


def test_text_file_csv_and_jsonl(tmp_path):
    from scenarios.text import TextFileConfig, text_file

    rows = [(f"sample {i} about {lab}", lab) for lab in ("cats", "dogs", "fish", "birds") for i in range(10)]
    csvp = tmp_path / "d.csv"
    csvp.write_text("text,label\n" + "\n".join(f"{t},{lab}" for t, lab in rows))
    sc = text_file(TextFileConfig(path=str(csvp), n_tasks=2), 0)
    assert len(sc) == 2 and sc.n_classes == 4 and sc.modality == "text"
    assert sum(len(e) for e in sc) == 32 and sum(len(e.test_y) for e in sc) == 8
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"utt": t, "y": lab}) for t, lab in rows))
    sc2 = text_file(TextFileConfig(path=str(jl), text_column="utt", label_column="y",
                                   task_classes=[["dogs"], ["cats", "fish"]]), 0)
    assert [len(e.classes) for e in sc2] == [1, 2] and sc2.class_names[:1] == ["dogs"]
    with pytest.raises(ConfigError, match="no column"):
        text_file(TextFileConfig(path=str(jl)), 0)
    with pytest.raises(ConfigError, match="unknown labels"):
        text_file(TextFileConfig(path=str(csvp), task_classes=[["cows"]]), 0)


def test_clinc150_missing_root_names_paths(tmp_path):
    from scenarios.text import Clinc150Config, clinc150

    with pytest.raises(ConfigError, match=str(tmp_path)):
        clinc150(Clinc150Config(root=str(tmp_path)), 0)
