"""Training instances from the sentence table, as arrays (no Python loop per sentence or token).

An instance is segment A (and, for NSP, segment B) as token spans inside one shard:
``shard, a_start, a_len, b_start, b_len, nsp`` (b_len = 0 for MLM-only). Both objectives follow
original BERT's `create_instances_from_document`, vectorised:

- every sentence i is a potential chunk start with its own target length (shorter with
  probability short_seq_prob for NSP); its chunk is the longest run of whole sentences of the
  same document that fits, and for NSP its A/B split point and is-random coin are drawn too
  (a one-sentence chunk takes the next sentence as B, so that labels stay 50/50);
- the chunks actually used are found by following "next chunk start" pointers from the first
  sentence (a random-next chunk puts its unused B sentences back, as in BERT);
- random B segments start at a uniformly drawn sentence of another document in the same shard;
- over-long pairs are truncated from the longer side, randomly at the front or back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class SentenceTable:
    """All sentences of a split, in corpus order (documents never cross shards)."""

    start: np.ndarray  # (S,) int64 token offset of the sentence inside its shard
    length: np.ndarray  # (S,) int64 tokens
    shard: np.ndarray  # (S,) int32
    doc_start: np.ndarray  # (S,) int64 first sentence of the sentence's document
    doc_end: np.ndarray  # (S,) int64 one past its last sentence
    shard_bounds: np.ndarray  # (shards + 1,) int64 first sentence of each shard, then S

    def __post_init__(self) -> None:
        self.cum = np.concatenate([[0], np.cumsum(self.length)])  # global token prefix sums


@dataclass
class Instances:
    shard: np.ndarray
    a_start: np.ndarray
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    nsp: np.ndarray  # 1 = B is a random sentence (HF convention), 0 = B is the real continuation

    def __len__(self) -> int:
        return len(self.a_start)

    def take(self, index: np.ndarray) -> Instances:
        """The instances at `index`, in that order."""
        return Instances(*(getattr(self, f.name)[index] for f in fields(self)))


def concat_instances(parts: list[Instances]) -> Instances:
    return Instances(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Instances)))


def _fit_end(t: SentenceTable, first: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """One past the last sentence of the longest run from `first` that fits `budget` tokens, within
    the document; at least one sentence."""
    end = np.searchsorted(t.cum, t.cum[first] + budget, side="right") - 1
    return np.maximum(np.minimum(end, t.doc_end[first]), first + 1)


def _follow(nxt: np.ndarray) -> np.ndarray:
    """Chunk starts: 0, nxt[0], nxt[nxt[0]], ... until the end."""
    jumps = nxt.tolist()  # a list walk is ~20x faster than indexing a numpy array per step
    n = len(jumps)
    starts = []
    i = 0
    while i < n:
        starts.append(i)
        i = jumps[i]
    return np.asarray(starts, dtype=np.int64)


def build_mlm(t: SentenceTable, max_tokens: int) -> Instances:
    """Packed full sentences of one document, up to `max_tokens` (a longer sentence is cut)."""
    first = np.arange(len(t.length))
    nxt = _fit_end(t, first, np.full(len(first), max_tokens))
    s = _follow(nxt)
    e = nxt[s]
    length = np.minimum(t.cum[e] - t.cum[s], max_tokens)
    zeros = np.zeros(len(s), dtype=np.int64)
    return Instances(t.shard[s], t.start[s], length, zeros, zeros.copy(), zeros.copy())


def build_nsp(
    t: SentenceTable, max_tokens: int, short_seq_prob: float, rng: np.random.Generator
) -> Instances:
    """BERT sentence pairs: A and B (next or random, 50/50) with len(A) + len(B) <= max_tokens."""
    S = len(t.length)
    first = np.arange(S)
    short = rng.random(S) < short_seq_prob
    target = np.where(short, rng.integers(2, max_tokens + 1, S), max_tokens)
    end = _fit_end(t, first, target)
    coin = rng.random(S) < 0.5
    # BERT makes every one-sentence chunk a random pair, which skews the labels towards "random"
    # when sentences are long relative to max_seq_len; here such a chunk takes its document's next
    # sentence as B instead (truncated below), so labels stay 50/50.
    extend = (end - first == 1) & ~coin & (first + 1 < t.doc_end[first])
    end = np.where(extend, first + 2, end)
    n = end - first
    a_end = first + 1 + (rng.random(S) * np.maximum(n - 1, 1)).astype(np.int64)
    a_end = np.minimum(a_end, end)
    is_random = (n == 1) | coin
    s = _follow(np.where(is_random, a_end, end))
    a_end, end, is_random, target = a_end[s], end[s], is_random[s], target[s]
    la = t.cum[a_end] - t.cum[s]

    # random B: a sentence of another document of the same shard (any document if the shard has one)
    lo, hi = t.shard_bounds[t.shard[s]], t.shard_bounds[t.shard[s] + 1]
    d_lo, d_hi = t.doc_start[s], t.doc_end[s]
    others = (hi - lo) - (d_hi - d_lo)
    alone = others <= 0
    pool = np.where(alone, hi - lo, others)
    r = lo + (rng.random(len(s)) * pool).astype(np.int64)
    r = np.where(~alone & (r >= d_lo), r + (d_hi - d_lo), r)
    r_end = _fit_end(t, r, np.maximum(target - la, 1))
    b_first = np.where(is_random, r, a_end)
    b_end = np.where(is_random, r_end, end)
    lb = t.cum[b_end] - t.cum[b_first]

    # truncate the longer side first (BERT's truncate_seq_pair), randomly at front or back
    over = la + lb > max_tokens
    la2 = np.where(over, np.minimum(la, np.maximum(max_tokens - lb, (max_tokens + 1) // 2)), la)
    lb2 = np.where(over, max_tokens - la2, lb)
    front_a = rng.binomial(la - la2, 0.5)
    front_b = rng.binomial(lb - lb2, 0.5)
    return Instances(
        t.shard[s],
        t.start[s] + front_a,
        la2,
        t.start[b_first] + front_b,
        lb2,
        is_random.astype(np.int64),
    )
