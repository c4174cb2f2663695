"""Prepared shards -> batches for pre-training (the contract is in docs/DESIGN.md).

`PretrainReader` memory-maps the shards of one split, verifies each shard's sha256 once per
process, builds instances as arrays (see instances.py) and assembles every batch by array
indexing, with dynamic masking (masking.py). The train split is endless: epoch e uses its own
instances (for NSP) and order, both drawn from (seed, e); rank r of W reads instances r, r+W, ...
of each epoch's order, and a batch may run across an epoch boundary. Masks depend only on
(seed, epoch, instance), so a resumed reader continues with exactly the batch that came next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertpld.config import DataConfig
from bertpld.data.instances import Instances, SentenceTable, build_mlm, build_nsp
from bertpld.data.masking import instance_keys, mask_tokens
from bertpld.data.shards import FORMAT, MANIFEST, PROGRESS, open_shard, sha256_file
from bertpld.errors import BertpldError

# Validation instances and masks use this seed whatever the training seed, so validation loss is
# comparable across runs, seeds and world sizes.
VAL_SEED = 0x5EED
_REQUIRED = (
    "format",
    "vocab_size",
    "tokenizer",
    "tokenizer_sha256",
    "special_tokens",
    "fingerprint",
    "splits",
)
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared data directory; BertpldError if it is missing or invalid."""
    d = Path(data_dir)
    if not d.is_dir():
        raise BertpldError(f"{d}: no such data directory (run `bertpld prepare --out {d}`)")
    p = d / MANIFEST
    if not p.is_file():
        hint = "prepare was interrupted; rerun it to resume" if (d / PROGRESS).exists() else ""
        raise BertpldError(f"{d}: not a prepared data directory (no {MANIFEST}{'; ' + hint if hint else ''})")
    try:
        manifest = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BertpldError(f"{p}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or any(k not in manifest for k in _REQUIRED):
        raise BertpldError(f"{p}: not a bertpld manifest (expected keys {', '.join(_REQUIRED)})")
    if manifest["format"] != FORMAT:
        raise BertpldError(f"{p}: format {manifest['format']!r}, expected {FORMAT!r}; prepare the data again")
    special, splits = manifest["special_tokens"], manifest["splits"]
    if not isinstance(special, dict) or any(t not in special for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")):
        raise BertpldError(f"{p}: special_tokens must map [PAD], [CLS], [SEP] and [MASK] to ids")
    if not (isinstance(splits, dict) and all(isinstance(v, dict) for v in splits.values())):
        raise BertpldError(f"{p}: splits must map each split name to an object")
    for split in splits.values():
        if not all(
            isinstance(r, dict) and {"path", "size", "sha256"} <= r.keys() for r in split.get("shards", [])
        ):
            raise BertpldError(f"{p}: every shard must be a {{path, size, sha256}} record")
    return manifest


def verify_shard(path: Path, size: int, sha256: str) -> None:
    """Check a shard against its manifest entry, hashing each file once per process."""
    try:
        st = path.stat()
    except OSError:
        raise BertpldError(f"{path}: shard listed in manifest.json is missing") from None
    if st.st_size != size:
        raise BertpldError(
            f"{path}: shard size {st.st_size} differs from the manifest's {size} (corrupt shard)"
        )
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_file(path)
    if _verified[key] != sha256:
        raise BertpldError(f"{path}: checksum mismatch with manifest.json (corrupt or modified shard)")


class PretrainReader:
    """Batches of one split of a prepared data directory (see module docstring)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        cfg: DataConfig,
        split: str = "train",
        micro_batch_size: int = 32,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if split not in ("train", "val"):
            raise BertpldError(f"split: got {split!r}, expected 'train' or 'val'")
        if not 0 <= rank < world_size:
            raise BertpldError(f"rank {rank} is not in [0, world_size={world_size})")
        if micro_batch_size < 1:
            raise BertpldError(f"micro_batch_size: got {micro_batch_size}, expected a positive integer")
        cfg.validate()
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        self.cfg = cfg
        self.split = split
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self.tokenizer_path: Path = self.data_dir / self.manifest["tokenizer"]
        self.fingerprint: str = self.manifest["fingerprint"]
        special = self.manifest["special_tokens"]
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = (
            int(special[t]) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
        )
        self.nsp = cfg.objective == "mlm+nsp"
        # validation masks at its own, fixed rate (data.val_mask_prob), so runs trained with
        # different masking rates are measured alike
        self.mask_prob = cfg.val_mask_prob if split == "val" else cfg.mask_prob
        self.predictions = cfg.val_predictions_per_seq if split == "val" else cfg.predictions_per_seq
        # room for [CLS] A [SEP] (B [SEP])
        self.max_tokens = cfg.max_seq_len - (3 if self.nsp else 2)

        self._is_special = np.zeros(self.vocab_size, dtype=bool)
        self._is_special[[int(v) for v in special.values()]] = True
        self._replacement = np.flatnonzero(~self._is_special)

        recs = self.manifest["splits"].get(split, {}).get("shards", [])
        if not recs:
            raise BertpldError(
                f"{self.data_dir}: split '{split}' has no shards (raise prepare.val_fraction?)"
            )
        self._tokens: list[np.ndarray] = []
        self._table = self._open(recs)
        self._epoch_cache: dict[int, tuple[Instances, np.ndarray]] = {}
        self.epoch = 0
        self.position = 0  # instances of this rank's order of `epoch` already yielded
        if split == "val":
            self._val = self._instances(VAL_SEED, 0)
            self._val_keys = instance_keys(VAL_SEED, 0, np.arange(len(self._val)))

    # ------------------------------------------------------------------------------------------
    # Loading

    def _open(self, recs: list[dict[str, Any]]) -> SentenceTable:
        cols: dict[str, list[np.ndarray]] = {
            k: [] for k in ("start", "length", "shard", "doc_start", "doc_end")
        }
        bounds = [0]
        for i, rec in enumerate(recs):
            path = self.data_dir / rec["path"]
            verify_shard(path, int(rec["size"]), rec["sha256"])
            shard = open_shard(path)
            # a plain ndarray view: memmap's subclass overhead per fancy-index is measurable
            self._tokens.append(shard.tokens.view(np.ndarray))
            so = np.asarray(shard.sentence_offsets, dtype=np.int64)
            do = np.asarray(shard.document_offsets, dtype=np.int64)
            n = len(so) - 1
            doc_len = np.diff(do)
            cols["start"].append(so[:-1])
            cols["length"].append(np.diff(so))
            cols["shard"].append(np.full(n, i, dtype=np.int32))
            cols["doc_start"].append(bounds[-1] + np.repeat(do[:-1], doc_len))
            cols["doc_end"].append(bounds[-1] + np.repeat(do[1:], doc_len))
            bounds.append(bounds[-1] + n)
        if bounds[-1] == 0:
            raise BertpldError(f"{self.data_dir}: split '{self.split}' has no sentences")
        columns = {k: np.concatenate(v) for k, v in cols.items()}
        return SentenceTable(**columns, shard_bounds=np.asarray(bounds, dtype=np.int64))

    def _instances(self, seed: int, epoch: int) -> Instances:
        if not self.nsp:  # packing is deterministic; only the order changes per epoch
            if not hasattr(self, "_mlm"):
                self._mlm = build_mlm(self._table, self.max_tokens)
            return self._mlm
        rng = np.random.default_rng([seed, epoch, 1])
        return build_nsp(self._table, self.max_tokens, self.cfg.short_seq_prob, rng)

    def _epoch(self, epoch: int) -> tuple[Instances, np.ndarray]:
        """This epoch's instances and this rank's share of their shuffled order."""
        if epoch not in self._epoch_cache:
            inst = self._instances(self.seed, epoch)
            if len(inst) < self.world_size:
                raise BertpldError(
                    f"{self.data_dir}: split '{self.split}' has {len(inst)} instances, fewer than "
                    f"world_size={self.world_size}"
                )
            order = np.random.default_rng([self.seed, epoch, 2]).permutation(len(inst))
            self._epoch_cache = {e: v for e, v in self._epoch_cache.items() if e > epoch - 2}
            self._epoch_cache[epoch] = (inst, order[self.rank :: self.world_size])
        return self._epoch_cache[epoch]

    # ------------------------------------------------------------------------------------------
    # Iteration

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.split == "val":
            yield from self._iter_val()
            return
        B = self.micro_batch_size
        while True:
            parts = []
            need = B
            while need:
                inst, mine = self._epoch(self.epoch)
                take = mine[self.position : self.position + need]
                if len(take):
                    parts.append(self._assemble(inst, take, instance_keys(self.seed, self.epoch, take)))
                self.position += len(take)
                need -= len(take)
                if self.position >= len(mine):
                    self.epoch, self.position = self.epoch + 1, 0
            # state already points at the next batch while the consumer holds this one
            yield _to_torch(parts[0] if len(parts) == 1 else _concat(parts))

    def _iter_val(self) -> Iterator[dict[str, torch.Tensor]]:
        mine = np.arange(self.rank, len(self._val), self.world_size)
        for i in range(0, len(mine), self.micro_batch_size):
            take = mine[i : i + self.micro_batch_size]
            yield _to_torch(self._assemble(self._val, take, self._val_keys[take]))

    def __len__(self) -> int:
        """Batches in one pass of the validation split on this rank (the train split is endless)."""
        if self.split != "val":
            raise TypeError("the train split is endless; len() is defined for split='val'")
        n = len(range(self.rank, len(self._val), self.world_size))
        return -(-n // self.micro_batch_size)

    def instances_in_epoch(self, epoch: int = 0) -> int:
        """Instances of the whole split (all ranks) in one epoch."""
        return len(self._val) if self.split == "val" else len(self._epoch(epoch)[0])

    def mean_tokens_per_sequence(self) -> float:
        """Mean real tokens per sequence ([CLS] and [SEP]s included) over the whole split's
        instances of epoch 0 (what a FLOPs budget expects a sequence to cost)."""
        inst = self._val if self.split == "val" else self._epoch(0)[0]
        specials = np.where(inst.b_len > 0, 3, 2)
        return float((inst.a_len + inst.b_len + specials).mean())

    def rank_indices(self, epoch: int = 0) -> np.ndarray:
        """Indices of the instances this rank reads in `epoch`, in reading order."""
        if self.split == "val":
            return np.arange(self.rank, len(self._val), self.world_size)
        return self._epoch(epoch)[1].copy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "position": self.position,
            "fingerprint": self.fingerprint,
            "objective": self.cfg.objective,
            "max_seq_len": self.cfg.max_seq_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("split", "seed", "world_size", "fingerprint", "objective", "max_seq_len"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise BertpldError(
                    f"data reader state: {key} was {state.get(key)!r}, now {mine!r}; cannot resume"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ------------------------------------------------------------------------------------------
    # Batch assembly: one vectorised pass over a (B, T) grid

    def _assemble(self, inst: Instances, take: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
        T = self.cfg.max_seq_len
        shard = inst.shard[take]
        a0, la = inst.a_start[take][:, None], inst.a_len[take][:, None]
        b0, lb = inst.b_start[take][:, None], inst.b_len[take][:, None]
        j = np.arange(T)[None, :]
        in_a = (j >= 1) & (j <= la)
        b_first = la + 2
        in_b = (j >= b_first) & (j < b_first + lb)
        real = in_a | in_b
        src = np.where(j <= la, a0 - 1, b0 - b_first) + j
        src[~real] = 0
        if len(self._tokens) == 1:
            ids = self._tokens[0][src].astype(np.int64)
        else:
            ids = np.empty(src.shape, dtype=np.int64)
            for s in np.unique(shard):
                rows = shard == s
                ids[rows] = self._tokens[s][src[rows]]
        ids[~real] = self.pad_id
        ids[:, 0] = self.cls_id
        has_b = lb > 0
        seq_end = np.where(has_b, b_first + lb, la + 1)  # position of the last [SEP]
        ids[(j == la + 1) | ((j == seq_end) & has_b)] = self.sep_id
        attention = (j <= seq_end).astype(np.int64)
        types = ((j >= b_first) & (j <= seq_end) & has_b).astype(np.int64)
        candidates = real & ~self._is_special[ids]
        positions, labels = mask_tokens(
            ids, candidates, keys, self.mask_prob, self.predictions, self.mask_id, self._replacement
        )
        batch = {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": attention,
            "mlm_positions": positions,
            "mlm_labels": labels,
        }
        if self.nsp:
            batch["nsp_labels"] = inst.nsp[take].astype(np.int64)
        return batch


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in batch.items()}
