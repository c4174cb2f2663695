"""`bertpld prepare`: sources -> cleaned documents -> WordPiece -> token shards + manifest.

Deterministic: the same config gives the same bytes, with any number of worker processes (see
bertpld.data.workers: they clean and encode blocks of documents; this process alone counts,
assigns documents to splits and writes, in corpus order). Restartable: every shard is written
under a temporary name and renamed, and a progress file records each finished shard, so an
interrupted run resumes at the first unfinished shard (documents of finished shards are read and
cleaned again, but neither written nor, except near the boundary, encoded). `manifest.json` is
written last; its presence means the directory is complete, and a rerun with the same config is
a no-op. One writer per directory: prepare holds DIR/.lock (bertpld.lock) while it runs, and a
write that fails (full disk, permissions) stops it with a one-line error, resumable as above.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from bertpld import __version__, lock
from bertpld.atomic import atomic_write_bytes, atomic_write_json
from bertpld.config import (
    PREPARE_SPEED_ONLY,
    PrepareConfig,
    PrepareSection,
    config_differences,
    config_to_dict,
)
from bertpld.data import pieces as pieces_mod
from bertpld.data import unigram
from bertpld.data.shards import (
    FORMAT,
    MANIFEST,
    PROGRESS,
    VERIFIED,
    Shard,
    sha256_file,
    token_dtype,
    verified_mark,
    write_shard,
    write_verified,
)
from bertpld.data.sources import Part, PartStats, SourceStats, iter_parts
from bertpld.data.tokenizer import load_tokenizer, special_token_ids, train_tokenizer
from bertpld.data.workers import (
    Block,
    Cleaned,
    Encoded,
    Job,
    Pool,
    Settings,
    default_workers,
    read_blocks,
    until,
)
from bertpld.errors import BertpldError

TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")


@dataclass
class _SplitState:
    """Shards of one split: finished records, and the documents buffered for the next shard."""

    name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    buffered_tokens: int = 0
    next_ordinal: int = 0  # split-local index of the next document seen in the stream

    @property
    def done_ordinal(self) -> int:
        return self.records[-1]["end_ordinal"] if self.records else 0


def fingerprint(config: dict[str, Any], tokenizer_sha256: str) -> str:
    """The identity of a prepared dataset: its resolved config and its tokenizer."""
    blob = json.dumps(config, sort_keys=True) + tokenizer_sha256
    return hashlib.sha256(blob.encode()).hexdigest()


def recorded_config(cfg: PrepareConfig) -> dict[str, Any]:
    """The resolved config as the manifest records it: without the settings that change only speed
    (workers), so that the fingerprint, and a rerun's no-op check, do not depend on them."""
    config = config_to_dict(cfg)
    for name in PREPARE_SPEED_ONLY:
        del config["prepare"][name]
    return config


def prepare(
    cfg: PrepareConfig, out: str | Path, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Prepare `out` (see module docstring); returns the manifest."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    out = Path(out)
    config = recorded_config(cfg)
    if out.exists() and not out.is_dir():
        raise BertpldError(f"--out {out}: exists and is not a directory")
    with lock.hold(out, "bertpld prepare"):
        return _prepare(cfg, out, overwrite, config, console)


def _prepare(
    cfg: PrepareConfig, out: Path, overwrite: bool, config: dict[str, Any], console: Any
) -> dict[str, Any]:
    sec = cfg.prepare
    done = _existing(out, config, overwrite)
    if done is not None:
        console.print(f"[green]{out}[/] is already prepared with this config (nothing to do)")
        return done
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:  # temp files of an interrupted run
        for tmp in (out / split).glob(".*.tmp") if (out / split).is_dir() else ():
            tmp.unlink(missing_ok=True)
    state = _read_progress(out)
    t0 = time.perf_counter()
    workers = sec.workers or default_workers()
    settings = Settings(sec.min_doc_chars, sec.seed.to_bytes(8, "little", signed=True), sec.val_fraction)
    with Pool(workers) as pool:
        corpus = _Corpus(sec)
        # 1. tokenizer: given, already trained by an interrupted run, or trained now on a sample
        tok_path = out / TOKENIZER
        sampled: deque[Block] = deque()  # documents read for the sample, encoded once it is trained
        if sec.tokenizer:
            tok = load_tokenizer(sec.tokenizer)
            data = Path(sec.tokenizer).read_bytes()
            with _writing(tok_path):
                atomic_write_bytes(tok_path, data)
        elif (
            state.get("tokenizer_sha256")
            and tok_path.is_file()
            and sha256_file(tok_path) == state["tokenizer_sha256"]
        ):
            tok = load_tokenizer(tok_path)
        else:
            texts, alphabets, chars = _read_sample(
                pool, corpus, settings, sec.tokenizer_sample_chars, sampled, console
            )
            with console.status(f"training WordPiece (vocab {sec.vocab_size:,}) on {chars:,} characters"):
                tok = train_tokenizer(texts, sec.vocab_size, alphabets)
            del texts, alphabets
            with _writing(tok_path):
                atomic_write_bytes(tok_path, tok.to_str(pretty=True).encode())
        tok_sha = sha256_file(tok_path)
        if state.get("tokenizer_sha256") != tok_sha:
            state["shards"] = {}  # shards of an interrupted run are only valid with its tokenizer
        t_tok = time.perf_counter() - t0
        vocab_size = tok.get_vocab_size()
        dtype = token_dtype(vocab_size)
        splits = {s: _SplitState(s, list(state.get("shards", {}).get(s, []))) for s in SPLITS}
        _write_progress(out, config, tok_sha, splits)

        # 2. encode and shard
        settings = replace(settings, tokenizer=str(tok_path), tokenizer_sha256=tok_sha, dtype=dtype.name)
        t1 = time.perf_counter()
        n_docs, n_tokens = _encode_and_shard(
            pool, corpus, settings, sampled, out, sec.shard_tokens, config, tok_sha, splits, console
        )
        t_enc = time.perf_counter() - t1

    stats = corpus.stats
    if sum(p.kept for p in stats.parts.values()) == 0:
        raise _no_documents(stats, sec.min_doc_chars)
    if not splits["train"].records:
        raise BertpldError(
            f"prepare.val_fraction: all documents went to validation (val_fraction={sec.val_fraction})"
        )

    # 3. manifest, written last
    manifest = {
        "format": FORMAT,
        "bertpld_version": __version__,
        "vocab_size": vocab_size,
        "token_dtype": dtype.name,
        "tokenizer": TOKENIZER,
        "tokenizer_sha256": tok_sha,
        "special_tokens": special_token_ids(tok),
        "fingerprint": fingerprint(config, tok_sha),
        "config": config,
        "splits": {s: _split_summary(splits[s]) for s in SPLITS},
        "sources": {k: asdict(v) for k, v in stats.parts.items()},
        "replaced_bytes": corpus.replaced,
        "timing_s": {"tokenizer": round(t_tok, 3), "encode_and_write": round(t_enc, 3)},
    }
    # the loss of a model that ignores context (see bertpld.data.unigram); none without validation data
    manifest[unigram.MANIFEST_KEY] = (
        round(unigram.val_unigram_ce(out, manifest), 6) if manifest["splits"]["val"]["tokens"] else None
    )
    # the shards were hashed as they were written: readers need not hash them again (recorded
    # before the manifest, so that the manifest is the last file written)
    write_verified(out, {r["path"]: verified_mark(out, r) for s in SPLITS for r in splits[s].records})
    with _writing(out / MANIFEST):
        atomic_write_json(out / MANIFEST, manifest)
    (out / PROGRESS).unlink(missing_ok=True)  # finished: the manifest holds what it held
    seconds = time.perf_counter() - t0
    _summary(console, out, manifest, seconds)
    console.print(
        f"prepared {n_docs:,} documents, {n_tokens:,} tokens in {seconds:.1f} s "
        f"({n_docs / seconds:,.0f} documents/s, {n_tokens / seconds:,.0f} tokens/s) with {workers} "
        f"worker process{'es' if workers > 1 else ''}"
    )
    return manifest


# ----------------------------------------------------------------------------------------------
# Reading and counting


class _Corpus:
    """The corpus as blocks in order, with the counting `sources.iter_documents` does (records
    read, kept and dropped per part, max_documents, invalid UTF-8 replaced), done here from what
    the workers return: reading runs ahead of the counting, so read-ahead must not count."""

    def __init__(self, sec: PrepareSection) -> None:
        self.max_documents: int = sec.max_documents
        self.stats = SourceStats()
        self.finished: set[int] = set()  # occurrences of parts that reached max_documents
        self.replaced = 0
        self._replaced_at: dict[int, int] = {}
        self._file_has_records = False  # the file of the latest piece counted: not an 'empty file'
        self.blocks = read_blocks(self._register(iter_parts(sec)), self.finished)

    def _register(self, parts: Iterator[Part]) -> Iterator[Part]:
        for part in parts:  # in reading order, as iter_documents creates the stats entries
            self.stats.parts.setdefault(part.name, PartStats())
            yield part

    def skipped(self, block: Block) -> bool:
        """A block read ahead of a part that has since reached max_documents: as if never read.
        (Blocks of cleaned texts were counted, and cut at max_documents, when first read.)"""
        if block.texts is None and block.occurrence in self.finished:
            return True
        if block.error is not None:
            raise block.error
        return False

    def count(self, block: Block, res: Cleaned | Encoded) -> int:
        """Count a block's records as iter_documents would; returns how many documents count.
        Raises what the sequential reader raises after them (a bad row, an empty file)."""
        assert block.part is not None and res.kept is not None and res.chars is not None
        st = self.stats.parts[block.part.name]
        if block.pieces is None:
            assert block.replaced is not None
            n_records, n_docs = self._take(block.occurrence, st, res.kept, res.chars)
            finished = block.occurrence in self.finished
            self._replaced(block, block.replaced[n_records - 1] if finished else block.replaced_end)
            return n_docs
        assert res.pieces is not None
        replaced = self._replaced_at.get(block.occurrence, 0)  # in the part before this piece
        records = docs = 0  # of the block before this piece
        for piece, read in zip(block.pieces, res.pieces):
            n = len(read.replaced)
            n_records, n_docs = self._take(
                block.occurrence, st, res.kept[records : records + n], res.chars[docs:]
            )
            docs += n_docs
            if block.occurrence in self.finished:
                # as the sequential reader: the bytes it had replaced when it read the last record
                replaced += read.replaced[n_records - 1] + pieces_mod.replaced_after(piece)
                break
            records += n
            replaced += read.replaced_total
            if read.error is not None:
                raise pieces_mod.piece_error(piece, read)
            self._file_has_records = (self._file_has_records and not piece.first) or not read.empty
            if piece.last and not self._file_has_records:
                raise pieces_mod.empty_file_error(piece)
        self._replaced(block, replaced)
        return docs

    def _take(self, occurrence: int, st: PartStats, kept: np.ndarray, chars: np.ndarray) -> tuple[int, int]:
        """Count records (`kept`: long enough; `chars` of the kept ones) up to max_documents;
        returns the records and documents counted."""
        cumulative = np.cumsum(kept)
        n_records = len(kept)
        if self.max_documents:
            full = np.flatnonzero(kept & (st.kept + cumulative >= self.max_documents))
            if len(full):
                n_records = int(full[0]) + 1
                self.finished.add(occurrence)
        n_docs = int(cumulative[n_records - 1]) if n_records else 0
        st.read += n_records
        st.kept += n_docs
        st.dropped_short += n_records - n_docs
        st.chars += int(chars[:n_docs].sum())
        return n_records, n_docs

    def _replaced(self, block: Block, replaced: int) -> None:
        """`replaced`: invalid UTF-8 bytes replaced in the block's part through this block."""
        self.replaced += replaced - self._replaced_at.get(block.occurrence, 0)
        self._replaced_at[block.occurrence] = replaced


def _jobs(
    blocks: Iterator[Block], settings: Settings, skip: Callable[[Block], tuple[int, int]] | None = None
) -> Iterator[tuple[Block, Job | None]]:
    for block in blocks:
        if block.error is not None:
            yield block, None
            continue
        assert block.part is not None
        bound = skip(block) if skip is not None else (0, 0)
        yield block, Job(block.part.name, block.records, block.texts, settings, bound, block.pieces)


def _read_sample(
    pool: Pool,
    corpus: _Corpus,
    settings: Settings,
    limit: int,
    sampled: deque[Block],
    console: Any,
) -> tuple[list[str], list[str], int]:
    """The first documents up to `limit` characters (texts, alphabets, characters), cleaned by the
    workers.

    Every document cleaned on the way, the sample and those read ahead past it, is appended to
    `sampled` (as blocks of texts) to be encoded first once the tokenizer exists."""
    texts: list[str] = []
    alphabets: list[str] = []
    chars = 0

    def full() -> bool:  # read on: blocks already out are cleaned and kept for encoding
        return chars >= limit

    with console.status("reading documents for the tokenizer") as status:
        for block, res in pool.map(_jobs(until(full, corpus.blocks), settings)):
            if corpus.skipped(block):
                continue
            assert isinstance(res, Cleaned)
            n = corpus.count(block, res)
            if n:
                sampled.append(
                    Block(block.occurrence, block.part, texts=res.texts[:n], read_bytes=block.read_bytes)
                )
            for i in range(n):
                if chars >= limit:
                    break
                texts.append(res.texts[i])
                alphabets.append(res.alphabets[i])
                chars += int(res.chars[i])
            status.update(
                f"reading documents for the tokenizer: {chars:,} of up to {limit:,} characters "
                f"({pool.workers} worker process{'es' if pool.workers > 1 else ''})"
            )
    if not texts:
        raise _no_documents(corpus.stats, settings.min_doc_chars)
    return texts, alphabets, chars


# ----------------------------------------------------------------------------------------------
# Encoding and sharding


def _encode_and_shard(
    pool: Pool,
    corpus: _Corpus,
    settings: Settings,
    sampled: deque[Block],
    out: Path,
    shard_tokens: int,
    config: dict[str, Any],
    tok_sha: str,
    splits: dict[str, _SplitState],
    console: Any,
) -> tuple[int, int]:
    """Encode every document (the sample's first, then the rest of the corpus) and write the
    shards; returns (documents, tokens) encoded."""
    outstanding = 0  # documents, at most, in blocks handed out but not yet back

    def skip(block: Block) -> tuple[int, int]:
        # Where a document lies in its split is known only once every block before it is back,
        # but a bound is enough: a split's ordinal at this block's start is at most the ordinal
        # reached so far plus one per record still out. Documents within that bound of the first
        # unfinished shard's start are surely in finished shards and need no encoding.
        nonlocal outstanding
        train, val = (max(0, splits[s].done_ordinal - (splits[s].next_ordinal + outstanding)) for s in SPLITS)
        outstanding += block.most_documents(settings.min_doc_chars)
        return train, val

    def second_pass() -> Iterator[Block]:
        while sampled:
            yield sampled.popleft()  # memory freed as the encoding goes

    progress = _Progress(console)
    n_docs = n_tokens = 0
    with progress:
        for block, res in pool.map(_jobs(chain(second_pass(), corpus.blocks), settings, skip)):
            outstanding -= block.most_documents(settings.min_doc_chars)
            if corpus.skipped(block):
                continue
            assert isinstance(res, Encoded) and block.part is not None
            if res.kept is None:  # the sample's documents, counted when first read
                n = len(res.is_val)
            else:
                n = corpus.count(block, res)
            tokens = _assign(res, n, splits)
            for st in splits.values():
                while st.buffered_tokens >= shard_tokens:
                    _flush(out, st, shard_tokens, config, tok_sha, splits)
            n_docs += n
            n_tokens += tokens
            progress.advance(block, n, tokens)
        for st in splits.values():
            while st.buffered_tokens > 0:
                _flush(out, st, shard_tokens, config, tok_sha, splits)
    return n_docs, n_tokens


def _assign(res: Encoded, n: int, splits: dict[str, _SplitState]) -> int:
    """Buffer the first `n` documents of an encoded block in their splits, except documents of
    finished shards; returns the tokens buffered."""
    nsent = res.doc_sentences[:n]
    sent_end = np.cumsum(nsent, dtype=np.int64)  # (D,) each document's sentences end here
    tok_end = np.concatenate([[0], np.cumsum(res.sentence_lens[: sent_end[-1] if n else 0], dtype=np.int64)])
    is_val = res.is_val[:n]
    added = 0
    for name, members in (("train", ~is_val), ("val", is_val)):
        st = splits[name]
        idx = np.flatnonzero(members)
        ordinals = np.full(n, -1, np.int64)
        ordinals[idx] = np.arange(st.next_ordinal, st.next_ordinal + len(idx))
        st.next_ordinal += len(idx)
        take = np.zeros(n, bool)
        take[idx] = ordinals[idx] >= st.done_ordinal
        assert res.encoded[:n][take].all(), "a worker skipped a document of an unfinished shard"
        take &= nsent > 0  # a document without tokens is only an ordinal
        if not take.any():
            continue
        # runs of consecutive documents taken (one or two per block, the other split's documents
        # being few or far between): copied as slices, not gathered token by token
        edges = np.flatnonzero(np.diff(take, prepend=False, append=False))
        first, end = edges[0::2], edges[1::2]  # documents first..end-1 of each run
        sents = [(int(sent_end[a] - nsent[a]), int(sent_end[b - 1])) for a, b in zip(first, end)]
        piece = (
            np.concatenate([res.tokens[tok_end[a] : tok_end[b]] for a, b in sents]),
            np.concatenate([res.sentence_lens[a:b] for a, b in sents]),
            nsent[take],
            ordinals[take],
        )
        st.pieces.append(piece)
        st.buffered_tokens += len(piece[0])
        added += len(piece[0])
    return added


# ----------------------------------------------------------------------------------------------
# Directory state: complete, in progress, or foreign


def _existing(out: Path, config: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The manifest when `out` is complete with this config; refuse or clear a different one."""
    manifest_path, progress_path = out / MANIFEST, out / PROGRESS
    previous: dict[str, Any] | None = None
    for p in (manifest_path, progress_path):
        if p.is_file():
            try:
                previous = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                previous = {"config": None}
            break
    if previous is None:
        return None
    if previous.get("config") == config:
        if previous is not None and manifest_path.is_file() and _files_intact(out, previous):
            return previous
        manifest_path.unlink(missing_ok=True)  # incomplete after all: resume
        return None
    if not overwrite:
        diff = config_differences(previous.get("config") or {}, config)
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:4])
        raise BertpldError(
            f"--out {out}: already prepared with a different config ({shown}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    # The manifest goes first, so that a crash while clearing never leaves a "complete" directory.
    manifest_path.unlink(missing_ok=True)
    progress_path.unlink(missing_ok=True)
    (out / TOKENIZER).unlink(missing_ok=True)
    (out / VERIFIED).unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    return None


def _files_intact(out: Path, manifest: dict[str, Any]) -> bool:
    for split in manifest.get("splits", {}).values():
        for rec in split.get("shards", []):
            p = out / rec["path"]
            if not p.is_file() or p.stat().st_size != rec["size"]:
                return False
    return (out / TOKENIZER).is_file()


def _read_progress(out: Path) -> dict[str, Any]:
    p = out / PROGRESS
    if not p.is_file():
        return {}
    state = json.loads(p.read_text())
    # keep only the finished shards that are still on disk, in order
    for split, recs in state.get("shards", {}).items():
        kept = []
        for rec in recs:
            f = out / rec["path"]
            if not (f.is_file() and f.stat().st_size == rec["size"]):
                break
            kept.append(rec)
        state["shards"][split] = kept
    return state


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A write that fails (full disk, permissions) is a one-line error; the atomic writes leave the
    file as it was and no temporary file, and a rerun of the same command resumes."""
    try:
        yield
    except OSError as e:
        raise BertpldError(
            f"{path}: write failed ({e.strerror or e}); prepare stopped, the shards written before are "
            "intact: free space or fix permissions, then run the same command again (it resumes)"
        ) from None


def _write_progress(out: Path, config: dict[str, Any], tok_sha: str, splits: dict[str, _SplitState]) -> None:
    progress = {
        "config": config,
        "tokenizer_sha256": tok_sha,
        "shards": {s: st.records for s, st in splits.items()},
    }
    with _writing(out / PROGRESS):
        atomic_write_json(out / PROGRESS, progress)


# ----------------------------------------------------------------------------------------------
# Shards and progress


def _flush(
    out: Path, st: _SplitState, shard_tokens: int, config: dict, tok_sha: str, splits: dict[str, _SplitState]
) -> None:
    """Write the next shard of `st`: whole documents, about `shard_tokens` tokens."""
    tokens = np.concatenate([p[0] for p in st.pieces])
    lens = np.concatenate([p[1] for p in st.pieces])
    doc_nsent = np.concatenate([p[2] for p in st.pieces])
    ordinals = np.concatenate([p[3] for p in st.pieces])
    sent_off = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
    doc_off = np.concatenate([[0], np.cumsum(doc_nsent, dtype=np.int64)])
    doc_tok_end = sent_off[doc_off[1:]]
    # the shard ends with the document that reaches shard_tokens (all documents at the end)
    n_docs = min(int(np.searchsorted(doc_tok_end, shard_tokens)) + 1, len(doc_nsent))
    n_sent = int(doc_off[n_docs])
    n_tok = int(sent_off[n_sent])
    rel = f"{st.name}/shard-{len(st.records):05d}.npz"
    with _writing(out / rel):
        info = write_shard(
            out / rel, Shard(tokens[:n_tok], sent_off[: n_sent + 1], doc_off[: n_docs + 1].astype(np.int64))
        )
    st.records.append(
        {
            "path": rel,
            **info,
            "tokens": n_tok,
            "documents": n_docs,
            "sentences": n_sent,
            "end_ordinal": int(ordinals[n_docs - 1]) + 1,
        }
    )
    rest = (tokens[n_tok:], lens[n_sent:], doc_nsent[n_docs:], ordinals[n_docs:])
    st.pieces = [rest] if len(rest[2]) else []
    st.buffered_tokens = len(rest[0])
    _write_progress(out, config, tok_sha, splits)


def _split_summary(st: _SplitState) -> dict[str, Any]:
    return {
        "tokens": sum(r["tokens"] for r in st.records),
        "documents": sum(r["documents"] for r in st.records),
        "sentences": sum(r["sentences"] for r in st.records),
        "shards": [
            {k: r[k] for k in ("path", "size", "sha256", "tokens", "documents", "sentences")}
            for r in st.records
        ],
    }


@dataclass
class _PartRate:
    task: Any  # rich TaskID
    total: int | None
    start: float
    documents: int = 0
    tokens: int = 0


class _Progress:
    """Per source part: documents/s, tokens/s, and the share of its files read, with an ETA
    (a hub stream's size is unknown: no ETA)."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=console.quiet,  # no refresh thread rendering for nobody (~1% of a core)
        )
        self.parts: dict[int, _PartRate] = {}  # by occurrence
        self.last = time.perf_counter()  # when the latest block came back (or the encoding began)

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._finish()
        self.bar.__exit__(*exc)

    def advance(self, block: Block, documents: int, tokens: int) -> None:
        assert block.part is not None
        total = block.part.meter.total
        now = time.perf_counter()
        if block.occurrence not in self.parts:
            self._finish()
            task = self.bar.add_task(block.part.name, total=total)
            # a part's work began when the block before its first came back
            self.parts[block.occurrence] = _PartRate(task, total, self.last)
        self.last = now
        rate = self.parts[block.occurrence]
        rate.documents += documents
        rate.tokens += tokens
        dt = max(now - rate.start, 1e-9)
        self.bar.update(
            rate.task,
            completed=block.read_bytes,
            description=f"{block.part.name}: {rate.documents:,} documents ({rate.documents / dt:,.0f}/s), "
            f"{rate.tokens:,} tokens ({rate.tokens / dt:,.0f}/s)"
            + (" (streamed: size unknown, no ETA)" if total is None else ""),
        )

    def _finish(self) -> None:
        # parts are read in order: a part is done once the next one starts (or all are)
        for rate in self.parts.values():
            if rate.total is not None:
                self.bar.update(rate.task, completed=rate.total)


def _no_documents(stats: SourceStats, min_chars: int) -> BertpldError:
    read = sum(p.read for p in stats.parts.values())
    return BertpldError(
        f"prepare.sources: the corpus yielded no documents ({read} read, none with at least "
        f"prepare.min_doc_chars={min_chars} characters)"
    )


def _summary(console: Any, out: Path, manifest: dict[str, Any], seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"bertpld prepare -> {out}  ({seconds:.1f} s)")
    for col in ("split", "shards", "documents", "sentences", "tokens"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in manifest["splits"].items():
        table.add_row(
            name, str(len(s["shards"])), f"{s['documents']:,}", f"{s['sentences']:,}", f"{s['tokens']:,}"
        )
    console.print(table)
    parts = ", ".join(f"{k}: {v['kept']:,} kept / {v['read']:,} read" for k, v in manifest["sources"].items())
    console.print(f"sources: {parts}")
    console.print(
        f"vocab {manifest['vocab_size']:,} ({manifest['token_dtype']}), "
        f"invalid UTF-8 bytes replaced: {manifest['replaced_bytes']:,}, fingerprint {manifest['fingerprint'][:12]}"
    )
    ce = manifest.get(unigram.MANIFEST_KEY)
    if ce is not None:
        console.print(
            f"unigram line: {ce:.3f} nats (validation cross-entropy under the training token frequencies; "
            "the MLM loss of a model that ignores context)"
        )
