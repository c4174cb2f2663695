"""Blocks of raw records -> cleaned, encoded documents, in worker processes, in corpus order.

`bertpld prepare --workers N`: the corpus is cut, in order, into blocks of about BLOCK_CHARS
characters; N worker processes turn each block into documents (wiki markup stripped, cleaned,
split into sentences, hashed for the validation split, encoded). A block of local files that can
be cut (parquet, JSON lines, text, books) is a list of pieces that the worker reads itself
(bertpld.data.pieces): the main process never touches their text. Raw XML dumps (bz2 decompresses
sequentially) and hub streams are read by the main process, which cuts their raw records into
blocks. Results come back in block order as arrays, and only the main process counts, assigns and
writes, so the bytes cannot depend on N. At most IN_FLIGHT_PER_WORKER * N blocks are in flight,
so memory is bounded by N and the block size, not by the corpus. With one worker there is no pool:
the same function runs in the main process.

Why a process pool of our blocks and not `datasets.map(num_proc=...)`: the corpus is a stream of
several readers (dumps, books, jsonl, parquet, hub streams); `map(num_proc)` needs a materialised
`Dataset`, i.e. the whole corpus written to an Arrow cache first (disk and time growing with the
corpus), and `IterableDataset.map` has no `num_proc`.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from itertools import chain, islice
from types import TracebackType

import numpy as np
from tokenizers import Tokenizer

from bertpld.data import text as text_mod
from bertpld.data.pieces import Piece, PieceRead, plan_pieces, read_piece
from bertpld.data.sources import Part, Record, make_document
from bertpld.data.tokenizer import alphabet
from bertpld.errors import BertpldError

# Large enough that a block's inter-process traffic (~1 ms) is noise beside its cleaning and
# encoding (~0.4 s on one core), small enough for even load across workers and flat memory.
BLOCK_CHARS = 500_000
# Two blocks per worker keep every worker busy while the main process reads and writes.
IN_FLIGHT_PER_WORKER = 2


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# Reading: the corpus as blocks, in order (main process)


@dataclass
class Block:
    """Consecutive records of one part, in corpus order: raw `records`, `pieces` of its files that
    the worker reads, or on the second pass (documents read for the tokenizer sample, encoded once
    it exists) their cleaned `texts`."""

    occurrence: int  # index of the part among the parts read (a part name may occur twice)
    part: Part | None  # None only for an error opening a part
    records: list[Record] | None = None
    texts: list[str] | None = None
    pieces: list[Piece] | None = None
    # invalid UTF-8 bytes replaced in this part up to each record's read, and up to the block's
    # last read (which, for a part's last block, is the read that found the end)
    replaced: list[int] | None = None
    replaced_end: int = 0
    read_bytes: int = 0  # the part's meter after this block (progress)
    # A reading error, raised when the block is reached in order: reading runs ahead of the
    # counting, and the sequential reader never reaches it when max_documents ends the part first.
    error: BertpldError | None = None

    def most_documents(self, min_doc_chars: int) -> int:
        """An upper bound on the documents in the block (its records, or its pieces' bound)."""
        if self.pieces is not None:
            return sum(p.most_documents(min_doc_chars) for p in self.pieces)
        return len(self.records if self.records is not None else self.texts or ())


def read_blocks(parts: Iterator[Part], finished: Container[int]) -> Iterator[Block]:
    """Every part cut into blocks (pieces of its files, or its raw records read here); a part stops
    once `finished` holds its occurrence."""
    occurrence = 0
    while True:
        try:
            part = next(parts)
        except StopIteration:
            return
        except BertpldError as e:  # nothing after a part that cannot be opened is read
            yield Block(occurrence, None, error=e)
            return
        if part.files is not None:
            yield from _piece_blocks(occurrence, part, finished)
        else:
            yield from _part_blocks(occurrence, part, finished)
        occurrence += 1


def _piece_blocks(occurrence: int, part: Part, finished: Container[int]) -> Iterator[Block]:
    plan = plan_pieces(part, BLOCK_CHARS)
    pieces: list[Piece] = []
    chars = 0
    while occurrence not in finished:
        try:
            piece = next(plan, None)
        except BertpldError as e:  # a file that cannot be opened: raised when reached in order
            if pieces:
                yield Block(occurrence, part, pieces=pieces, read_bytes=part.meter.done)
            yield Block(occurrence, part, error=e)
            return
        if piece is not None:
            pieces.append(piece)
            chars += piece.chars
        if pieces and (piece is None or chars >= BLOCK_CHARS):
            yield Block(occurrence, part, pieces=pieces, read_bytes=part.meter.done)
            pieces, chars = [], 0
        if piece is None:
            return


def _part_blocks(occurrence: int, part: Part, finished: Container[int]) -> Iterator[Block]:
    start = text_mod.replaced_bytes()

    def pull() -> tuple[Record | None, BertpldError | None, int]:
        try:
            record, error = next(part.records), None
        except StopIteration:
            record, error = None, None
        except BertpldError as e:
            record, error = None, e
        return record, error, text_mod.replaced_bytes() - start

    # one record of lookahead, so that the block that ends the part knows it does
    record, error, replaced = pull()
    while record is not None and occurrence not in finished:
        records: list[Record] = []
        cumulative: list[int] = []
        chars = 0
        while record is not None and chars < BLOCK_CHARS:
            records.append(record)
            cumulative.append(replaced)
            chars += len(record)
            record, error, replaced = pull()
        yield Block(
            occurrence,
            part,
            records=records,
            replaced=cumulative,
            replaced_end=cumulative[-1] if record is not None else replaced,
            read_bytes=part.meter.done,
        )
    if error is not None and occurrence not in finished:
        yield Block(occurrence, part, error=error)


def until(stop: Callable[[], bool], blocks: Iterator[Block]) -> Iterator[Block]:
    """`blocks` until `stop()`, leaving the rest of `blocks` unread for a later pass."""
    while not stop():
        block = next(blocks, None)
        if block is None:
            return
        yield block


# ----------------------------------------------------------------------------------------------
# The work on one block (a worker process, or the main process with one worker)


@dataclass(frozen=True)
class Settings:
    """What a worker needs besides the block; `tokenizer` None: clean only (not trained yet)."""

    min_doc_chars: int
    split_key: bytes
    val_fraction: float
    tokenizer: str | None = None  # tokenizer.json
    tokenizer_sha256: str = ""
    dtype: str = "uint16"


@dataclass(frozen=True)
class Job:
    part: str
    records: list[Record] | None
    texts: list[str] | None
    settings: Settings
    # Per split (train, val): how many of the block's first documents of that split surely lie in
    # finished shards of an interrupted run, so are not encoded (a bound; see prepare).
    skip: tuple[int, int] = (0, 0)
    pieces: list[Piece] | None = None  # read here instead of `records`


@dataclass
class Cleaned:
    """A block's documents before the tokenizer exists (the tokenizer sample)."""

    kept: np.ndarray  # (R,) bool: records long enough to be documents
    chars: np.ndarray  # (D,) int64: characters of each document
    texts: list[str]  # (D,) sentences one per line
    alphabets: list[str]  # (D,) `tokenizer.alphabet` of each text
    pieces: list[PieceRead] | None = None  # what reading each piece counted (records left out)


@dataclass
class Encoded:
    """A block's documents as token arrays."""

    kept: np.ndarray | None  # as in Cleaned; None when the block held cleaned texts
    chars: np.ndarray | None
    is_val: np.ndarray  # (D,) bool
    encoded: np.ndarray  # (D,) bool; False: skipped as surely in a finished shard
    tokens: np.ndarray  # (T,) ids of all sentences, concatenated
    sentence_lens: np.ndarray  # (S,) int32, sentences of at least one token
    doc_sentences: np.ndarray  # (D,) int32; 0 for a skipped document or one without tokens
    pieces: list[PieceRead] | None = None  # as in Cleaned


def process(job: Job) -> Cleaned | Encoded:
    """Clean a block's raw records (unless given texts) and, once a tokenizer exists, encode them."""
    s = job.settings
    kept = chars = reads = None
    records = job.records
    if job.pieces is not None:
        reads = []
        for piece in job.pieces:
            reads.append(read_piece(piece))
            if reads[-1].error is not None:
                break  # the sequential reader stops there
        records = [r for read in reads for r in read.records]
        reads = [replace(read, records=[]) for read in reads]  # the counts go back, not the text
    if job.texts is None:
        assert records is not None
        docs = [make_document(job.part, r, s.min_doc_chars) for r in records]
        kept = np.fromiter((d is not None for d in docs), bool, len(docs))
        present = [d for d in docs if d is not None]
        texts = [d.text for d in present]
        chars = np.fromiter((d.chars for d in present), np.int64, len(present))
    else:
        texts = job.texts
    if s.tokenizer is None:
        assert kept is not None and chars is not None
        return Cleaned(kept, chars, texts, [alphabet(t) for t in texts], reads)
    is_val = np.fromiter((in_val(t, s.split_key, s.val_fraction) for t in texts), bool, len(texts))
    rank = np.where(is_val, np.cumsum(is_val), np.cumsum(~is_val)) - 1  # index within its split
    encoded = rank >= np.where(is_val, job.skip[1], job.skip[0])
    tok = _tokenizer(s.tokenizer, s.tokenizer_sha256)
    tokens, lens, nsent = encode_texts(tok, [t for t, e in zip(texts, encoded) if e], np.dtype(s.dtype))
    doc_sentences = np.zeros(len(texts), np.int32)
    doc_sentences[encoded] = nsent
    return Encoded(kept, chars, is_val, encoded, tokens, lens.astype(np.int32), doc_sentences, reads)


def in_val(text: str, key: bytes, fraction: float) -> bool:
    """Whether a document (its text, sentences one per line) is held out for validation."""
    if fraction <= 0:
        return False
    h = hashlib.blake2b(text.encode(), digest_size=8, key=key)
    return int.from_bytes(h.digest(), "little") < fraction * 2.0**64


def encode_texts(
    tok: Tokenizer, texts: list[str], dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents -> (tokens, lengths of the sentences with tokens, such sentences per document).

    One string per document with " [SEP] " between sentences: [SEP] is an added token, so it is
    cut out before normalisation and marks the sentence boundaries in the ids. Encoding documents
    rather than sentences keeps Python's per-encoding overhead ~200x smaller.
    """
    if not texts:
        return np.zeros(0, dtype), np.zeros(0, np.int64), np.zeros(0, np.int64)
    sep = tok.token_to_id("[SEP]")
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    ids = [e.ids for e in encode([_marked(t) for t in texts], add_special_tokens=False)]
    doc_len = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(doc_len.sum()))
    doc_end = np.cumsum(doc_len)
    sep_pos = np.flatnonzero(flat == sep)
    # sentence ends: every marker and every document end (a document end sorts before a marker
    # at the same position); a sentence after a marker starts one past it
    cuts = np.concatenate([doc_end, sep_pos])
    after_marker = np.concatenate([np.zeros(len(doc_end), bool), np.ones(len(sep_pos), bool)])
    order = np.argsort(cuts, kind="stable")
    cuts, after_marker = cuts[order], after_marker[order]
    starts = np.concatenate([[0], cuts[:-1] + after_marker[:-1]])
    lens = cuts - starts
    doc_of_sentence = np.searchsorted(doc_end, starts, side="right")
    keep = lens > 0  # a sentence of characters the tokenizer drops entirely carries nothing
    lens, doc_of_sentence = lens[keep], doc_of_sentence[keep]
    tokens = flat[flat != sep].astype(dtype)
    assert lens.sum() == len(tokens)
    return tokens, lens, np.bincount(doc_of_sentence, minlength=len(texts))


# Special-token strings inside the corpus text are ordinary text: "[MASK]" written in an article
# must not become the mask token (nor "[SEP]" a sentence boundary). A space defuses the match;
# BERT's pre-tokenizer splits "[" anyway, so the ids are those of the plain text.
_LITERAL_SPECIAL = re.compile(r"\[(PAD|UNK|CLS|SEP|MASK)\]")


def _marked(text: str) -> str:
    if "[" in text:
        text = _LITERAL_SPECIAL.sub(r"[ \1]", text)
    return text.replace("\n", " [SEP] ")


_LOADED: dict[str, Tokenizer] = {}  # by sha256: each process loads the tokenizer once


def _tokenizer(path: str, sha256: str) -> Tokenizer:
    tok = _LOADED.get(sha256)
    if tok is None:
        _LOADED.clear()
        tok = _LOADED[sha256] = Tokenizer.from_file(path)
    return tok


# ----------------------------------------------------------------------------------------------
# The pool


class Pool:
    """`process` over jobs in `workers` processes, results in job order; one worker, or a corpus of
    one block: in this process, no pool. Use as a context manager: leaving it by an exception
    cancels what is queued instead of waiting for it (and by Ctrl-C, what runs too)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._executor is not None:
            # Ctrl-C: leave at once. An error: cancel the queue but let the running jobs end, or
            # the executor's thread may still read a worker's pipe when the interpreter exits
            # ("Exception ignored ... Bad file descriptor" after the one-line error, seen in tests)
            interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
            self._executor.shutdown(wait=not interrupted, cancel_futures=True)

    def map(
        self, jobs: Iterable[tuple[Block, Job | None]]
    ) -> Iterator[tuple[Block, Cleaned | Encoded | None]]:
        """(block, result) in the order of `jobs`; a None job (an error block) gives None. `jobs`
        is read at most IN_FLIGHT_PER_WORKER * workers ahead of what was yielded."""
        jobs = iter(jobs)
        if self.workers > 1 and self._executor is None:
            # Starting processes costs ~1 s (an interpreter and imports each): not for one block.
            head = list(islice(jobs, 2))
            if len(head) == 2:
                self._start()
            jobs = chain(head, jobs)
        if self._executor is None:
            for block, job in jobs:
                yield block, None if job is None else process(job)
            return
        depth = IN_FLIGHT_PER_WORKER * self.workers
        pending: deque[tuple[Block, Future | None]] = deque()
        try:
            for block, job in jobs:
                pending.append((block, None if job is None else self._executor.submit(process, job)))
                if len(pending) >= depth:
                    block, fut = pending.popleft()
                    yield block, _result(fut)
            while pending:
                block, fut = pending.popleft()
                yield block, _result(fut)
        finally:
            for _, fut in pending:
                if fut is not None:
                    fut.cancel()

    def _start(self) -> None:
        # spawn, not fork: forking a process that runs threads (rich's refresh, tokenizers' pool)
        # can deadlock the child, and tokenizers disables itself in a child forked after use
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )


def _result(fut: Future | None) -> Cleaned | Encoded | None:
    if fut is None:
        return None
    try:
        return fut.result()
    except BrokenProcessPool:
        raise BertpldError(
            "prepare: a worker process died (killed? out of memory? or prepare() was called by a "
            "script without `if __name__ == '__main__':`, which worker processes re-import); "
            "rerun to resume at the first unfinished shard"
        ) from None
    except BertpldError as e:  # the same one line as without workers, not the worker's traceback
        raise BertpldError(str(e)) from None


def _init_worker(parent: int) -> None:
    # N worker processes already use N cores; tokenizers' own threads on top would oversubscribe them
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ctrl-C reaches the whole process group; the main process handles it and cancels the queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="bertpld-orphan-check").start()


def _exit_with(parent: int) -> None:
    # A worker waits for jobs on a pipe it also holds the writing end of, so a main process killed
    # with -9 would leave it waiting forever.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
