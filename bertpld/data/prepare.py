"""`bertpld prepare`: sources -> cleaned documents -> WordPiece -> token shards + manifest.

Deterministic: the same config gives the same bytes. Restartable: every shard is written under a
temporary name and renamed, and a progress file records each finished shard, so an interrupted
run resumes at the first unfinished shard (documents of finished shards are read again but not
encoded or written). `manifest.json` is written last; its presence means the directory is
complete, and a rerun with the same config is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from bertpld import __version__
from bertpld.atomic import atomic_write_bytes, atomic_write_json
from bertpld.config import PrepareConfig, config_differences, config_to_dict
from bertpld.data import text as text_mod
from bertpld.data import unigram
from bertpld.data.shards import FORMAT, MANIFEST, PROGRESS, Shard, sha256_file, token_dtype, write_shard
from bertpld.data.sources import Document, SourceStats, iter_documents
from bertpld.data.tokenizer import load_tokenizer, special_token_ids, train_tokenizer
from bertpld.errors import BertpldError

TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")
# Documents are encoded in batches of about this many characters: large enough for tokenizers'
# parallel batch encoding to pay off, small enough to keep memory flat.
ENCODE_BATCH_CHARS = 4_000_000


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


def prepare(
    cfg: PrepareConfig, out: str | Path, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Prepare `out` (see module docstring); returns the manifest."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    out = Path(out)
    sec = cfg.prepare
    config = config_to_dict(cfg)
    if out.exists() and not out.is_dir():
        raise BertpldError(f"--out {out}: exists and is not a directory")

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
    replaced0 = text_mod.replaced_bytes()
    stats = SourceStats()
    docs: Iterator[Document] = _prefetch(iter_documents(sec, stats))

    # 1. tokenizer: given, already trained by an interrupted run, or trained now on a sample
    tok_path = out / TOKENIZER
    if sec.tokenizer:
        tok = load_tokenizer(sec.tokenizer)
        atomic_write_bytes(tok_path, Path(sec.tokenizer).read_bytes())
    elif (
        state.get("tokenizer_sha256")
        and tok_path.is_file()
        and sha256_file(tok_path) == state["tokenizer_sha256"]
    ):
        tok = load_tokenizer(tok_path)
    else:
        sample: list[Document] = []
        chars = 0
        with console.status(
            f"reading up to {sec.tokenizer_sample_chars:,} characters to train the tokenizer"
        ):
            for doc in docs:
                sample.append(doc)
                chars += doc.chars
                if chars >= sec.tokenizer_sample_chars:
                    break
        if not sample:
            raise _no_documents(stats, sec.min_doc_chars)
        with console.status(f"training WordPiece (vocab {sec.vocab_size:,}) on {chars:,} characters"):
            tok = train_tokenizer((d.text for d in sample), sec.vocab_size)
        atomic_write_bytes(tok_path, tok.to_str(pretty=True).encode())
        docs = chain(sample, docs)  # the sample is encoded like every other document
    tok_sha = sha256_file(tok_path)
    if state.get("tokenizer_sha256") != tok_sha:
        state["shards"] = {}  # shards of an interrupted run are only valid with its tokenizer
    t_tok = time.perf_counter() - t0
    vocab_size = tok.get_vocab_size()
    dtype = token_dtype(vocab_size)
    splits = {s: _SplitState(s, list(state.get("shards", {}).get(s, []))) for s in SPLITS}
    _write_progress(out, config, tok_sha, splits)

    # 2. encode and shard
    seed_key = sec.seed.to_bytes(8, "little", signed=True)
    n_docs = n_tokens = 0
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("encoding")
        t1 = time.perf_counter()
        for batch in _batches(docs):
            todo: dict[str, list[Document]] = {s: [] for s in SPLITS}
            for doc in batch:
                split = "val" if _is_val(doc, seed_key, sec.val_fraction) else "train"
                st = splits[split]
                if st.next_ordinal >= st.done_ordinal:  # else: already in a finished shard
                    todo[split].append(doc)
                st.next_ordinal += 1
            for split, split_docs in todo.items():
                if split_docs:
                    st = splits[split]
                    first = st.next_ordinal - len(split_docs)
                    n_tokens += _encode_into(tok, split_docs, dtype, st, first)
                    while st.buffered_tokens >= sec.shard_tokens:
                        _flush(out, st, sec.shard_tokens, config, tok_sha, splits)
            n_docs += len(batch)
            dt = max(time.perf_counter() - t1, 1e-9)
            bar.update(
                task,
                description=f"{n_docs:,} documents ({n_docs / dt:,.0f}/s), "
                f"{n_tokens:,} tokens encoded ({n_tokens / dt:,.0f}/s)",
            )
        for st in splits.values():
            while st.buffered_tokens > 0:
                _flush(out, st, sec.shard_tokens, config, tok_sha, splits)
    t_enc = time.perf_counter() - t1

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
        "replaced_bytes": text_mod.replaced_bytes() - replaced0,
        "timing_s": {"tokenizer": round(t_tok, 3), "encode_and_write": round(t_enc, 3)},
    }
    # the loss of a model that ignores context (see bertpld.data.unigram); none without validation data
    manifest[unigram.MANIFEST_KEY] = (
        round(unigram.val_unigram_ce(out, manifest), 6) if manifest["splits"]["val"]["tokens"] else None
    )
    atomic_write_json(out / MANIFEST, manifest)
    _summary(console, out, manifest, time.perf_counter() - t0)
    return manifest


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


def _write_progress(out: Path, config: dict[str, Any], tok_sha: str, splits: dict[str, _SplitState]) -> None:
    atomic_write_json(
        out / PROGRESS,
        {
            "config": config,
            "tokenizer_sha256": tok_sha,
            "shards": {s: st.records for s, st in splits.items()},
        },
    )


# ----------------------------------------------------------------------------------------------
# Encoding and sharding


def _is_val(doc: Document, key: bytes, fraction: float) -> bool:
    if fraction <= 0:
        return False
    h = hashlib.blake2b(doc.text.encode(), digest_size=8, key=key)
    return int.from_bytes(h.digest(), "little") < fraction * 2.0**64


def _encode_into(tok: Tokenizer, docs: list[Document], dtype: np.dtype, st: _SplitState, first: int) -> int:
    """Encode `docs` (parallel batch encoding) and buffer them in `st`; returns tokens added.

    One string per document with " [SEP] " between sentences: [SEP] is an added token, so it is
    cut out before normalisation and marks the sentence boundaries in the ids. Encoding documents
    rather than sentences keeps Python's per-encoding overhead ~200x smaller.
    """
    sep = tok.token_to_id("[SEP]")
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    ids = [e.ids for e in encode([_marked(d) for d in docs], add_special_tokens=False)]
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
    doc_nsent = np.bincount(doc_of_sentence, minlength=len(docs))
    ordinals = np.arange(first, first + len(docs), dtype=np.int64)
    nonempty = doc_nsent > 0
    st.pieces.append((tokens, lens, doc_nsent[nonempty], ordinals[nonempty]))
    st.buffered_tokens += len(tokens)
    return len(tokens)


# Special-token strings inside the corpus text are ordinary text: "[MASK]" written in an article
# must not become the mask token (nor "[SEP]" a sentence boundary). A space defuses the match;
# BERT's pre-tokenizer splits "[" anyway, so the ids are those of the plain text.
_LITERAL_SPECIAL = re.compile(r"\[(PAD|UNK|CLS|SEP|MASK)\]")


def _marked(doc: Document) -> str:
    text = doc.text
    if "[" in text:
        text = _LITERAL_SPECIAL.sub(r"[ \1]", text)
    return text.replace("\n", " [SEP] ")


def _flush(
    out: Path, st: _SplitState, shard_tokens: int, config: dict, tok_sha: str, splits: dict[str, _SplitState]
) -> None:
    """Write the next shard of `st`: whole documents, about `shard_tokens` tokens."""
    tokens = np.concatenate([p[0] for p in st.pieces])
    lens = np.concatenate([p[1] for p in st.pieces])
    doc_nsent = np.concatenate([p[2] for p in st.pieces])
    ordinals = np.concatenate([p[3] for p in st.pieces])
    sent_off = np.concatenate([[0], np.cumsum(lens)])
    doc_off = np.concatenate([[0], np.cumsum(doc_nsent)])
    doc_tok_end = sent_off[doc_off[1:]]
    # the shard ends with the document that reaches shard_tokens (all documents at the end)
    n_docs = min(int(np.searchsorted(doc_tok_end, shard_tokens)) + 1, len(doc_nsent))
    n_sent = int(doc_off[n_docs])
    n_tok = int(sent_off[n_sent])
    rel = f"{st.name}/shard-{len(st.records):05d}.npz"
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


def _batches(docs: Iterator[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += doc.chars
        if chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _prefetch(it: Iterator[Document], depth: int = 256) -> Iterator[Document]:
    """Read and clean documents in a thread while the main thread encodes (tokenizers releases
    the GIL while encoding, so reading and encoding overlap)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    thread = threading.Thread(target=work, daemon=True, name="bertpld-read")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


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
