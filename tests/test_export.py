"""`bertpld export`: the exported directory loads in transformers and computes what our model computes."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from bertpld.checkpoint import save_checkpoint
from bertpld.config import PretrainConfig, load_config, save_config
from bertpld.data.tokenizer import train_tokenizer
from bertpld.errors import BertpldError
from bertpld.export import export_run
from bertpld.model import BertForPreTraining

transformers = pytest.importorskip("transformers")

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Progressive layer dropping skips whole transformer blocks during training.",
    "A model trained with fewer floating point operations can still reach good accuracy.",
    "Dogs and foxes are both animals, and the river flows quietly past the old mill.",
] * 20
PAIRS = [("the fox jumps", "over the dog"), ("layer dropping saves time", "and energy")]


@functools.cache
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=150)


def make_run(root: Path, norm: str, objective: str) -> tuple[Path, BertForPreTraining, object]:
    tok = tokenizer()
    run = root / f"run-{norm}-{objective}"
    run.mkdir()
    tok.save(str(run / "tokenizer.json"))
    model_layer = dict(preset="tiny", vocab_size=tok.get_vocab_size(), norm=norm, max_position_embeddings=64)
    cfg = load_config(
        PretrainConfig,
        None,
        {
            "model": model_layer,
            "data": {"objective": objective, "max_seq_len": 32},
            "pld": {"enabled": norm == "pre"},
        },
    )
    save_config(cfg, run / "config.json")
    torch.manual_seed(0)
    model = BertForPreTraining(cfg.model, nsp=objective == "mlm+nsp").eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a misnamed weight shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(run, 7, model, state={}, meta={}, keep=2)
    return run, model, tok


@pytest.mark.parametrize(
    "norm,objective,arch",
    [
        ("post", "mlm+nsp", "BertForMaskedLM"),
        ("post", "mlm", "BertForMaskedLM"),
        ("pre", "mlm+nsp", "RobertaPreLayerNormForMaskedLM"),
        ("pre", "mlm", "RobertaPreLayerNormForMaskedLM"),
    ],
)
def test_export_matches_ours(tmp_path: Path, norm: str, objective: str, arch: str) -> None:
    run, ours, tok = make_run(tmp_path, norm, objective)
    out = tmp_path / "hf"
    info = export_run(run, out)
    assert info["checkpoint"] == "step-000000007"
    assert (info["not_exported"] != []) == (norm == "pre" and objective == "mlm+nsp")

    theirs, loading = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    theirs.eval()
    assert type(theirs).__name__ == arch
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))

    texts = [TEXTS[0], TEXTS[1][:30], "unseen wordz xyzzy"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    for i, t in enumerate(texts):  # the exported tokenizer encodes as ours
        n = int(enc["attention_mask"][i].sum())
        assert enc["input_ids"][i, :n].tolist() == tok.encode(t).ids
    pair = hf_tok(*PAIRS[0])
    ref = tok.encode(*PAIRS[0])
    assert pair["input_ids"] == ref.ids and pair["token_type_ids"] == ref.type_ids

    ids, am = enc["input_ids"], enc["attention_mask"]
    tt = torch.zeros_like(ids)
    T = ids.size(1)
    positions = torch.arange(T).expand(len(texts), -1)
    with torch.no_grad():
        mine = ours(ids, tt, am, positions).mlm_logits[..., : tok.get_vocab_size()]
        hf_logits = theirs(input_ids=ids, attention_mask=am, token_type_ids=tt).logits
    real = am.bool()  # padding positions are not predictions (RoBERTa gives them another position id)
    assert hf_logits.shape == mine.shape
    torch.testing.assert_close(hf_logits[real], mine[real], atol=1e-4, rtol=0)

    if norm == "post" and objective == "mlm+nsp":  # NSP survives in BertForPreTraining
        full = transformers.BertForPreTraining.from_pretrained(str(out)).eval()
        with torch.no_grad():
            nsp = full(input_ids=ids, attention_mask=am, token_type_ids=tt).seq_relationship_logits
            torch.testing.assert_close(nsp, ours(ids, tt, am, positions).nsp_logits, atol=1e-4, rtol=0)


def test_export_errors(tmp_path: Path) -> None:
    run, _, _ = make_run(tmp_path, "post", "mlm")
    with pytest.raises(BertpldError, match="no checkpoint at step 3"):
        export_run(run, tmp_path / "x", step=3)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["vocab_size"] += 8
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BertpldError, match="tokens, but model.vocab_size is"):
        export_run(run, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bertpld.cli import app

    run, _, _ = make_run(tmp_path, "pre", "mlm")
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "hf"), "--checkpoint", "7"])
    assert res.exit_code == 0, res.output
    assert "RobertaPreLayerNormForMaskedLM" in res.output
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
