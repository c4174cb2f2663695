"""A pre-training run -> a directory that Hugging Face `transformers` loads offline.

    DIR/config.json              transformers config of the exact target class (see bertpld.hf)
    DIR/model.safetensors        weights renamed through bertpld.hf's table
    DIR/tokenizer.json           the run's tokenizer, unchanged
    DIR/tokenizer_config.json    special tokens, generic fast-tokenizer class
    DIR/bertpld_export.json      provenance: run, checkpoint step, target class, what was left out

Then::

    from transformers import AutoModelForMaskedLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(DIR)
    model = AutoModelForMaskedLM.from_pretrained(DIR)
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from bertpld import hf
from bertpld.atomic import atomic_dir
from bertpld.checkpoint import find_checkpoint, load_model_weights, load_run_config
from bertpld.data.tokenizer import load_tokenizer
from bertpld.errors import BertpldError

SPECIAL = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def export_run(run_dir: str | Path, out: str | Path, step: int | None = None) -> dict:
    """Write checkpoint `step` (latest if None) of `run_dir` to `out` atomically; returns the provenance."""
    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir, step)
    cfg, state = load_run_config(run_dir), load_model_weights(ckpt)
    nsp = cfg.data.objective == "mlm+nsp"
    tok_path = run_dir / "tokenizer.json"
    tok = load_tokenizer(tok_path, field="run tokenizer")  # BERT's special tokens checked there
    ids = {name: tok.token_to_id(token) for name, token in SPECIAL.items()}
    if tok.get_vocab_size() != cfg.model.vocab_size:
        raise BertpldError(
            f"{tok_path}: {tok.get_vocab_size()} tokens, but model.vocab_size is {cfg.model.vocab_size}"
        )

    weights = hf.to_hf(state, cfg.model, nsp, pad_token_id=ids["pad_token"])
    config = hf.hf_config(
        cfg.model,
        nsp,
        pad_token_id=ids["pad_token"],
        bos_token_id=ids["cls_token"],
        eos_token_id=ids["sep_token"],
    )
    dropped = sorted(set(state) - {e.ours for e in hf.name_table(cfg.model, nsp)})
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.model.max_position_embeddings,
        "padding_side": "right",
        "model_input_names": [
            "input_ids",
            "token_type_ids",
            "attention_mask",
        ],  # RoBERTa-style position ids equal ours only with right padding
        **SPECIAL,
    }
    info = {
        "run": str(run_dir.resolve()),
        "checkpoint": ckpt.name,
        "architecture": hf.hf_architecture(cfg.model, nsp),
        "norm": cfg.model.norm,
        "pld": cfg.pld.enabled,
        "not_exported": dropped,
        "note": (
            "pooler and NSP head have no Pre-LN counterpart in transformers"
            if dropped
            else "every weight exported"
        ),
    }
    with atomic_dir(out) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "tokenizer.json").write_bytes(tok_path.read_bytes())
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        (tmp / "bertpld_export.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
