"""The unigram reference line: the MLM loss of a model that ignores context.

A BERT that has learned only word frequencies predicts every masked token with the training
split's token distribution; its loss on the validation split is the cross-entropy of the
validation tokens under that distribution. A run whose validation MLM loss sits at this line has
learned no language, so every comparison of runs is measured against it.

Rule (the same in `prepare` and in `report` for data prepared before the field existed):
training-split token counts with add-0.5 smoothing over the vocabulary's non-special tokens;
the mean negative log-probability over the validation split's non-special tokens, in nats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bertpld.data.shards import open_shard

SMOOTHING = 0.5
MANIFEST_KEY = "val_unigram_ce"


def token_counts(data_dir: str | os.PathLike, manifest: dict[str, Any], split: str) -> np.ndarray:
    """How often each token id occurs in one split's shards, (vocab_size,) int64."""
    vocab = int(manifest["vocab_size"])
    counts = np.zeros(vocab, dtype=np.int64)
    for rec in manifest["splits"][split]["shards"]:
        tokens = open_shard(Path(data_dir) / rec["path"]).tokens
        for i in range(0, len(tokens), 1 << 26):  # bounded memory on large shards
            counts += np.bincount(tokens[i : i + (1 << 26)], minlength=vocab)
    return counts


def unigram_cross_entropy(train_counts: np.ndarray, val_counts: np.ndarray, special_ids: list[int]) -> float:
    """Cross-entropy (nats per token) of the validation tokens under the smoothed training unigram."""
    regular = np.ones(len(train_counts), dtype=bool)
    regular[list(special_ids)] = False
    p = (train_counts[regular] + SMOOTHING) / (train_counts[regular].sum() + SMOOTHING * regular.sum())
    val = val_counts[regular]
    if val.sum() == 0:
        raise ValueError("the validation split has no regular tokens")
    return float(-(val * np.log(p)).sum() / val.sum())


def val_unigram_ce(data_dir: str | os.PathLike, manifest: dict[str, Any]) -> float:
    """The manifest's value, or (data prepared before the field existed) computed from the shards."""
    if isinstance(manifest.get(MANIFEST_KEY), (int, float)):
        return float(manifest[MANIFEST_KEY])
    special = [int(v) for v in manifest["special_tokens"].values()]
    return unigram_cross_entropy(
        token_counts(data_dir, manifest, "train"), token_counts(data_dir, manifest, "val"), special
    )
