"""The one name table between our parameters and Hugging Face `transformers`, in both directions.

Two exact targets, chosen by the block arrangement:

- 'post' -> BERT (`BertForPreTraining` with NSP, `BertForMaskedLM` without): the same function.
- 'pre'  -> RoBERTa-PreLayerNorm (`RobertaPreLayerNormForMaskedLM`): embeddings with LayerNorm,
  blocks with LayerNorm on each sublayer input (attention.LayerNorm, intermediate.LayerNorm), a
  final LayerNorm, and the BERT MLM head: exactly our 'pre' model. Its one difference is
  positions: RoBERTa numbers real tokens from pad_token_id + 1 and gives padding tokens the
  position pad_token_id, so its position table is ours shifted down by `pad_token_id + 1` rows
  (the rows below are never used by a real token). With right padding (as our data and
  tokenizer produce) every real token sees the same position embedding as in our model. No
  transformers class has Pre-LN blocks with an NSP head, so the pooler and NSP weights of a
  'pre' model are not exported.

Transforms besides renaming: our fused Q/K/V projection is the concatenation of HF's
query/key/value (dim 0); our vocabulary is padded to a multiple of 8 and HF's is not (rows
beyond vocab_size are dropped on export, zero-filled on load). The MLM decoder is tied to the
word embeddings on both sides, so it has no entry of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bertpld.config import ModelConfig
from bertpld.errors import BertpldError


@dataclass(frozen=True)
class Entry:
    ours: str
    hf: tuple[str, ...]
    """One HF name, or several concatenated along dim 0 (our fused QKV)."""
    kind: str = "copy"
    """'copy'; 'vocab': dim 0 is the (padded on our side) vocabulary; 'position': HF rows offset."""


def hf_architecture(cfg: ModelConfig, nsp: bool) -> str:
    """The transformers class computing exactly what our model computes (see module docstring)."""
    if cfg.norm == "post":
        return "BertForPreTraining" if nsp else "BertForMaskedLM"
    return "RobertaPreLayerNormForMaskedLM"


def name_table(cfg: ModelConfig, nsp: bool) -> list[Entry]:
    """Every (our name, HF names) pair for the HF class `hf_architecture(cfg, nsp)`."""
    post = cfg.norm == "post"
    base = "bert" if post else "roberta_prelayernorm"
    table: list[Entry] = [
        Entry("bert.embeddings.word.weight", (f"{base}.embeddings.word_embeddings.weight",), "vocab"),
        Entry(
            "bert.embeddings.position.weight",
            (f"{base}.embeddings.position_embeddings.weight",),
            "copy" if post else "position",
        ),
        Entry("bert.embeddings.token_type.weight", (f"{base}.embeddings.token_type_embeddings.weight",)),
    ]
    pairs = [("bert.embeddings.norm", f"{base}.embeddings.LayerNorm")]
    for i in range(cfg.num_layers):
        ours, hf = f"bert.encoder.blocks.{i}", f"{base}.encoder.layer.{i}"
        for p in ("weight", "bias"):
            qkv = tuple(f"{hf}.attention.self.{n}.{p}" for n in ("query", "key", "value"))
            table.append(Entry(f"{ours}.attn.qkv.{p}", qkv))
        pairs += [
            (f"{ours}.attn.out", f"{hf}.attention.output.dense"),
            (f"{ours}.ffn.up", f"{hf}.intermediate.dense"),
            (f"{ours}.ffn.down", f"{hf}.output.dense"),
        ]
        if post:  # LayerNorm after each residual add
            pairs += [
                (f"{ours}.attn_norm", f"{hf}.attention.output.LayerNorm"),
                (f"{ours}.ffn_norm", f"{hf}.output.LayerNorm"),
            ]
        else:  # LayerNorm on each sublayer's input
            pairs += [
                (f"{ours}.attn_norm", f"{hf}.attention.LayerNorm"),
                (f"{ours}.ffn_norm", f"{hf}.intermediate.LayerNorm"),
            ]
    if post:
        pairs += [
            ("mlm.dense", "cls.predictions.transform.dense"),
            ("mlm.norm", "cls.predictions.transform.LayerNorm"),
        ]
        table.append(Entry("mlm.bias", ("cls.predictions.bias",), "vocab"))
        if nsp:
            pairs += [("bert.pooler", "bert.pooler.dense"), ("nsp", "cls.seq_relationship")]
    else:
        pairs += [
            ("bert.encoder.final_norm", f"{base}.LayerNorm"),
            ("mlm.dense", "lm_head.dense"),
            ("mlm.norm", "lm_head.layer_norm"),
        ]
        table.append(Entry("mlm.bias", ("lm_head.bias",), "vocab"))
    table += [Entry(f"{o}.{p}", (f"{h}.{p}",)) for o, h in pairs for p in ("weight", "bias")]
    return table


def position_offset(cfg: ModelConfig, pad_token_id: int) -> int:
    """Rows HF's position table has below our position 0 (RoBERTa: pad_token_id + 1)."""
    return 0 if cfg.norm == "post" else pad_token_id + 1


def to_hf(
    state: Mapping[str, Tensor], cfg: ModelConfig, nsp: bool, pad_token_id: int = 0
) -> dict[str, Tensor]:
    """Our state_dict -> the HF state_dict of `hf_architecture(cfg, nsp)` (new contiguous tensors).

    Keys of ours that have no HF counterpart (a 'pre' model's pooler and NSP head) are dropped.
    """
    out: dict[str, Tensor] = {}
    off = position_offset(cfg, pad_token_id)
    for e in name_table(cfg, nsp):
        if e.ours not in state:
            raise BertpldError(f"weights: '{e.ours}' missing; the state_dict does not match the config")
        t = state[e.ours].detach()
        if e.kind == "vocab":
            t = t[: cfg.vocab_size]
        elif e.kind == "position":
            # rows 0..off-1 are reached only by padding tokens in RoBERTa; zero is as good as any
            t = torch.cat([t.new_zeros(off, t.size(1)), t])
        for name, part in zip(e.hf, t.chunk(len(e.hf), dim=0)):
            out[name] = part.contiguous().clone()
    return out


def from_hf(
    hf_state: Mapping[str, Tensor], cfg: ModelConfig, nsp: bool, pad_token_id: int = 0
) -> dict[str, Tensor]:
    """An HF state_dict of `hf_architecture(cfg, nsp)` -> our state_dict (load with strict=True)."""
    out: dict[str, Tensor] = {}
    off = position_offset(cfg, pad_token_id)
    for e in name_table(cfg, nsp):
        missing = [n for n in e.hf if n not in hf_state]
        if missing:
            raise BertpldError(
                f"Hugging Face weights: '{missing[0]}' missing (expected {hf_architecture(cfg, nsp)})"
            )
        t = torch.cat([hf_state[n].detach() for n in e.hf], dim=0)
        if e.kind == "vocab":
            if t.size(0) != cfg.vocab_size:
                raise BertpldError(
                    f"Hugging Face weights: vocab_size {t.size(0)}, config says {cfg.vocab_size}"
                )
            t = torch.cat([t, t.new_zeros(cfg.padded_vocab_size - cfg.vocab_size, *t.shape[1:])])
        elif e.kind == "position":
            t = t[off : off + cfg.max_position_embeddings]
        out[e.ours] = t.contiguous().clone()
    return out


def hf_config(cfg: ModelConfig, nsp: bool, pad_token_id: int = 0, **special_ids: int) -> dict[str, Any]:
    """config.json content for `hf_architecture(cfg, nsp)` (extra ids: bos_token_id=..., etc.)."""
    arch = hf_architecture(cfg, nsp)
    d: dict[str, Any] = {
        "architectures": [arch],
        "model_type": "bert" if cfg.norm == "post" else "roberta-prelayernorm",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",  # exact erf GELU, as our F.gelu
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings + position_offset(cfg, pad_token_id),
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    d.update(special_ids)
    return d
