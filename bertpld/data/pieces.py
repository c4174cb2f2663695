"""Local corpus files cut into pieces that worker processes read by themselves.

With `prepare --workers N`, reading every record in the main process (parsing JSON, converting
parquet rows to Python strings, splitting text files) and pickling it to the workers costs the
main process ~0.07-0.16 us of CPU per token (measured on local JSON lines, parquet and parquet
sentence rows): at BERT's ~4B tokens, 5-11 minutes however many workers there are. So for a part
whose files all have a layout that can be cut (`sources.Part.files`), the main process only plans
pieces, from file sizes, a few bytes around each cut and parquet metadata, and each worker reads
its pieces itself (`read_piece`); the main process is left ~0.05 us per token (counting, assigning,
writing shards). The pieces of a file tile it exactly, in order, at record boundaries, so the
records read piece by piece are those the sequential reader (`sources.iter_parts`) yields:

- parquet: rows start..stop of one or more row groups, about `target` characters by the metadata's
  sizes. A worker decodes a row group from its first row up to its piece, so a large row group is
  split into at most MAX_SLICES pieces (re-decoding costs ~1/600 of cleaning and encoding a row);
- parquet rows of sentences grouped into documents (BookCorpus): a document ends where the rows
  since the last end reach BOOK_DOC_CHARS characters, which depends on every row before, so the
  planner reads the text column and its lengths (in C, ~3 ns per character; no Python string per
  row) and cuts at document ends;
- JSON lines: byte ranges cut after a newline;
- plain text with blank-line documents: byte ranges cut after a blank line (the documents are the
  same whichever blank line is cut, since no document spans one);
- plain-text books: whole files (their documents are grouped across the whole book).

What the sequential reader counts is reproduced: the invalid UTF-8 bytes it had replaced when it
read each record (its read-ahead included: 8 KiB chunks for JSON lines, the whole file for text),
'empty file' for a file without records, a bad row's line number. Raw XML dumps (bz2 decompresses
sequentially) and hub streams are not cut: the main process reads those (bertpld.data.workers).
"""

from __future__ import annotations

import codecs
import io
import math
import os
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bertpld.data import text as text_mod
from bertpld.data.sources import (
    BOOK_DOC_CHARS,
    Layout,
    Part,
    ReadMeter,
    Record,
    blank_line_documents,
    book_texts,
    group_rows,
    json_field,
    open_parquet,
)
from bertpld.errors import BertpldError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

KEY = "text"  # the field every local layout reads
# Pieces per parquet row group at most: a worker decodes its row group from the first row up to its
# piece, so k pieces decode the group ~k/2 times; decoding is ~600x faster than cleaning and
# encoding, so 16 pieces cost ~1% more work, and a 500 MB row group still makes ~30 MB pieces.
MAX_SLICES = 16
# TextIOWrapper's _CHUNK_SIZE: the sequential reader decodes JSON lines in 8 KiB chunks aligned to
# the file's start (one raw read each, whatever the buffer's size, which follows st_blksize)
_TEXT_CHUNK = 8192
_BATCH_ROWS = 4096  # parquet rows decoded at a time (as the sequential reader does)
_SCAN = 1 << 16  # bytes read at a time looking for a cut
_CUTS = {"jsonl": re.compile(rb"\n"), "txt": re.compile(rb"\n[ \t\r\f\v]*\n")}  # a cut ends a match


@dataclass(frozen=True)
class Piece:
    """A stretch of one local file, whole records, that a worker reads by itself."""

    layout: Layout
    path: str
    start: int  # first row (parquet) or byte
    stop: int  # one past the last row or byte
    chars: int  # about how many characters (blocks are cut by it)
    first: bool  # the file's first piece
    last: bool  # the file's last piece
    row_groups: tuple[int, ...] = ()  # parquet: the row groups holding rows start..stop
    rows_before: int = 0  # parquet: rows of the file before the first of them
    documents: int = 0  # grouped parquet: the documents in the piece

    def most_documents(self, min_doc_chars: int) -> int:
        """An upper bound on the documents the piece yields (resume skips encoding by it)."""
        if self.layout == "parquet-grouped":
            return self.documents
        if self.layout == "parquet":
            return self.stop - self.start
        # a document has at least max(min_doc_chars, 1) characters, each of at least one byte
        return (self.stop - self.start) // max(min_doc_chars, 1)


@dataclass
class PieceRead:
    """The records of a piece, and what the sequential reader would have counted reading them."""

    records: list[Record]
    # per record: invalid UTF-8 bytes the sequential reader had replaced, counted from the piece's
    # start, when it read the record (its read-ahead past the piece included, except for "txt":
    # see `replaced_after`)
    replaced: list[int]
    replaced_total: int = 0  # invalid UTF-8 bytes in the piece
    empty: bool = False  # a file all of whose pieces are empty is an 'empty file'
    error: str | None = None  # what the sequential reader raises after these records
    error_line: int = 0  # JSON lines: the line of `error`, counted from the piece's first line


# ----------------------------------------------------------------------------------------------
# Planning (main process): file sizes, a few bytes around each cut, parquet metadata


def plan_pieces(part: Part, target: int) -> Iterator[Piece]:
    """The part's files as pieces of about `target` characters, in order, moving its meter."""
    assert part.files is not None
    layouts = [layout for _, layout in part.files]
    for p, layout in zip(part.meter.files([p for p, _ in part.files]), layouts):
        if layout in ("parquet", "parquet-grouped"):
            yield from _parquet_pieces(p, layout, target, part.meter)
        else:
            yield from _byte_pieces(p, layout, target, part.meter)


def _byte_pieces(p: Path, layout: Layout, target: int, meter: ReadMeter) -> Iterator[Piece]:
    try:
        f = p.open("rb")
    except OSError as e:
        raise BertpldError(f"{p}: cannot read ({e.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        start = 0
        while True:
            if layout == "book" or start + target >= size:
                stop = size
            else:
                stop = _cut(f, start + target, _CUTS[layout], size)
            meter.within(stop)
            yield Piece(layout, str(p), start, stop, stop - start, first=start == 0, last=stop == size)
            if stop == size:
                return
            start = stop


def _cut(f: io.BufferedReader, offset: int, pattern: re.Pattern[bytes], size: int) -> int:
    """The end of the first match of `pattern` at or after `offset` (the file's size if none)."""
    f.seek(offset)
    buf, at = b"", offset  # buf holds the file from byte `at`
    while data := f.read(_SCAN):
        buf += data
        m = pattern.search(buf)
        if m:
            return at + m.end()
        # only a newline followed by nothing but blanks can begin a match that the next read ends
        k = buf.rfind(b"\n")
        keep = k if k >= 0 and not buf[k + 1 :].strip(b" \t\r\f\v") else len(buf)
        at, buf = at + keep, buf[keep:]
    return size


def _parquet_pieces(p: Path, layout: Layout, target: int, meter: ReadMeter) -> Iterator[Piece]:
    pf = open_parquet(p, KEY)
    md = pf.metadata
    column = [md.schema.column(i).path for i in range(md.num_columns)].index(KEY)
    rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    sizes = [md.row_group(i).column(column).total_uncompressed_size for i in range(md.num_row_groups)]
    group_end = np.cumsum(rows)
    total, size = int(group_end[-1]), p.stat().st_size
    if layout == "parquet-grouped":
        cuts = _document_cuts(pf, rows, sizes, target)
    else:
        cuts = ((start, stop, chars, 0) for start, stop, chars in _row_cuts(rows, sizes, target))
    for start, stop, chars, documents in cuts:
        first, last = (int(np.searchsorted(group_end, r, side="right")) for r in (start, stop - 1))
        meter.within(size * stop // total)
        yield Piece(
            layout,
            str(p),
            start,
            stop,
            chars,
            first=start == 0,
            last=stop == total,
            row_groups=tuple(range(first, last + 1)),
            rows_before=int(group_end[first] - rows[first]),
            documents=documents,
        )


def _row_cuts(rows: list[int], sizes: list[int], target: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, characters) of row ranges of about `target` characters (estimated from the
    row groups' uncompressed sizes), at least 1/MAX_SLICES of each row group."""
    start = row0 = 0
    chars = 0.0
    for n, size in zip(rows, sizes):
        per_row = size / n if n else 0.0
        need = max(target, size / MAX_SLICES)
        r = 0
        while r < n:
            take = n - r if per_row == 0 else min(n - r, max(1, math.ceil((need - chars) / per_row)))
            r += take
            chars += take * per_row
            if chars >= need:
                yield start, row0 + r, int(chars)
                start, chars = row0 + r, 0.0
        row0 += n
    if start < row0:
        yield start, row0, int(chars)


def _document_cuts(
    pf: pq.ParquetFile, rows: list[int], sizes: list[int], target: int
) -> Iterator[tuple[int, int, int, int]]:
    """(start, stop, characters, documents) of row ranges of whole documents of rows grouped as
    `sources.group_rows` groups them, about `target` characters each (see the module docstring)."""
    group_end = np.cumsum(rows)
    start = row0 = 0
    chars = documents = 0
    open_chars = 0  # characters of the document that has not ended yet
    for batch in pf.iter_batches(batch_size=1 << 16, columns=[KEY], use_threads=False):
        cum = np.cumsum(stripped_lengths(batch.column(0)))
        done = 0  # characters of this batch in documents that have ended
        threshold = BOOK_DOC_CHARS - open_chars
        while (j := int(np.searchsorted(cum, threshold))) < len(cum):
            chars += open_chars + int(cum[j]) - done
            documents += 1
            open_chars, done = 0, int(cum[j])
            threshold = done + BOOK_DOC_CHARS
            group = int(np.searchsorted(group_end, start, side="right"))
            if chars >= max(target, sizes[group] / MAX_SLICES):
                yield start, row0 + j + 1, chars, documents
                start, chars, documents = row0 + j + 1, 0, 0
        open_chars += (int(cum[-1]) if len(cum) else 0) - done
        row0 += len(cum)
    if start < row0:
        yield start, row0, chars + open_chars, documents + int(open_chars > 0)


# Bytes that Python's str.strip() keeps at either end of a string: ASCII other than whitespace.
_SOLID = np.ones(256, bool)
_SOLID[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = False
_SOLID[128:] = False  # non-ASCII: decided by Python itself


def stripped_lengths(arr: pa.Array) -> np.ndarray:
    """`len(s.strip())` of every string of an Arrow string array (0 for nulls), in numpy from the
    array's buffers: only strings that begin or end with a character strip() may remove (rare)
    become Python strings. (pyarrow.compute would cost the main process ~1 s of imports.)"""
    import pyarrow as pa

    n = len(arr)
    lengths = np.zeros(n, np.int64)
    if n == 0:
        return lengths
    wide = pa.types.is_large_string(arr.type)
    validity, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(
        offsets_buf, np.int64 if wide else np.int32, n + 1, arr.offset * (8 if wide else 4)
    )
    present = np.diff(offsets) > 0
    if arr.null_count:
        bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
        present &= bits[arr.offset : arr.offset + n].astype(bool)
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        return lengths
    data = np.frombuffer(data_buf, np.uint8)
    begin, end = offsets[idx].astype(np.int64), offsets[idx + 1].astype(np.int64)
    solid = _SOLID[data[begin]] & _SOLID[data[end - 1]]
    # characters: bytes less those that continue a UTF-8 sequence (few in English text)
    lo, hi = int(begin[0]), int(end[-1])
    high = np.flatnonzero(data[lo:hi] >= 0x80) + lo
    continuing = high[(data[high] & 0xC0) == 0x80]
    chars = end - begin - (np.searchsorted(continuing, end) - np.searchsorted(continuing, begin))
    lengths[idx[solid]] = chars[solid]
    rest = idx[~solid]
    if len(rest):  # (Array.take would import pyarrow.compute)
        lengths[rest] = [len(arr[int(i)].as_py().strip()) for i in rest]
    return lengths


# ----------------------------------------------------------------------------------------------
# Reading (a worker process, or the main process with one worker)


def read_piece(piece: Piece) -> PieceRead:
    """The records of a piece, as the sequential reader yields them (a pure function of the piece).

    The invalid bytes it replaces are reported in the result and left out of the process total
    (`text.replaced_bytes`), which the main process' sequential reading is measured by."""
    with text_mod.counted_apart():
        if piece.layout in ("parquet", "parquet-grouped"):
            return _read_parquet(piece)
        if piece.layout == "jsonl":
            return _read_jsonl(piece)
        return _read_text(piece)


def _read_parquet(piece: Piece) -> PieceRead:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values: list[str | None] = []
    error = None
    try:
        pf = pq.ParquetFile(piece.path)
        row = piece.rows_before
        for batch in pf.iter_batches(
            _BATCH_ROWS, row_groups=list(piece.row_groups), columns=[KEY], use_threads=False
        ):
            lo, hi = max(piece.start - row, 0), min(piece.stop - row, batch.num_rows)
            if lo < hi:
                values.extend(batch.column(0).slice(lo, hi - lo).to_pylist())
            row += batch.num_rows
            if row >= piece.stop:
                break
    except (OSError, pa.ArrowException) as e:
        error = f"{piece.path}: corrupt parquet data ({e})"
    rows = [v for v in values if v]
    if piece.layout == "parquet-grouped":
        # a document cut short by an error is never yielded: the sequential reader raises first
        records = list(group_rows(rows, partial=error is None))
        assert error is not None or len(records) == piece.documents, "a piece of part of a document"
    else:
        records = rows
    return PieceRead(records, [0] * len(records), error=error)


def _read_text(piece: Piece) -> PieceRead:
    """A "book" (whole file) or a "txt" byte range; the sequential reader decodes a text file whole
    before its first record, so every record counts the piece's invalid bytes."""
    if piece.layout == "book":
        try:
            records = list(book_texts(Path(piece.path)))
        except BertpldError as e:  # cannot read, empty file
            return PieceRead([], [], error=str(e))
        n = text_mod.replaced_bytes()
        return PieceRead(records, [n] * len(records), n)
    try:
        with open(piece.path, "rb") as f:
            f.seek(piece.start)
            data = f.read(piece.stop - piece.start)
    except OSError as e:
        return PieceRead([], [], error=f"{piece.path}: cannot read ({e.strerror})")
    records = list(blank_line_documents(data.decode("utf-8", errors=text_mod.COUNTING_ERRORS)))
    n = text_mod.replaced_bytes()
    return PieceRead(records, [n] * len(records), n, empty=not data.strip())


def _read_jsonl(piece: Piece) -> PieceRead:
    try:
        with open(piece.path, "rb") as f:
            text, chunk_ends, chunk_counts, total = _decode_lines(f, piece.start, piece.stop)
    except OSError as e:
        return PieceRead([], [], error=f"{piece.path}: cannot read ({e.strerror})")
    records: list[Record] = []
    replaced: list[int] = []
    pos = lineno = 0
    while pos < len(text):
        newline = text.find("\n", pos)
        end = len(text) if newline < 0 else newline + 1
        line = text[pos:end]
        lineno += 1
        pos = end
        if not line.strip():
            continue
        try:
            records.append(json_field(line, KEY))
        except ValueError as e:
            return PieceRead(records, replaced, total, error=str(e), error_line=lineno)
        # a line is read once the chunk that decodes its end is (the last line of a file without a
        # newline at its end: once the end of the file is seen)
        chunk = len(chunk_ends) - 1 if newline < 0 else bisect_right(chunk_ends, newline)
        replaced.append(chunk_counts[chunk])
    return PieceRead(records, replaced, total, empty=not records)


def _decode_lines(f: io.BufferedReader, start: int, stop: int) -> tuple[str, list[int], list[int], int]:
    """Bytes start..stop of a file (whole lines) decoded as the sequential reader's TextIOWrapper
    decodes them: universal newlines, 8 KiB chunks aligned to the file's start, the chunk holding
    the last byte decoded whole. Returns the text; for each chunk, where its text ends and the
    invalid bytes replaced from `start` through it; and those replaced in start..stop."""
    size = os.fstat(f.fileno()).st_size
    utf8 = codecs.getincrementaldecoder("utf-8")(errors=text_mod.COUNTING_ERRORS)
    decoder = io.IncrementalNewlineDecoder(utf8, translate=True)
    base = text_mod.replaced_bytes()
    limit = size if stop >= size else min(size, -(-stop // _TEXT_CHUNK) * _TEXT_CHUNK)
    parts: list[str] = []
    length = total = 0
    ends: list[int] = []
    counts: list[int] = []
    f.seek(start)
    pos = start
    while pos < limit:
        chunk_end = min((pos // _TEXT_CHUNK + 1) * _TEXT_CHUNK, limit)
        upto = stop if pos < stop < chunk_end else chunk_end  # stop too, for the piece's own count
        out = decoder.decode(f.read(upto - pos))
        pos = upto
        if pos <= stop:
            parts.append(out)
            length += len(out)
        if pos == stop:
            total = text_mod.replaced_bytes() - base
        if pos == chunk_end:
            ends.append(length)
            counts.append(text_mod.replaced_bytes() - base)
    if stop >= size:  # the end of the file: what the decoder held back
        out = decoder.decode(b"", final=True)
        parts.append(out)
        length += len(out)
        total = text_mod.replaced_bytes() - base
        ends.append(length)
        counts.append(total)
    return "".join(parts), ends, counts, total


# ----------------------------------------------------------------------------------------------
# What the main process adds when it counts a piece's records


def piece_error(piece: Piece, read: PieceRead) -> BertpldError:
    """The error the sequential reader raises after the piece's records, as it words it."""
    assert read.error is not None
    if not read.error_line:
        return BertpldError(read.error)
    return BertpldError(f"{piece.path}:{_lines_before(piece) + read.error_line}: {read.error}")


def empty_file_error(piece: Piece) -> BertpldError:
    return BertpldError(f"{piece.path}: empty file")


def _lines_before(piece: Piece) -> int:
    """Lines of the file before the piece, counted as universal newlines count them."""
    lines, prev = 0, b""
    with open(piece.path, "rb") as f:
        left = piece.start
        while left > 0 and (data := f.read(min(left, 1 << 24))):
            left -= len(data)
            lines += data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
            lines -= int(prev == b"\r" and data[:1] == b"\n")  # a CRLF split between two reads
            prev = data[-1:]
    return lines


def replaced_after(piece: Piece) -> int:
    """Invalid UTF-8 bytes in the file after a "txt" piece: the sequential reader decodes a text
    file whole before its first record, so when max_documents stops a part inside the piece, these
    were counted too (rarely needed: read here, in the main process, only then)."""
    if piece.layout != "txt" or piece.last:
        return 0
    with text_mod.counted_apart(), open(piece.path, "rb") as f:
        decoder = codecs.getincrementaldecoder("utf-8")(errors=text_mod.COUNTING_ERRORS)
        before = text_mod.replaced_bytes()
        f.seek(piece.stop)
        while data := f.read(1 << 24):
            decoder.decode(data)
        decoder.decode(b"", final=True)
        return text_mod.replaced_bytes() - before
