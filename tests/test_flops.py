"""Analytic FLOPs against docs/METHOD.md section 4 and against torch's FlopCounterMode on the real model.

What FlopCounterMode does not count (and neither does `step_flops`): softmax, GELU, LayerNorm,
dropout, residual and bias adds, embedding lookups and their backward (index_add), the losses.
It counts mm/addmm/bmm and the fused attention kernels. On CPU, SDPA with a padding mask runs as
matmuls (bmm), which the counter sees; the test checks the attention part is present anyway.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bertpld.config import MODEL_PRESETS, ModelConfig
from bertpld.flops import block_flops_per_token, peak_flops, step_flops
from bertpld.model import BertForPreTraining, BertForSequenceClassification, token_index

CFG = ModelConfig(
    vocab_size=1000,
    hidden_size=64,
    num_layers=4,
    num_heads=4,
    intermediate_size=192,  # not 4h: the FFN term must use intermediate_size
    max_position_embeddings=64,
    norm="pre",
)
B, T, P = 4, 32, 5


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, CFG.vocab_size, (B, T), generator=g)
    am = torch.ones_like(ids)
    am[0, 20:] = 0
    return dict(
        input_ids=ids,
        token_type_ids=torch.zeros_like(ids),
        attention_mask=am,
        mlm_positions=torch.randint(0, T, (B, P), generator=g),
        mlm_labels=torch.randint(0, CFG.vocab_size, (B, P), generator=g),
        nsp_labels=torch.randint(0, 2, (B,), generator=g),
    )


def counted(fn) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops(), {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


def test_bert_base_per_token_matches_method() -> None:
    base = ModelConfig(**MODEL_PRESETS["base"], vocab_size=30522)
    h = 768
    assert block_flops_per_token(base, 128) == 24 * h * h + 4 * 128 * h
    assert block_flops_per_token(base, 128) == pytest.approx(14.55e6, rel=1e-3)
    # the encoder is ~96% of BERT-base compute at s = 128 with 20 predictions per sequence
    enc = step_flops(base, 1, 128, 12, 0, False)
    total = step_flops(base, 1, 128, 12, 20, True)
    assert 0.955 < enc / total < 0.965
    # 27.1% fewer encoder FLOPs at theta_bar 0.5 -> ~26% fewer in total
    saved = 1 - step_flops(base, 1, 128, 8.75, 20, True) / total
    assert 0.255 < saved < 0.265


@pytest.mark.parametrize("unpad", [False, True])
@pytest.mark.parametrize("gates", [None, [True, False, True, False], [False, False, False, True]])
def test_pretrain_step_matches_flop_counter(gates: list[bool] | None, unpad: bool) -> None:
    torch.manual_seed(0)
    model = BertForPreTraining(CFG, nsp=True).train()
    probs = [0.9, 0.8, 0.7, 0.6] if gates else None
    x = inputs()
    index = token_index(x["attention_mask"]) if unpad else None
    tokens = len(index) if unpad else None

    def step() -> None:
        model(**x, gates=gates, keep_probs=probs, token_index=index).loss.backward()

    total, by_op = counted(step)
    blocks = CFG.num_layers if gates is None else sum(gates)
    assert by_op.get("aten.bmm", 0) + by_op.get("aten._scaled_dot_product_flash_attention", 0) > 0
    analytic = step_flops(CFG, B, T, blocks, B * P, nsp=True, tokens=tokens)
    assert abs(analytic - total) / total < 0.02, (analytic, total, by_op)
    with torch.no_grad():  # a forward alone (with gradients on, the MLM loss computes its gradients too)
        fwd, _ = counted(lambda: model(**x, gates=gates, keep_probs=probs, token_index=index))
    assert (
        abs(step_flops(CFG, B, T, blocks, B * P, nsp=True, backward=False, tokens=tokens) - fwd) / fwd < 0.02
    )
    if unpad and blocks:  # the padding (12 of 128 tokens) is visibly not computed
        assert step_flops(CFG, B, T, blocks, B * P, nsp=True) > 1.05 * total


def test_classifier_step_matches_flop_counter() -> None:
    model = BertForSequenceClassification(CFG, num_labels=3).train()
    x = inputs()
    labels = torch.tensor([0, 1, 2, 1])
    total, _ = counted(
        lambda: model(x["input_ids"], x["token_type_ids"], x["attention_mask"], labels)[0].backward()
    )
    analytic = step_flops(CFG, B, T, CFG.num_layers, 0, False, head="classifier", num_labels=3)
    assert abs(analytic - total) / total < 0.02


def test_peak_flops() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H200", torch.bfloat16) == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("Some Unknown GPU", "bf16") is None
    with pytest.raises(ValueError):
        step_flops(CFG, 1, 8, 1, 1, False, head="other")
