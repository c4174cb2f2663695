"""The model: Hugging Face parity, the PLD encoder loop, heads and initialisation (tiny, CPU, fp32)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from bertpld import hf
from bertpld.config import ModelConfig
from bertpld.errors import BertpldError
from bertpld.model import BertForPreTraining, BertForSequenceClassification, row_multiple, token_index

V = 101  # not a multiple of 8: the padded rows exist


def tiny(norm: str = "pre", layers: int = 4, dropout: float = 0.1) -> ModelConfig:
    return ModelConfig(
        vocab_size=V,
        hidden_size=32,
        num_layers=layers,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        norm=norm,
        hidden_dropout=dropout,
        attention_dropout=dropout,
    )


def batch(B: int = 3, T: int = 16, P: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    am = torch.ones_like(ids)
    am[1, T - 5 :] = 0  # right padding, as the data reader produces
    ids[1, T - 5 :] = 0
    tt = torch.zeros_like(ids)
    tt[:, T // 2 :] = 1
    labels = torch.randint(0, V, (B, P), generator=g)
    labels[0, -1] = -100  # an unused slot
    return dict(
        input_ids=ids,
        token_type_ids=tt,
        attention_mask=am,
        mlm_positions=torch.randint(0, T - 5, (B, P), generator=g),
        mlm_labels=labels,
        nsp_labels=torch.randint(0, 2, (B,), generator=g),
    )


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random LayerNorm weights and biases too, so that a swapped name cannot pass by symmetry."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("nsp", [True, False])
def test_post_matches_transformers_bert(nsp: bool) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = tiny("post")
    ours = perturbed(BertForPreTraining(cfg, nsp=nsp)).eval()
    hcfg = hf.hf_config(cfg, nsp)
    hcfg.pop("model_type")
    cls = getattr(transformers, hf.hf_architecture(cfg, nsp))
    theirs = cls(transformers.BertConfig(**hcfg)).eval()
    res = theirs.load_state_dict(hf.to_hf(ours.state_dict(), cfg, nsp), strict=False)
    assert not res.unexpected_keys
    assert set(res.missing_keys) == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # tied
    b = batch()
    if not nsp:
        del b["nsp_labels"]
    with torch.no_grad():
        out = ours(**b)
        ref = theirs(
            input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"]
        )
    logits = ref.prediction_logits if nsp else ref.logits  # (B, T, V) at every position
    idx = b["mlm_positions"].unsqueeze(-1).expand(-1, -1, V)
    torch.testing.assert_close(out.mlm_logits[..., :V], torch.gather(logits, 1, idx), atol=1e-5, rtol=0)
    assert out.mlm_logits.shape[-1] == cfg.padded_vocab_size == 104
    if nsp:
        torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, atol=1e-5, rtol=0)
    # and back: the same table loads HF weights into ours
    fresh = BertForPreTraining(cfg, nsp=nsp).eval()
    fresh.load_state_dict(hf.from_hf(theirs.state_dict(), cfg, nsp), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**b).mlm_logits[..., :V], out.mlm_logits[..., :V], atol=1e-6, rtol=0)


def test_padded_vocab_never_predicted() -> None:
    m = BertForPreTraining(tiny(), nsp=True).eval()  # no dropout: the two forwards below agree
    with torch.no_grad():
        logged = m(**batch())
    assert (
        torch.isneginf(logged.mlm_logits[..., V:]).all() and torch.isfinite(logged.mlm_logits[..., :V]).all()
    )
    out = m(**batch())  # gradients on: the MLM loss comes from linear_cross_entropy, without logits
    assert out.mlm_logits is None
    out.loss.backward()
    assert torch.isfinite(out.loss)
    emb = m.bert.embeddings.word.weight
    assert emb.grad[V:].abs().sum() == 0 and m.mlm.bias.grad[V:].abs().sum() == 0
    # reference loss computed on the unpadded logits
    b = batch()
    logits = logged.mlm_logits[..., :V]
    ref = F.cross_entropy(logits.flatten(0, 1), b["mlm_labels"].flatten(), ignore_index=-100)
    ref = ref + F.cross_entropy(out.nsp_logits.detach(), b["nsp_labels"])
    assert torch.allclose(out.loss.detach(), ref, atol=1e-6)


def test_init_weights() -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny("pre"), hidden_size=256, intermediate_size=512, num_heads=4)
    m = BertForPreTraining(cfg, nsp=True)
    up = m.bert.encoder.blocks[0].ffn.up
    assert abs(up.weight.std().item() - 0.02) < 0.001 and up.bias.abs().sum() == 0
    assert torch.all(m.bert.encoder.final_norm.weight == 1) and torch.all(m.mlm.norm.bias == 0)
    assert torch.all(m.mlm.bias == 0) and torch.all(m.bert.embeddings.word.weight[V:] == 0)


def count_block_calls(model: torch.nn.Module) -> list[int]:
    calls = [0] * len(model.bert.encoder.blocks)
    for i, block in enumerate(model.bert.encoder.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_theta_one_is_bit_identical_to_no_pld() -> None:
    torch.manual_seed(0)
    m = BertForPreTraining(tiny("pre"), nsp=True).train()  # dropout on: the RNG use must match too
    b = batch()
    results = []
    for gates, probs in ((None, None), ([True] * 4, [1.0] * 4)):
        m.zero_grad()
        torch.manual_seed(123)
        out = m(**b, gates=gates, keep_probs=probs)
        out.loss.backward()
        results.append((out.loss.detach().clone(), [p.grad.clone() for p in m.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_dropped_blocks_not_executed_and_get_no_gradient() -> None:
    m = BertForPreTraining(tiny("pre"), nsp=True).train()
    calls = count_block_calls(m)
    gates = [True, False, True, False]
    m(**batch(), gates=gates, keep_probs=[0.9, 0.8, 0.7, 0.6]).loss.backward()
    assert calls == [1, 0, 1, 0]
    for i, block in enumerate(m.bert.encoder.blocks):
        grads = [p.grad for p in block.parameters()]
        if gates[i]:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)
    assert m.bert.encoder.final_norm.weight.grad is not None  # never dropped
    # reached_parameters names exactly the parameters that got a gradient (what DDP reduces)
    assert {id(p) for p in m.reached_parameters(gates)} == {
        id(p) for p in m.parameters() if p.grad is not None
    }
    assert len(m.eval().reached_parameters(gates)) == len(list(m.parameters()))  # eval ignores gates


def test_kept_block_scales_both_increments() -> None:
    """h = x + Attn(LN1(x))/p, out = h + FFN(LN2(h))/p, written out independently."""
    m = perturbed(BertForPreTraining(tiny("pre", layers=1, dropout=0.0), nsp=False)).train()
    b = batch()
    enc = m.bert.encoder
    x = m.bert.embeddings(b["input_ids"], b["token_type_ids"])
    mask = b["attention_mask"].bool()[:, None, None, :]
    blk = enc.blocks[0]
    p = 0.4
    h = x + blk.attn(blk.attn_norm(x), mask) / p
    ref = enc.final_norm(h + blk.ffn(blk.ffn_norm(h)) / p)
    got = enc(x, mask, gates=[True], keep_probs=[p])
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(enc(x, mask, gates=[False], keep_probs=[p]), enc.final_norm(x))


def test_scaled_linear_puts_the_scale_on_the_cheaper_side() -> None:
    """scale * linear(x) both ways, values and gradients: folded into the weight when x has more
    rows than the weight has columns, on the output (a last MulBackward) when it has fewer."""
    from bertpld.model import scaled_linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4)
    scale = torch.tensor(1 / 0.7)
    for rows, folded in ((9, True), (3, False)):
        x = torch.randn(rows, 6, requires_grad=True)
        got, ref = scaled_linear(linear, x, scale), linear(x) * scale
        torch.testing.assert_close(got, ref)
        for a, b in zip(
            torch.autograd.grad(got.sum(), [x, linear.weight, linear.bias]),
            torch.autograd.grad(ref.sum(), [x, linear.weight, linear.bias]),
        ):
            torch.testing.assert_close(a, b)
        assert (type(got.grad_fn).__name__ == "MulBackward0") is (not folded), rows


def test_eval_is_deterministic_full_depth_and_ignores_gates() -> None:
    m = BertForPreTraining(tiny("pre"), nsp=True).eval()
    calls = count_block_calls(m)
    b = batch()
    with torch.no_grad():
        a = m(**b).mlm_logits
        c = m(**b, gates=[False] * 4, keep_probs=[0.5] * 4).mlm_logits
    assert calls == [2, 2, 2, 2]
    assert torch.equal(a, c)


def exactly(message: str) -> str:
    """A `match=` pattern for this whole message and nothing else."""
    return f"^{re.escape(message)}\\Z"


POST_GATES = "model.norm: layer gates need the 'pre' arrangement; PLD is not defined for 'post'"
NO_NSP = "nsp_labels given to a model built without NSP (objective 'mlm')"
# a Post-LN checkpoint into a Pre-LN model: the same names, but no final LayerNorm
POST_INTO_PRE = (
    "pre-trained weights do not match the model: missing "
    "['bert.encoder.final_norm.weight', 'bert.encoder.final_norm.bias'], unexpected []"
)


def test_post_refuses_gates() -> None:
    m = BertForPreTraining(tiny("post"), nsp=False).train()
    with pytest.raises(BertpldError, match=exactly(POST_GATES)):
        m(**{k: v for k, v in batch().items() if k != "nsp_labels"}, gates=[True] * 4, keep_probs=[1.0] * 4)
    with pytest.raises(BertpldError, match=exactly(NO_NSP)):
        m(**batch())


def test_classifier_loads_encoder() -> None:
    cfg = tiny("pre")
    pre = perturbed(BertForPreTraining(cfg, nsp=False)).eval()
    clf = BertForSequenceClassification(cfg, num_labels=3).eval()
    missing, unexpected = clf.load_pretrained_encoder(pre.state_dict())
    assert missing == ["bert.pooler.weight", "bert.pooler.bias"] and unexpected == []
    b = batch()
    args = (b["input_ids"], b["token_type_ids"], b["attention_mask"])
    with torch.no_grad():
        assert torch.equal(pre.bert(*args), clf.bert(*args))
    loss, logits = clf(*args, labels=torch.tensor([0, 2, 1]))
    assert logits.shape == (3, 3) and torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 2, 1])))
    reg = BertForSequenceClassification(cfg, num_labels=1)
    reg.load_pretrained_encoder(BertForPreTraining(cfg, nsp=True).state_dict())
    y = torch.tensor([0.5, 1.0, 4.0])
    loss, logits = reg(*args, labels=y)
    assert torch.allclose(loss, ((logits.squeeze(-1) - y) ** 2).mean())
    with pytest.raises(BertpldError, match=exactly(POST_INTO_PRE)):
        clf.load_pretrained_encoder(BertForPreTraining(tiny("post"), nsp=True).state_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_counts_flops() -> None:
    """On GPU, SDPA takes a fused kernel: same logits as CPU (fp32, padded and unpadded), finite
    bf16 PLD steps, FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from bertpld.flops import step_flops

    cfg = tiny("pre", dropout=0.0)
    cpu = perturbed(BertForPreTraining(cfg, nsp=True)).eval()
    gpu = BertForPreTraining(cfg, nsp=True).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    b = batch()
    bc = {k: v.cuda() for k, v in b.items()}
    with torch.no_grad():
        ref, got = cpu(**b), gpu(**bc)
        unpadded = gpu(**bc, token_index=token_index(b["attention_mask"]).cuda())
    torch.testing.assert_close(got.mlm_logits.cpu()[..., :V], ref.mlm_logits[..., :V], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss.cpu(), ref.loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(unpadded.loss.cpu(), ref.loss, atol=1e-4, rtol=1e-4)

    gpu.train()
    gates, probs = [True, False, True, False], [0.9, 0.8, 0.7, 0.6]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(**bc, gates=gates, keep_probs=probs)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is None for p in gpu.bert.encoder.blocks[1].parameters())
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the same bf16 PLD step without the padding
        unpadded_pld = gpu(
            **bc, gates=gates, keep_probs=probs, token_index=token_index(b["attention_mask"]).cuda()
        )
    torch.testing.assert_close(unpadded_pld.loss.float(), out.loss.float(), atol=2e-2, rtol=2e-2)
    gpu.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)
    with counter:
        gpu(**bc, gates=gates, keep_probs=probs).loss.backward()
    B, T = b["input_ids"].shape
    analytic = step_flops(cfg, B, T, 2, b["mlm_positions"].numel(), True)
    assert abs(analytic - counter.get_total_flops()) / counter.get_total_flops() < 0.02


def test_compiled_blocks_do_not_recompile_as_theta_moves() -> None:
    """1/p changes every step; compiled blocks must not specialise on it (recompile limit is 8)."""
    from torch._dynamo.testing import CompileCounter

    from bertpld import pld

    torch._dynamo.reset()
    cfg = tiny("pre", layers=3)
    model = BertForPreTraining(cfg, nsp=False).train()
    counter = CompileCounter()
    for block in model.bert.encoder.blocks:
        block.compile(dynamic=False, backend=counter)
    b = batch()
    del b["nsp_labels"]
    for step in range(0, 3000, 150):
        gates, keep = pld.layer_gates(pld.theta(step, 0.5, 0.001), 3, "paper", 0, step)
        model(**b, gates=gates, keep_probs=keep).loss.backward()
    model(**b).loss.backward()
    assert counter.frame_count <= 2  # one graph with a scale tensor, one without


def test_compiled_blocks_settle_with_a_varying_real_token_count() -> None:
    """impl.unpad: N changes every batch; after a few graphs (scale or not, grad or not, dynamic
    N) the trainer's compiled blocks compile nothing more."""
    from torch._dynamo.testing import CompileCounter

    from bertpld import pld
    from bertpld.train import _compile_blocks

    torch._dynamo.reset()
    model = BertForPreTraining(tiny("pre", layers=3), nsp=True).train()
    counter = CompileCounter()
    _compile_blocks(model, backend=counter)

    def step(i: int) -> None:
        b = batch(seed=i)
        b["attention_mask"][2, 16 - i % 7 :] = 0  # another number of real tokens each time
        gates, keep = pld.layer_gates(0.5, 3, "paper", 0, i)
        index = token_index(b["attention_mask"])
        model.train()(**b, gates=gates, keep_probs=keep, token_index=index).loss.backward()
        with torch.no_grad():
            model.eval()(**b, token_index=index)

    for i in range(1, 6):
        step(i)
    settled = counter.frame_count
    for i in range(6, 14):
        step(i)
    assert counter.frame_count == settled <= 8, (settled, counter.frame_count)


def test_the_automatic_row_multiple_is_a_power_of_two_near_a_64th_of_the_positions() -> None:
    """impl.unpad_multiple 0: 64 for the demo's 64 x 64, 16 for BERT-base's CPU batch of 8 x 128,
    at most 64 (a GPU batch) and at least 8; token_index(mask, 0) rounds to it."""
    assert [row_multiple(n) for n in (64 * 64, 8 * 128, 256 * 128, 4 * 16, 0)] == [64, 16, 64, 8, 8]
    assert row_multiple(64 * 64 - 1) == 32 and row_multiple(2047) == 16
    mask = torch.zeros(8, 128, dtype=torch.long)
    mask[:, :100] = 1  # 800 real tokens
    assert len(token_index(mask, 0)) == 800 and len(token_index(mask, 64)) == 832
    mask[0, 100] = 1
    assert len(token_index(mask, 0)) == 816


@pytest.mark.parametrize(("norm", "multiple"), [("post", 1), ("pre", 1), ("post", 4), ("pre", 4)])
def test_unpadded_encoder_computes_what_the_padded_one_does(norm: str, multiple: int) -> None:
    """token_index: same loss, logits and gradients; padding rows of the hidden states are zeros
    (multiple 1), or hold what the encoder computed there for the rows added to round the count
    up (multiple 4), which nothing reads."""
    m = perturbed(BertForPreTraining(tiny(norm, dropout=0.0), nsp=True)).train()
    b = batch()
    pld = {"gates": [True, False, True, True], "keep_probs": [0.9, 0.8, 0.7, 0.6]} if norm == "pre" else {}
    index = token_index(b["attention_mask"], multiple)
    real_count = int(b["attention_mask"].sum())
    if multiple == 1:
        assert len(index) == real_count < b["attention_mask"].numel()
    else:
        assert len(index) % multiple == 0 and real_count < len(index) < b["attention_mask"].numel()
        assert b["attention_mask"].reshape(-1)[index[real_count:]].sum() == 0  # the added rows: padding
    assert (
        sorted(index[:real_count].tolist()) == b["attention_mask"].reshape(-1).nonzero().squeeze(1).tolist()
    )
    results = []
    for idx in (None, index):
        m.zero_grad(set_to_none=True)
        out = m(**b, **pld, token_index=idx)
        out.loss.backward()
        grads = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (ref, ref_grads), (got, got_grads) = results
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.mlm_logits, ref.mlm_logits, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == ref_grads.keys()
    for k in ref_grads:
        torch.testing.assert_close(got_grads[k], ref_grads[k], atol=1e-6, rtol=1e-5, msg=k)
    hidden = m.bert(b["input_ids"], b["token_type_ids"], b["attention_mask"], token_index=index)
    padded = m.bert(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    real = b["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], padded[real], atol=1e-5, rtol=1e-5)
    assert (hidden[~real].abs().sum() == 0) == (multiple == 1)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_linear_cross_entropy_matches_cross_entropy_on_logits(
    chunked: bool, autocast: bool, monkeypatch
) -> None:
    """The fused MLM loss against F.cross_entropy(F.linear(...).float()) under the same autocast:
    the loss, and the gradients of x, weight and bias, with ignored rows, a scaled backward (as
    accumulation does) and, chunked, several chunks of rows. bf16: within its rounding."""
    import bertpld.model as M

    if chunked:
        monkeypatch.setattr(M, "_CE_CHUNK_ELEMENTS", 7 * 50)
        monkeypatch.setattr(M, "_CE_MIN_ROWS", 1)  # 7 rows a chunk: 6 chunks, the last short
    torch.manual_seed(0)
    N, H, Vb = 40, 16, 50
    x0, w0, b0 = torch.randn(N, H), torch.randn(Vb, H) * 0.3, torch.randn(Vb)
    b0[-3:] = float("-inf")  # padded vocabulary columns, as the MLM head has
    labels = torch.randint(0, Vb - 3, (N,))
    labels[::5] = -100
    results = []
    for fused in (False, True):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                loss = M.linear_cross_entropy(x, w, b, labels)
            else:
                loss = F.cross_entropy(F.linear(x, w, b).float(), labels, ignore_index=-100)
        (loss * 0.25).backward()
        results.append([loss.detach(), x.grad, w.grad, torch.where(b0.isinf(), 0, b.grad)])
    (ref_loss, *ref), (loss, *got) = results
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    tol = 1e-2 if autocast else 1e-5  # relative to the largest gradient: bf16 keeps 8 bits
    for a, r in zip(got, ref):
        assert (a - r).abs().max() <= tol * r.abs().max(), (a - r).abs().max() / r.abs().max()
    assert got[0][::5].abs().sum() == 0  # ignored rows get no gradient


def test_linear_cross_entropy_of_no_labelled_row_is_zero() -> None:
    from bertpld.model import linear_cross_entropy

    x, w, b = torch.randn(4, 8, requires_grad=True), torch.randn(10, 8, requires_grad=True), torch.zeros(10)
    loss = linear_cross_entropy(x, w, b, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0 and x.grad.abs().sum() == 0 and w.grad.abs().sum() == 0
