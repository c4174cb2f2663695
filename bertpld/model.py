"""BERT in two block arrangements, its heads, and the encoder loop that skips dropped blocks.

- `post`: the original BERT block (LayerNorm after each residual add), computes exactly what
  Hugging Face `BertModel` computes; the baseline.
- `pre`: the Switchable-Transformer block of PLD (LayerNorm on each sublayer input, one final
  LayerNorm after the last block); computes what `RobertaPreLayerNormModel` computes.

Progressive Layer Dropping lives only in `Encoder.forward`: a block whose gate is 0 is not called
at all (no forward, no backward), a kept block scales both residual increments by 1 / p_l.
Gates are drawn outside the model (`bertpld.pld`), so the model holds no PLD state.

Padding removal: given `token_index` (the flat positions of the real tokens, see `token_index`),
the encoder runs every token-wise layer (projections, FFN, LayerNorm, dropout, residuals) on the
real tokens only, an (N, H) tensor, and re-pads just around attention; the output is re-padded
with zeros. The same maths as the padded model at every real token; padding costs no compute
(except the few padding rows `token_index(..., multiple)` adds to round N up).

Parameter names are ours; `bertpld.hf` maps them to Hugging Face names in both directions.
Shapes: B batch, T sequence, H hidden, nh heads, hs head size, P masked positions, V padded vocab.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertpld.config import ModelConfig
from bertpld.errors import BertpldError
from bertpld.phases import phase


class PretrainOutput(NamedTuple):
    loss: Tensor | None
    """mlm_loss (+ nsp_loss); None without labels."""
    mlm_loss: Tensor | None
    nsp_loss: Tensor | None
    mlm_logits: Tensor | None
    """(B, P, V_padded); the padded vocabulary columns hold -inf, so they are never predicted.
    None when the loss was computed for training (labels given, gradients on): see
    `linear_cross_entropy`."""
    nsp_logits: Tensor | None
    """(B, 2), 0 = is next; None for a model built without NSP."""


def token_index(attention_mask: Tensor, multiple: int = 1) -> Tensor:
    """Flat positions (in B x T) of the real tokens, for `token_index=`. Compute it on the CPU
    batch: on a GPU tensor, `nonzero` waits for the device.

    The unpadded model equals the padded one wherever something reads the hidden states at a real
    token; padding positions read as zeros. The heads read the MLM positions and [CLS] (position
    0), which the reader always puts on real tokens (unused MLM slots point at [CLS]).

    `multiple` > 1 adds padding positions after the real ones until the count is a multiple of it
    (or every position is in): the encoder then sees a few distinct row counts instead of a new one
    per batch. On a CPU each new matmul shape costs oneDNN a new JIT-compiled kernel (see
    `ImplConfig.unpad_multiple`). The added rows are computed like tokens but never read: attention
    masks them as keys, and nothing reads the hidden states at a padding position. 0: the
    `row_multiple` of the batch's positions."""
    flat = attention_mask.reshape(-1)
    multiple = multiple or row_multiple(flat.numel())
    index = flat.nonzero().squeeze(1)
    extra = -len(index) % multiple
    if extra:
        index = torch.cat([index, (flat == 0).nonzero().squeeze(1)[:extra]])
    return index


def row_multiple(positions: int) -> int:
    """The automatic rounding of the unpadded row count (impl.unpad_multiple 0): the power of two
    at or below positions / 64, kept between 8 and 64. The rows it adds, on average half the
    multiple, stay under 1% of a batch's positions; at BERT-base's CPU batch (8 x 128, ~800 real
    tokens) a multiple of 64 added 3.4% rows where 16 adds 1.0%, and both stop oneDNN's kernel
    builds (docs/measurements/cpu_host_step_costs_base_multiples.json). 8 keeps GPU rows aligned."""
    return min(64, max(8, 1 << max((positions // 64).bit_length() - 1, 0)))


# ---------------------------------------------------------------------------------------------
# Building blocks


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (both arrangements)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.padded_vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, positions: Tensor | None = None) -> Tensor:
        """Positions 0..T-1 as in Hugging Face BERT, unless given (the real tokens' positions)."""
        if positions is None:
            pos = self.position.weight[: input_ids.size(1)]  # (T, H)
        else:
            pos = self.position(positions)
        x = self.word(input_ids) + self.token_type(token_type_ids) + pos
        return self.dropout(self.norm(x))  # (B, T, H)


class SelfAttention(nn.Module):
    """Multi-head self-attention; Q, K and V come from one fused projection (one matmul)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_dropout = cfg.attention_dropout
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self, x: Tensor, mask: Tensor, token_index: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor:
        """x: (B, T, H), or (N, H) real tokens only when `token_index` is given (then padded here
        for attention alone: the zero rows are padding keys, which the mask hides). `scale`: see
        `scaled_linear`."""
        B, T = mask.shape[0], mask.shape[-1]
        H = x.shape[-1]
        qkv = self.qkv(x)
        if token_index is not None:
            qkv = torch.zeros(B * T, 3 * H, dtype=qkv.dtype, device=qkv.device).index_copy_(
                0, token_index, qkv
            )
        q, k, v = qkv.view(B, T, 3, self.num_heads, H // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        dropout = self.attention_dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # torch's CPU attention kernel is slower in bf16 than in fp32 (forward+backward at the
            # demo's shape, one thread: 1.95x; `scripts/bench_model.py --attention`, raw numbers in
            # docs/measurements/cpu_attention_bf16_vs_fp32_*.json): attention alone runs in fp32.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout
                ).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, H)
        if token_index is not None:
            y = y.view(B * T, H).index_select(0, token_index)
        return self.dropout(scaled_linear(self.out, y, scale))


def scaled_linear(linear: nn.Linear, x: Tensor, scale: Tensor | None) -> Tensor:
    """scale * linear(x), PLD's 1/p_l, multiplied where it costs less, forward and backward: into
    the (out, in) weight and the bias when the input has more rows than the weight has columns
    (N > in: a GPU batch, the CPU demo), else on the (N, out) output (BERT-base's FFN at a small
    CPU batch: N = 1,024 tokens against 3,072 columns). The same increment either way."""
    if scale is None:
        return linear(x)
    if x.numel() // x.shape[-1] < linear.in_features:
        return linear(x) * scale
    return F.linear(x, linear.weight * scale, linear.bias * scale)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        # exact (erf) GELU, as BERT; `scale`: see `scaled_linear`
        return self.dropout(scaled_linear(self.down, F.gelu(self.up(x)), scale))


class Block(nn.Module):
    """One encoder block; `attn_norm`/`ffn_norm` are the LayerNorms that belong to each sublayer
    (after the residual add for 'post', on the sublayer input for 'pre')."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(
        self, x: Tensor, mask: Tensor, scale: Tensor | None = None, token_index: Tensor | None = None
    ) -> Tensor:
        """`scale` (1/p_l as a 0-dim CPU tensor, 'pre' only) multiplies both residual increments;
        `token_index`: x holds only the real tokens (see SelfAttention).

        A tensor rather than a float: torch.compile would specialise on every new float value
        (theta changes each step) and recompile until it gives up; a CPU scalar tensor costs no
        device transfer. None is the plain block (no PLD, or p = 1: bit-identical to no PLD).
        """
        if not self.pre_norm:
            h = self.attn_norm(x + self.attn(x, mask, token_index))
            return self.ffn_norm(h + self.ffn(h))
        h = x + self.attn(self.attn_norm(x), mask, token_index, scale)
        return h + self.ffn(self.ffn_norm(h), scale)


class Encoder(nn.Module):
    """The stack of blocks (+ the final LayerNorm for 'pre'): the only place PLD acts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        gates: Sequence[bool] | None = None,
        keep_probs: Sequence[float] | None = None,
        token_index: Tensor | None = None,
    ) -> Tensor:
        # Eval never consumes gates: validation and fine-tuning always run the full, unscaled stack.
        if gates is None or not self.training:
            for block in self.blocks:
                x = block(x, mask, None, token_index)
        else:
            if self.final_norm is None:
                raise BertpldError(
                    "model.norm: layer gates need the 'pre' arrangement; PLD is not defined for 'post'"
                )
            L = len(self.blocks)
            if keep_probs is None or len(gates) != L or len(keep_probs) != L:
                raise BertpldError(f"PLD: gates and keep_probs must both have one entry per block ({L})")
            for block, gate, p in zip(self.blocks, gates, keep_probs):
                if gate:  # a dropped block is an exact identity: not called, so nothing is computed
                    scale = None if p == 1.0 else torch.tensor(1.0 / p, dtype=torch.float32)
                    x = block(x, mask, scale, token_index)
        return x if self.final_norm is None else self.final_norm(x)


class BertModel(nn.Module):
    """Embeddings + encoder (+ pooler: dense + tanh on [CLS], used by NSP and classification)."""

    def __init__(self, cfg: ModelConfig, pooler: bool) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if pooler else None

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor,
        attention_mask: Tensor,
        gates: Sequence[bool] | None = None,
        keep_probs: Sequence[float] | None = None,
        token_index: Tensor | None = None,
    ) -> Tensor:
        """(B, T, H) hidden states; with `token_index` the encoder runs on the real tokens only
        and the padding positions of the result are zeros."""
        # (B, 1, 1, T) boolean, True = attend; broadcast over heads and query positions.
        mask = attention_mask.bool()[:, None, None, :]
        if token_index is None:
            with phase("forward.embeddings"):
                x = self.embeddings(input_ids, token_type_ids)
            with phase("forward.blocks"):
                return self.encoder(x, mask, gates, keep_probs)
        B, T = input_ids.shape
        with phase("forward.embeddings"):
            ids, types = (t.reshape(-1)[token_index][None] for t in (input_ids, token_type_ids))
            x = self.embeddings(ids, types, positions=token_index % T)[0]  # (N, H)
        with phase("forward.blocks"):
            x = self.encoder(x, mask, gates, keep_probs, token_index)
        with phase("forward.heads"):  # re-padding serves the heads
            padded = torch.zeros(B * T, x.shape[-1], dtype=x.dtype, device=x.device)
            return padded.index_copy_(0, token_index, x).view(B, T, -1)

    def pool(self, hidden: Tensor) -> Tensor:
        assert self.pooler is not None, "model built without a pooler"
        return torch.tanh(self.pooler(hidden[:, 0]))  # (B, H)


# ---------------------------------------------------------------------------------------------
# Initialisation


@torch.no_grad()
def init_weights(module: nn.Module, cfg: ModelConfig) -> None:
    """BERT initialisation, applied to every submodule of `module`.

    Linear and embedding weights ~ Normal(0, cfg.initializer_range) (0.02 in BERT), all biases 0,
    LayerNorm weight 1 and bias 0; the MLM output bias 0. The padded vocabulary rows of the word
    embedding are zeroed: no token id reaches them and the MLM head never predicts them.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=cfg.initializer_range)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=cfg.initializer_range)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, MLMHead):
            nn.init.zeros_(m.bias)
    for m in module.modules():  # after the loop above, which visits the embedding's children later
        if isinstance(m, Embeddings):
            m.word.weight[cfg.vocab_size :].zero_()
            if cfg.position_init == "sinusoidal":
                m.position.weight.copy_(sinusoids(*m.position.weight.shape) * cfg.initializer_range)


def sinusoids(positions: int, dim: int) -> Tensor:
    """The Transformer's position encodings (Vaswani et al. 2017), scaled to unit root-mean-square:
    PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...). Any offset between two positions
    is a fixed rotation of each (sin, cos) pair, so attention can learn relative offsets at once."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(positions, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return (pe * 2**0.5).float()


# ---------------------------------------------------------------------------------------------
# Heads and the two task models


class MLMHead(nn.Module):
    """dense + GELU + LayerNorm, then the decoder tied to the word embeddings, with its own bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.padded_vocab_size))
        # -inf on the padding columns, folded into the decoder bias: free, and they are never predicted.
        pad = torch.zeros(cfg.padded_vocab_size)
        pad[cfg.vocab_size :] = float("-inf")
        self.register_buffer("vocab_pad", pad, persistent=False)

    def transform(self, hidden: Tensor) -> Tensor:
        """What the decoder reads: LayerNorm(GELU(dense(hidden)))."""
        return self.norm(F.gelu(self.dense(hidden)))

    def decoder_bias(self) -> Tensor:
        return self.bias + self.vocab_pad.to(self.bias.dtype)

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.transform(hidden), word_embeddings, self.decoder_bias())


# Logits computed at once by linear_cross_entropy: 2^21 fp32 values (8 MiB), a size that stays in
# a CPU's cache across the passes over it (fastest of 2^18..2^23 on the demo's head).
_CE_CHUNK_ELEMENTS = 1 << 21
# ... but at least this many rows: each chunk reads the whole (vocabulary, H) weight (BERT-base: 47 MB)
_CE_MIN_ROWS = 256


def linear_cross_entropy(x: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """mean over rows with labels != -100 of cross_entropy(x @ weight.T + bias, labels), with
    the gradients of x, weight and bias computed in the forward pass, chunk by chunk of rows.

    The same maths as `F.cross_entropy(F.linear(x, weight, bias).float(), labels)` under autocast,
    and the same roundings where it matters (logits from a matmul in the autocast dtype, softmax in
    fp32, d(loss)/d(logits) rounded to the autocast dtype for the two matmuls of the backward),
    without its costs outside the matmuls: no fp32 copy of the (rows, vocabulary) logits kept for
    backward, and one fp32 pass that gives the loss and the logits' gradient (softmax - one-hot)
    instead of separate log-softmax, NLL and their backward kernels (on a CPU demo step this part
    took ~20% of the step with ~0% of its FLOPs). Liger Kernel's fused linear cross-entropy works
    the same way. A loss past ~100 nats reads as 103.3 (the probability is floored at 1e-45).
    """
    return _LinearCrossEntropy.apply(x, weight, bias, labels)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            xc, wc, bc = x.to(dtype), weight.to(dtype), bias.to(dtype)
            valid = labels != -100
            target = torch.where(valid, labels, 0)[:, None]
            count = valid.sum().clamp_min(1).float()
            row_scale = (valid.float() / count)[:, None]  # d(mean loss)/d(row loss)
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            grad_x = torch.empty_like(xc, dtype=torch.float32)
            grad_b = torch.zeros_like(bias, dtype=torch.float32)
            grad_logits = torch.empty(x.shape[0], weight.shape[0], dtype=dtype, device=x.device)
            rows = max(_CE_MIN_ROWS, _CE_CHUNK_ELEMENTS // weight.shape[0])
            for i in range(0, x.shape[0], rows):
                sl = slice(i, i + rows)
                # fp32 copy then softmax: 2x faster on a CPU than softmax(..., dtype=float32)
                probs = torch.softmax(torch.addmm(bc, xc[sl], wc.t()).float(), dim=-1)
                p_target = probs.gather(1, target[sl])
                loss -= (p_target.clamp_min(1e-45).log() * row_scale[sl]).sum()
                probs.scatter_(1, target[sl], p_target - 1.0)  # d(row loss)/d(logits)
                grad_b += row_scale[sl, 0] @ probs
                grad_logits[sl] = probs
                grad_x[sl] = (grad_logits[sl] @ wc).float() * row_scale[sl]
            # one product for the weight: per chunk it would cost a (vocabulary, H) pass each time.
            # The rows' scale goes on x (fp32: 1/count rounded to bf16 would bias every gradient
            # alike), cheaper than on the (rows, vocabulary) gradient of the logits.
            grad_w = (grad_logits.t() @ (xc.float() * row_scale).to(dtype)).float()
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.x_dtype = x.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        # a scale of exactly 1 (no accumulation, no fp16 scaler) costs nothing; checked on the CPU only
        if grad_loss.device.type != "cpu" or float(grad_loss) != 1.0:
            grad_x, grad_w, grad_b = grad_x * grad_loss, grad_w * grad_loss, grad_b * grad_loss
        return grad_x.to(ctx.x_dtype), grad_w, grad_b, None


class BertForPreTraining(nn.Module):
    """BERT with the MLM head (logits only at the masked positions) and, if `nsp`, the NSP head."""

    def __init__(self, cfg: ModelConfig, nsp: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg, pooler=nsp)
        self.mlm = MLMHead(cfg)
        self.nsp = nn.Linear(cfg.hidden_size, 2) if nsp else None
        init_weights(self, cfg)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor,
        attention_mask: Tensor,
        mlm_positions: Tensor,
        mlm_labels: Tensor | None = None,
        nsp_labels: Tensor | None = None,
        gates: Sequence[bool] | None = None,
        keep_probs: Sequence[float] | None = None,
        token_index: Tensor | None = None,
    ) -> PretrainOutput:
        """`mlm_positions` (B, P) indexes the positions to predict; `mlm_labels` (B, P), -100 = unused slot.

        `gates`/`keep_probs` (one per block) only in training with PLD; None runs every block unscaled.
        `token_index` (from `token_index(attention_mask)`): skip the padding (see the module doc).
        """
        hidden = self.bert(input_ids, token_type_ids, attention_mask, gates, keep_probs, token_index)
        with phase("forward.heads"):
            return self._heads(hidden, mlm_positions, mlm_labels, nsp_labels)

    def _heads(
        self, hidden: Tensor, mlm_positions: Tensor, mlm_labels: Tensor | None, nsp_labels: Tensor | None
    ) -> PretrainOutput:
        # gather, not boolean indexing: the shape is fixed, so there is no device sync.
        idx = mlm_positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, P, H)
        word = self.bert.embeddings.word.weight
        nsp_logits = self.nsp(self.bert.pool(hidden)) if self.nsp is not None else None  # (B, 2)
        mlm_logits = mlm_loss = nsp_loss = loss = None
        if mlm_labels is not None and torch.is_grad_enabled():
            # training: the loss and its gradients without the (B x P, V) logits (see linear_cross_entropy)
            x = self.mlm.transform(torch.gather(hidden, 1, idx)).flatten(0, 1)  # (B x P, H)
            mlm_loss = linear_cross_entropy(x, word, self.mlm.decoder_bias(), mlm_labels.flatten())
        else:
            mlm_logits = self.mlm(torch.gather(hidden, 1, idx), word)  # (B, P, V)
            if mlm_labels is not None:
                mlm_loss = F.cross_entropy(
                    mlm_logits.flatten(0, 1).float(), mlm_labels.flatten(), ignore_index=-100
                )
        loss = mlm_loss
        if nsp_labels is not None:
            if nsp_logits is None:
                raise BertpldError("nsp_labels given to a model built without NSP (objective 'mlm')")
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
            loss = nsp_loss if loss is None else loss + nsp_loss
        return PretrainOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits)

    def reached_parameters(self, gates: Sequence[bool] | None = None) -> list[nn.Parameter]:
        """The parameters a backward through `forward(..., gates=gates)` gives a gradient:
        all of them but those of the blocks the gates drop (in training; eval ignores gates)."""
        dropped = set()
        for block, gate in zip(self.bert.encoder.blocks, gates if gates and self.training else ()):
            if not gate:
                dropped.update(id(p) for p in block.parameters())
        return [p for p in self.parameters() if id(p) not in dropped]

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The `bert.*` weights (embeddings, encoder, pooler if any): what fine-tuning starts from."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("bert.")}


class BertForSequenceClassification(nn.Module):
    """Pooler + dropout + linear on [CLS]; `num_labels == 1` is regression (MSE loss). Full depth."""

    def __init__(self, cfg: ModelConfig, num_labels: int, classifier_dropout: float = 0.1) -> None:
        super().__init__()
        if num_labels < 1:
            raise BertpldError(f"num_labels: got {num_labels}, expected a positive integer")
        self.cfg = cfg
        self.num_labels = num_labels
        self.bert = BertModel(cfg, pooler=True)
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self, cfg)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor]:
        hidden = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.classifier(self.dropout(self.bert.pool(hidden)))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return loss, logits

    def load_pretrained_encoder(self, state_dict: Mapping[str, Tensor]) -> tuple[list[str], list[str]]:
        """Load the `bert.*` weights of a pre-training state_dict (other keys are ignored).

        Returns (missing, unexpected) `bert.*` keys. A model pre-trained without NSP has no
        pooler, so `bert.pooler.*` comes back as missing and keeps its fresh initialisation.
        Raises BertpldError when encoder weights are missing or shapes differ (wrong config).
        """
        enc = {k.removeprefix("bert."): v for k, v in state_dict.items() if k.startswith("bert.")}
        try:
            res = self.bert.load_state_dict(enc, strict=False)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise BertpldError(f"pre-trained weights do not fit this model config: {first}") from None
        missing = [f"bert.{k}" for k in res.missing_keys]
        unexpected = [f"bert.{k}" for k in res.unexpected_keys]
        if [k for k in missing if not k.startswith("bert.pooler.")] or unexpected:
            raise BertpldError(
                f"pre-trained weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return missing, unexpected
