"""Prepared shards -> batches for pre-training (the contract is in docs/DESIGN.md).

`PretrainReader` memory-maps the shards of one split, verifies each shard's sha256 once per data
directory (recorded in DIR/.verified.json, hashed again when a shard's mtime changes; a size other
than the manifest's is an error), builds instances as arrays (see instances.py) and assembles every
batch by array indexing, with dynamic masking (masking.py).

The train split is one endless stream of instances, the same whatever the number of ranks and
the micro-batch:

    epoch e   the shards in a random order drawn from (seed, e), cut into windows of about
              data.shuffle_window_tokens tokens; a window's instances (built shard by shard, each
              from (seed, e, shard)) in a random order drawn from (seed, e, window)
    stream    epoch 0's windows one after the other, then epoch 1's, ...

The stream is defined in sequences, not in micro-batches: optimizer step s consumes the global
batch of G instances at stream positions [sG, (s + 1)G). Rank r of W takes the r-th of W equal
shares of it, and cuts its share into micro-batches of B (accum = G / (W B) of them):

    micro-batch k of step s on rank r = positions sG + r G/W + kB onwards, B of them

so the sequences of every step are the same whatever W and B are, and a run resumes on another
number of ranks or with another micro-batch with the same samples per step. Only the windows
being read are in memory (the next one is built in a background thread), so memory and start-up
do not grow with the corpus. Masks depend only on (seed, epoch, position in the epoch), not on
who reads the instance. The state is one global position (a whole number of steps), the same on
every rank.

The validation split is read in its build order with fixed masks (VAL_SEED), whatever the seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertpld.config import DataConfig
from bertpld.data.instances import Instances, SentenceTable, build_mlm, build_nsp, concat_instances
from bertpld.data.masking import instance_keys, mask_tokens
from bertpld.data.shards import (
    FORMAT,
    MANIFEST,
    PROGRESS,
    open_shard,
    read_verified,
    sha256_file,
    write_verified,
)
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
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process


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


def verify_shards(data_dir: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Check shards against their manifest records: every time their size (a size other than the
    manifest's is an error), and their sha256 once per data directory (DIR/.verified.json remembers
    each shard's size and mtime when its hash matched; a shard whose mtime changed since is hashed
    again). A read-only data directory is verified once per process instead."""
    d = Path(data_dir)
    record = read_verified(d)
    changed = False
    for rec in records:
        path = d / rec["path"]
        try:
            st = path.stat()
        except OSError:
            raise BertpldError(f"{path}: shard listed in manifest.json is missing") from None
        if st.st_size != int(rec["size"]):
            raise BertpldError(
                f"{path}: shard size {st.st_size} differs from the manifest's {rec['size']} (corrupt shard)"
            )
        mark = [st.st_size, st.st_mtime_ns, rec["sha256"]]  # as shards.verified_mark
        if record.get(rec["path"]) == mark:
            continue
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _verified:
            _verified[key] = sha256_file(path)
        if _verified[key] != rec["sha256"]:
            raise BertpldError(f"{path}: checksum mismatch with manifest.json (corrupt or modified shard)")
        record[rec["path"]] = mark
        changed = True
    if changed:  # (a read-only data directory: this process remembers, the next one hashes again)
        write_verified(d, record)


@dataclass
class _Window:
    """A run of the train stream: the instances of a few shards of one epoch, in reading order."""

    epoch: int
    index: int  # within the epoch
    start: int  # stream position of its first instance
    epoch_offset: int  # position of its first instance within the epoch
    last: bool  # the epoch's last window
    instances: Instances

    @property
    def end(self) -> int:
        return self.start + len(self.instances)


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
        global_batch_size: int = 0,
        max_sequences: int = 0,
    ) -> None:
        """`global_batch_size` (train): the sequences of one optimizer step over all ranks, a
        multiple of micro_batch_size x world_size (0: one micro-batch per rank per step).
        `max_sequences` (val): read only the first this many validation sequences (0: all)."""
        if split not in ("train", "val"):
            raise BertpldError(f"split: got {split!r}, expected 'train' or 'val'")
        if not 0 <= rank < world_size:
            raise BertpldError(f"rank {rank} is not in [0, world_size={world_size})")
        if micro_batch_size < 1:
            raise BertpldError(f"micro_batch_size: got {micro_batch_size}, expected a positive integer")
        global_batch_size = global_batch_size or micro_batch_size * world_size
        if global_batch_size % (micro_batch_size * world_size):
            raise BertpldError(
                f"global_batch_size: {global_batch_size} is not a multiple of micro_batch_size x "
                f"world_size = {micro_batch_size} x {world_size}"
            )
        cfg.validate()
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        self.cfg = cfg
        self.split = split
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = global_batch_size
        self.accum = global_batch_size // (micro_batch_size * world_size)  # micro-batches per step
        self.max_sequences = max_sequences
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
        verify_shards(self.data_dir, recs)
        self._shards = [open_shard(self.data_dir / rec["path"]) for rec in recs]
        # a plain ndarray view: memmap's subclass overhead per fancy-index is measurable
        self._tokens = [sh.tokens.view(np.ndarray) for sh in self._shards]
        self._shard_tokens = np.array([len(t) for t in self._tokens], dtype=np.int64)
        if not any(sh.num_sentences for sh in self._shards):
            raise BertpldError(f"{self.data_dir}: split '{split}' has no sentences")
        self.batches_read = 0  # micro-batches this rank has yielded (the stream position follows)
        if split == "val":
            self._val = self._val_instances()
            self._val_keys = instance_keys(VAL_SEED, 0, np.arange(len(self._val)))
            return
        self._plans: dict[int, list[np.ndarray]] = {}  # epoch -> shard indices of each window
        self._windows: list[_Window] = []  # built windows still needed, in stream order
        self._anchor = (0, 0, 0, 0)  # (epoch, window, start, epoch_offset) of the first needed window
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bertpld-window")
        self._next: tuple[tuple[int, int], Future] | None = None  # the window being built ahead

    # ------------------------------------------------------------------------------------------
    # Instances

    def _table(self, shards: list[int]) -> SentenceTable:
        """The sentences of `shards` (in that order) as one table; `shard` holds table-local
        indices 0..len(shards)-1, so NSP's random B stays inside its own shard."""
        cols: dict[str, list[np.ndarray]] = {
            k: [] for k in ("start", "length", "shard", "doc_start", "doc_end")
        }
        bounds = [0]
        for i, s in enumerate(shards):
            so = np.asarray(self._shards[s].sentence_offsets, dtype=np.int64)
            do = np.asarray(self._shards[s].document_offsets, dtype=np.int64)
            n = len(so) - 1
            doc_len = np.diff(do)
            cols["start"].append(so[:-1])
            cols["length"].append(np.diff(so))
            cols["shard"].append(np.full(n, i, dtype=np.int32))
            cols["doc_start"].append(bounds[-1] + np.repeat(do[:-1], doc_len))
            cols["doc_end"].append(bounds[-1] + np.repeat(do[1:], doc_len))
            bounds.append(bounds[-1] + n)
        columns = {k: np.concatenate(v) for k, v in cols.items()}
        return SentenceTable(**columns, shard_bounds=np.asarray(bounds, dtype=np.int64))

    def _build(self, table: SentenceTable, rng: np.random.Generator | None) -> Instances:
        if not self.nsp:
            return build_mlm(table, self.max_tokens)
        return build_nsp(table, self.max_tokens, self.cfg.short_seq_prob, rng)

    def _val_instances(self) -> Instances:
        """All validation shards as one table, built once with VAL_SEED: fixed across runs."""
        shards = list(range(len(self._shards)))
        return self._build(self._table(shards), np.random.default_rng([VAL_SEED, 0, 1]))

    def _shard_instances(self, epoch: int, shard: int) -> Instances:
        """The instances of one train shard in one epoch: a function of (seed, epoch, shard) only."""
        inst = self._build(self._table([shard]), np.random.default_rng([self.seed, epoch, shard, 1]))
        inst.shard[:] = shard
        return inst

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's windows: the shards in a random order, cut where a window reaches
        data.shuffle_window_tokens tokens (every window has at least one shard)."""
        if epoch not in self._plans:
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self._shards))
            ends = np.cumsum(self._shard_tokens[order])
            cut = np.flatnonzero(np.diff(ends // self.cfg.shuffle_window_tokens, prepend=0) > 0) + 1
            windows = [w for w in np.split(order, cut) if len(w)]
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
            self._plans[epoch] = windows
        return self._plans[epoch]

    def _window_instances(self, epoch: int, index: int) -> Instances:
        """A window's instances in reading order: its shards' instances, then a random order."""
        parts = [self._shard_instances(epoch, int(s)) for s in self._plan(epoch)[index]]
        inst = concat_instances(parts)
        order = np.random.default_rng([self.seed, epoch, index, 2]).permutation(len(inst))
        return inst.take(order)

    # ------------------------------------------------------------------------------------------
    # The stream

    def _following(self, epoch: int, index: int) -> tuple[int, int]:
        return (epoch, index + 1) if index + 1 < len(self._plan(epoch)) else (epoch + 1, 0)

    def _instances_of(self, epoch: int, index: int) -> Instances:
        """Window (epoch, index), taken from the background build if it is the one under way."""
        if self._next is not None and self._next[0] == (epoch, index):
            inst = self._next[1].result()
        else:
            inst = self._window_instances(epoch, index)
        self._next = None
        return inst

    def _prefetch(self, epoch: int, index: int) -> None:
        key = self._following(epoch, index)
        if self._next is None or self._next[0] != key:
            self._next = (key, self._pool.submit(self._window_instances, *key))

    def _window_at(self, position: int) -> _Window:
        """The window holding stream `position`, building windows forward as needed; windows
        wholly before `position` are dropped (reads only move forward)."""
        while self._windows and self._windows[0].end <= position:
            self._anchor = self._after(self._windows.pop(0))
        while not self._windows or self._windows[-1].end <= position:
            epoch, index, start, offset = self._after(self._windows[-1]) if self._windows else self._anchor
            inst = self._instances_of(epoch, index)
            last = index == len(self._plan(epoch)) - 1
            self._windows.append(_Window(epoch, index, start, offset, last, inst))
            self._prefetch(epoch, index)
        for w in self._windows:
            if w.start <= position < w.end:
                return w
        raise AssertionError("unreachable: windows cover the stream")  # internal bug

    def _after(self, w: _Window) -> tuple[int, int, int, int]:
        """(epoch, index, start, epoch_offset) of the window that follows `w`."""
        epoch, index = self._following(w.epoch, w.index)
        return epoch, index, w.end, 0 if w.last else w.epoch_offset + len(w.instances)

    def _read(self, position: int, n: int) -> dict[str, np.ndarray]:
        """Stream instances [position, position + n) as one assembled batch (may cross windows)."""
        parts = []
        while n:
            w = self._window_at(position)
            i = position - w.start
            take = np.arange(i, min(i + n, len(w.instances)))
            keys = instance_keys(self.seed, w.epoch, w.epoch_offset + take)
            parts.append(self._assemble(w.instances, take, keys))
            position += len(take)
            n -= len(take)
        return parts[0] if len(parts) == 1 else _concat(parts)

    @property
    def position(self) -> int:
        """The stream position of this rank's next micro-batch."""
        step, k = divmod(self.batches_read, self.accum)
        share = self.global_batch_size // self.world_size
        return step * self.global_batch_size + self.rank * share + k * self.micro_batch_size

    @property
    def epoch(self) -> int:
        """The epoch of this rank's next micro-batch."""
        return self._window_at(self.position).epoch

    # ------------------------------------------------------------------------------------------
    # Iteration

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.split == "val":
            yield from self._iter_val()
            return
        while True:
            batch = self._read(self.position, self.micro_batch_size)
            # state already points at the next batch while the consumer holds this one
            self.batches_read += 1
            yield _to_torch(batch)

    def _iter_val(self) -> Iterator[dict[str, torch.Tensor]]:
        mine = np.arange(self.rank, self._val_count(), self.world_size)
        for i in range(0, len(mine), self.micro_batch_size):
            take = mine[i : i + self.micro_batch_size]
            yield _to_torch(self._assemble(self._val, take, self._val_keys[take]))

    def __len__(self) -> int:
        """Batches in one pass of the validation split on this rank (the train split is endless)."""
        if self.split != "val":
            raise TypeError("the train split is endless; len() is defined for split='val'")
        n = len(range(self.rank, self._val_count(), self.world_size))
        return -(-n // self.micro_batch_size)

    def _val_count(self) -> int:
        return min(len(self._val), self.max_sequences) if self.max_sequences else len(self._val)

    def mean_tokens_per_sequence(self) -> float:
        """Mean real tokens per sequence ([CLS] and [SEP]s included): over the validation split,
        or over the first window of the train stream (what a FLOPs budget expects a sequence to
        cost; the first window is the whole epoch unless the corpus is larger than a window)."""
        inst = self._val if self.split == "val" else self._window_at(0).instances
        specials = np.where(inst.b_len > 0, 3, 2)
        return float((inst.a_len + inst.b_len + specials).mean())

    def window_sizes(self, epoch: int) -> list[int]:
        """Instances in each window of a train epoch (builds them all: for tests and benchmarks)."""
        return [len(self._window_instances(epoch, i)) for i in range(len(self._plan(epoch)))]

    def state_dict(self) -> dict[str, Any]:
        """The global stream position at the start of the step under way (the same on every rank;
        after a whole optimizer step, the next step's) and the window it falls in, so that a
        resumed reader builds only that window. Neither the world size nor the micro-batch is in
        it: a resumed reader may have others."""
        position = self.batches_read // self.accum * self.global_batch_size
        state: dict[str, Any] = {
            "version": 2,
            "split": self.split,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "objective": self.cfg.objective,
            "max_seq_len": self.cfg.max_seq_len,
            "shuffle_window_tokens": self.cfg.shuffle_window_tokens,
            "global_batch_size": self.global_batch_size,
            "position": position,
        }
        if self.split == "train":
            w = self._window_at(position)
            state["window"] = [w.epoch, w.index, w.start, w.epoch_offset]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved global position, with this reader's rank and world size."""
        if state.get("version") != 2:
            raise BertpldError(
                "data reader state: written by an older bertpld whose sample order differs; "
                "this run cannot be resumed exactly (start it again)"
            )
        mine = self.state_dict()
        for key in ("split", "seed", "fingerprint", "objective", "max_seq_len", "shuffle_window_tokens"):
            if state.get(key) != mine[key]:
                raise BertpldError(
                    f"data reader state: {key} was {state.get(key)!r}, now {mine[key]!r}; cannot resume"
                )
        # (the trainer refuses a change of the global batch; states written before the stream
        # was defined in steps lack it, and their positions are whole steps too)
        if state["position"] % self.global_batch_size:
            raise BertpldError(
                f"data reader state: position {state['position']} is not a whole number of steps of "
                f"{self.global_batch_size} sequences; cannot resume"
            )
        self.batches_read = state["position"] // self.global_batch_size * self.accum
        if self.split == "train":
            epoch, index, start, offset = (int(v) for v in state["window"])
            self._windows, self._next = [], None
            self._anchor = (epoch, index, start, offset)

    def close(self) -> None:
        """Stop the background window build (also done when the reader is garbage-collected)."""
        if self.split == "train":
            self._pool.shutdown(wait=False, cancel_futures=True)

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
