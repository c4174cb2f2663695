"""Analytic FLOPs of what a step actually executed, and GPU peak FLOP/s for MFU.

Convention: 2 FLOPs per multiply-add, matrix products only. Softmax, GELU, LayerNorm, dropout,
residual and bias adds, the embedding lookups and the losses are elementwise or gathers: together
well under 1% of a BERT step, not counted (torch's FlopCounterMode does not count them either).
Backward costs 2x forward (gradient w.r.t. inputs and w.r.t. weights, one product each).

Per token of an executed block, forward (h hidden, I FFN width, s sequence length):
    Q, K, V and output projections   8 h^2
    FFN (two matrices)               4 h I        (16 h^2 when I = 4h)
    attention scores + weighted sum  4 s h
i.e. 24 h^2 + 4 s h for BERT's I = 4h (docs/METHOD.md section 4). With the padding removed the first
two terms count real tokens only; attention still runs over the padded sequence.
"""

from __future__ import annotations

from bertpld.config import ModelConfig


def block_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of one encoder block per token at padded sequence length `seq_len`."""
    return _dense_flops_per_token(cfg) + 4.0 * seq_len * cfg.hidden_size


def _dense_flops_per_token(cfg: ModelConfig) -> float:
    """The projections and the FFN: what a token costs wherever it attends."""
    h, inner = cfg.hidden_size, cfg.intermediate_size
    return 8.0 * h * h + 4.0 * h * inner


def step_flops(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    blocks_executed: int,
    mlm_predictions: int,
    nsp: bool,
    head: str = "pretrain",
    num_labels: int = 2,
    backward: bool = True,
    tokens: int | None = None,
) -> float:
    """FLOPs of one micro-batch: forward, plus 2x forward for the backward when `backward`.

    batch_size:       sequences in the micro-batch.
    seq_len:          padded length actually computed (attention is over all of it).
    blocks_executed:  encoder blocks run in this micro-batch (L without PLD).
    mlm_predictions:  positions in the whole micro-batch where the MLM head runs
                      (`mlm_positions.numel()`, i.e. B x P: unused slots are computed too);
                      ignored for 'classifier'.
    nsp:              the pooler and the NSP classifier ran ('pretrain' only).
    head:             'pretrain' (MLM [+ NSP]) or 'classifier' (pooler + num_labels outputs).
    tokens:           tokens the projections and FFN ran on: the real ones when the padding was
                      removed (`token_index`), else None = batch_size x seq_len. Attention always
                      runs padded.
    """
    if head not in ("pretrain", "classifier"):
        raise ValueError(f"head: got {head!r}, expected 'pretrain' or 'classifier'")
    h = cfg.hidden_size
    padded = batch_size * seq_len
    tokens = padded if tokens is None else tokens
    fwd = blocks_executed * (tokens * _dense_flops_per_token(cfg) + padded * 4.0 * seq_len * h)
    if head == "pretrain":
        # MLM transform (h x h) and decoder (h x padded vocab), only at the gathered positions.
        fwd += mlm_predictions * (2.0 * h * h + 2.0 * h * cfg.padded_vocab_size)
        if nsp:
            fwd += batch_size * (2.0 * h * h + 2.0 * h * 2)  # pooler + NSP classifier on [CLS]
    else:
        fwd += batch_size * (2.0 * h * h + 2.0 * h * num_labels)  # pooler + classifier on [CLS]
    return 3.0 * fwd if backward else fwd


# Dense (no sparsity) tensor-core peak FLOP/s from the vendors' data sheets.
# Matched in order against torch.cuda.get_device_name(); first match wins.
_PEAKS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("H100", "PCIE"), {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    (("H100", "NVL"), {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12}),
    (("H100",), {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),  # SXM
    (("H200",), {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    (("A100",), {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    (("A10G",), {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12}),
    (("V100",), {"fp16": 125e12, "fp32": 15.7e12}),
]


def peak_flops(device_name: str, dtype: str) -> float | None:
    """Peak FLOP/s of a GPU for 'bf16', 'fp16' or 'fp32' (torch dtypes accepted); None if unknown."""
    d = str(dtype).removeprefix("torch.")
    d = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}.get(d, d)
    name = device_name.upper()
    for keys, peaks in _PEAKS:
        if all(k in name for k in keys):
            return peaks.get(d)
    return None
