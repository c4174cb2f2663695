"""Dynamic masked-LM masking, vectorised over a batch, with counter-based randomness.

Every random number is a hash of (instance key, position, stream), so the masks of an instance
depend only on its key (seed, epoch, instance index): not on the batch it lands in, the rank that
reads it, or how many batches came before. That makes resume, rank partitioning and a fixed
validation stream exact by construction, and costs one vectorised hash per batch.
"""

from __future__ import annotations

import functools

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (a bijective, well-mixing hash)."""
    # uint64 array arithmetic wraps silently, as the hash wants
    z = x + _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def instance_keys(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """One uint64 key per instance from (seed, epoch, index)."""
    base = int(splitmix64(np.array([(seed * 0x632BE59BD9B4E019 + epoch) & _MASK64], dtype=np.uint64))[0])
    return splitmix64((indices.astype(np.uint64) * _GOLDEN) ^ np.uint64(base))


@functools.cache
def _columns(n: int, stream: int) -> np.ndarray:
    return splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(stream << 32))[None, :]


def random_bits(keys: np.ndarray, n: int, stream: int) -> np.ndarray:
    """(len(keys), n) uint64: the hash of (key, column, stream)."""
    return splitmix64(keys[:, None] ^ _columns(n, stream))


def uniform(keys: np.ndarray, n: int, stream: int) -> np.ndarray:
    """(len(keys), n) floats in [0, 1): the hash of (key, column, stream)."""
    return (random_bits(keys, n, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_tokens(
    input_ids: np.ndarray,
    candidates: np.ndarray,
    keys: np.ndarray,
    mask_prob: float,
    predictions: int,
    mask_id: int,
    replacement_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask `input_ids` (B, T) in place; returns mlm_positions, mlm_labels, both (B, P).

    Per row, round(mask_prob * candidates) positions (at least 1, at most P) are chosen uniformly
    among `candidates` (real, non-special tokens); of those 80% become [MASK], 10% a random
    non-special token (`replacement_ids`), 10% stay. Unused slots have position 0, label -100.
    """
    B, T = input_ids.shape
    P = predictions
    n_cand = candidates.sum(axis=1)
    k = np.minimum(np.maximum(np.rint(n_cand * mask_prob), 1), P).astype(np.int64)
    k = np.minimum(k, n_cand)
    scores = uniform(keys, T, 0)
    scores[~candidates] = 2.0  # never chosen before a candidate
    if P < T:
        part = np.argpartition(scores, P - 1, axis=1)[:, :P]
    else:
        part = np.broadcast_to(np.arange(T), (B, T))[:, :P].copy()
    order = np.argsort(np.take_along_axis(scores, part, axis=1), axis=1)
    chosen = np.take_along_axis(part, order, axis=1)  # (B, P): best-scored first
    valid = np.arange(P)[None, :] < k[:, None]
    # positions in increasing order, unused slots last
    positions = np.sort(np.where(valid, chosen, T), axis=1)
    valid = positions < T
    positions[~valid] = 0
    rows = np.arange(B)[:, None]
    labels = np.where(valid, input_ids[rows, positions], -100)

    # one hash per slot: the high 32 bits pick the action, the low 32 bits the random token
    bits = random_bits(keys, P, 1)
    action = (bits >> np.uint64(32)).astype(np.float64) * (1.0 / (1 << 32))
    pick = ((bits & np.uint64(0xFFFFFFFF)) * np.uint64(len(replacement_ids))) >> np.uint64(32)
    pick = pick.astype(np.int64)
    new = np.where(action < 0.8, mask_id, np.where(action < 0.9, replacement_ids[pick], labels))
    r, c = np.nonzero(valid)
    input_ids[r, positions[r, c]] = new[r, c]
    return positions, labels
