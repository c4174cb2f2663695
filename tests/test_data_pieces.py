"""Pieces of local files read by workers (bertpld.data.pieces) against the sequential reader
(bertpld.data.sources), which is the reference: the same records in the same order, the same
invalid-UTF-8 counts at every record, the same errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertpld.config import PrepareSection
from bertpld.data import pieces
from bertpld.data import text as text_mod
from bertpld.data.sources import iter_parts
from bertpld.data.text import document_sentences
from bertpld.errors import BertpldError

TEXTS = [t for t in topics.values() if len(t) > 400]
BAD = [b"\xff", b"\xe2\x82", b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f\x98"]  # invalid or cut short


def _jsonl(path: Path) -> Path:
    """Rows with invalid bytes in their text, blank lines, CRLF and lone-CR line ends, and, where
    TextIOWrapper's 8 KiB chunks meet, a CRLF split between two chunks, a lone CR as a chunk's
    last byte, and a multi-byte sequence cut short at a chunk's end."""
    rng = random.Random(0)
    out = bytearray()
    features = [(8191, b"", b"\r\n"), (16383, b"", b"\r"), (24574, b"\xe2\x82", b"\n")]
    for i, t in enumerate(TEXTS * 2):
        if features and len(out) > features[0][0] - 3000:
            at, tail, end = features.pop(0)  # a row whose `tail`, or else its line end, is at `at`
            pad = at - len(out) - len(b'{"text": "') - (0 if tail else len(b'"}'))
            out += b'{"text": "' + b"x" * pad + tail + b'"}' + end
        line = json.dumps({"id": i, "text": t[: rng.randrange(50, 3000)]}).encode()
        if i % 3 == 0:
            k = line.index(b" ", 20)
            line = line[:k] + rng.choice(BAD) + line[k:]
        out += line + rng.choice([b"\n", b"\r\n", b"\r", b"\n"])
        if i % 11 == 0:
            out += rng.choice([b"\n", b"  \n", b"\r\n"])
    assert (out[8191:8193], out[16383:16385][:1], out[24574:24576]) == (b"\r\n", b"\r", b"\xe2\x82")
    path.write_bytes(bytes(out))
    return path


def _txt(path: Path) -> Path:
    """Blank-line documents: blank lines of spaces, tabs, form feeds and CRs, runs of them, a BOM,
    invalid bytes, hard-wrapped lines."""
    rng = random.Random(1)
    parts = [b"\xef\xbb\xbf"]
    for i, t in enumerate(TEXTS):
        body = t.encode()
        if i % 3 == 0:
            body = body.replace(b"\n", b"\r\n")
        if i % 4 == 0:
            k = rng.randrange(len(body))
            body = body[:k] + rng.choice(BAD) + body[k:]
        parts.append(body)
        parts.append(
            rng.choice([b"\n\n", b"\n \t\n", b"\r\n\r\n", b"\n\f\n\n\n", b"\n\x0b \n", b"\n\n\n \n"])
        )
    path.write_bytes(b"".join(parts))
    return path


def _sentences() -> list[str | None]:
    """One sentence per row as BookCorpus has them, with empty, null and blank rows, and rows that
    begin or end with characters str.strip() removes (ASCII, Unicode) or keeps (non-ASCII)."""
    rows: list[str | None] = []
    for i, t in enumerate(TEXTS):
        for j, s in enumerate(document_sentences(t)):
            s = s.lower()
            kind = (i * 31 + j) % 13
            if kind == 0:
                s = "\u00a0" + s
            elif kind == 1:
                s = s + "\u3000\x1c"
            elif kind == 2:
                rows.append(None)
            elif kind == 3:
                rows.extend(["", "  \t "])
            elif kind == 4:
                s = "é" + s + "ü"
            rows.append(s)
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pieces")
    wiki = [{"id": str(i), "url": f"https://x/{i}", "title": f"T{i}", "text": t} for i, t in enumerate(TEXTS)]
    values: list[str | None] = []
    for i, t in enumerate(TEXTS):
        values += [t, [None, "", "  \n", "x"][i % 4]]
    rows = _sentences()
    pq.write_table(pa.Table.from_pylist(wiki), d / "wiki-big-group.parquet")  # one row group
    pq.write_table(pa.Table.from_pylist(wiki[::-1]), d / "wiki-small-groups.parquet", row_group_size=3)
    pq.write_table(pa.table({"text": values}), d / "values.parquet", row_group_size=37)
    pq.write_table(pa.table({"text": rows}), d / "sentences.parquet", row_group_size=500)
    pq.write_table(
        pa.table({"text": pa.array(rows[::-1], pa.large_string())}), d / "sentences-one-group.parquet"
    )
    book = "\n\n".join(TEXTS[:30]).encode()
    (d / "book.txt").write_bytes(book[:20_000] + b"\xff\xfe" + book[20_000:])
    return {
        "jsonl": _jsonl(d / "rows.jsonl"),
        "txt": _txt(d / "docs.txt"),
        **{k: d / f"{k}.parquet" for k in ("wiki-big-group", "wiki-small-groups", "values", "sentences")},
        "sentences-one-group": d / "sentences-one-group.parquet",
        "book": d / "book.txt",
    }


def _sections(f: dict[str, Path]) -> list[PrepareSection]:
    return [
        PrepareSection(
            sources=["text"], text_files=[str(f["txt"]), str(f["jsonl"]), str(f["values"]), str(f["txt"])]
        ),
        PrepareSection(sources=["wikipedia"], wikipedia=f"{f['wiki-big-group']},{f['wiki-small-groups']}"),
        PrepareSection(
            sources=["bookcorpus"],
            bookcorpus=f"{f['sentences']},{f['book']},{f['sentences-one-group']},{f['sentences']}",
        ),
    ]


def _sequential(section: PrepareSection) -> tuple[list, list[int]]:
    """The part's records and, at each, the invalid bytes replaced since the part began."""
    (part,) = iter_parts(section)
    records, counts = [], []
    start = text_mod.replaced_bytes()
    for r in part.records:
        records.append(r)
        counts.append(text_mod.replaced_bytes() - start)
    return records, counts


@pytest.mark.parametrize("target", [1, 700, 9_000, 120_000, 10**9])
def test_pieces_tile_the_files_and_read_as_the_sequential_reader(files, target):
    for section in _sections(files):
        want_records, want_counts = _sequential(section)
        (part,) = iter_parts(section)
        assert part.files is not None
        plan = list(pieces.plan_pieces(part, target))
        # every file tiled exactly, in order
        by_file: dict[tuple[int, str], list[pieces.Piece]] = {}
        index = -1
        for p in plan:
            index += p.first
            by_file.setdefault((index, p.path), []).append(p)
        assert [path for _, path in by_file] == [str(p) for p, _ in part.files]
        for ps in by_file.values():
            assert ps[0].first and ps[-1].last and not any(p.last for p in ps[:-1])
            assert ps[0].start == 0 and all(a.stop == b.start for a, b in zip(ps, ps[1:]))
            assert all(p.stop > p.start for p in ps[1:])
        if target == 1:  # pieces of whole records, as small as they come
            assert len(plan) > len(part.files) * 5
        # the same records, and the same invalid-byte counts at each
        before = text_mod.replaced_bytes()
        records, counts = [], []
        base = 0
        has_records = False
        for p in plan:
            read = pieces.read_piece(p)
            assert read.error is None
            has_records = (has_records and not p.first) or not read.empty
            assert has_records or not p.last  # no file is an 'empty file'
            records += read.records
            counts += [base + r + pieces.replaced_after(p) for r in read.replaced]
            base += read.replaced_total
            assert p.most_documents(0) >= len(read.records) and p.most_documents(200) >= sum(
                len("".join(document_sentences(r))) >= 200 for r in read.records
            )
        assert text_mod.replaced_bytes() == before  # reading pieces leaves the process total alone
        assert records == want_records
        assert counts == want_counts
        assert base == want_counts[-1] or section.sources == ["text"]  # (text: counted to the end)


def test_the_sequential_jsonl_counts_include_its_read_ahead(files):
    """Why the pieces emulate TextIOWrapper's chunks: at a row, the sequential reader has counted
    the invalid bytes of the rest of its 8 KiB chunk too, not only those of the rows read."""
    _, counts = _sequential(PrepareSection(sources=["wikipedia"], wikipedia=str(files["jsonl"])))
    rows_only, n = [], 0
    data = files["jsonl"].read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for line in data.split(b"\n"):
        with text_mod.counted_apart():
            text = line.decode("utf-8", errors=text_mod.COUNTING_ERRORS)
            n += text_mod.replaced_bytes()
        if text.strip():
            rows_only.append(n)
    assert len(rows_only) == len(counts) and rows_only[-1] == counts[-1] > 20
    assert sum(a != b for a, b in zip(rows_only, counts)) > 5
    # the chunk size emulated is TextIOWrapper's (not the buffer's, which follows st_blksize)
    with files["jsonl"].open(encoding="utf-8") as f:
        assert f._CHUNK_SIZE == pieces._TEXT_CHUNK


def test_stripped_lengths_are_those_of_python_str_strip():
    rng = random.Random(2)
    whitespace = [c for c in map(chr, range(0x3100)) if c.isspace()]
    alphabet = ["a", "Z", "é", "€", "😀", " ", "\x00", "\x7f", "\x1b"] + whitespace
    values = [
        None
        if k == 0
        else ""
        if k == 1
        else "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 9)))
        for k in (rng.randrange(6) for _ in range(4000))
    ]
    for kind in (pa.string(), pa.large_string()):
        arr = pa.array(values, kind)
        for part in (arr, arr.slice(13, 2000), arr.slice(3999, 1), arr.slice(5, 0)):
            want = [len(v.strip()) if v else 0 for v in part.to_pylist()]
            assert pieces.stripped_lengths(part).tolist() == want


def test_a_bad_jsonl_row_is_named_by_its_line_as_the_sequential_reader_does(tmp_path):
    rows = [json.dumps({"text": t}).encode() for t in TEXTS]
    ends = [b"\n", b"\r\n", b"\r"]
    body = b"".join(r + ends[i % 3] + (b"\n" if i % 7 == 0 else b"") for i, r in enumerate(rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(body + b'{"title": "no text"}\n' + body)
    section = PrepareSection(sources=["text"], text_files=[str(bad)])
    # its line, counting blank lines and the universal newlines \r\n, \r and \n (a \r then the
    # blank line's \n is one \r\n): every line end before it, plus one
    line = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
    assert line > len(rows) + 1  # blank lines before it count
    with pytest.raises(BertpldError) as want:
        _sequential(section)
    assert str(want.value) == f"{bad}:{line}: expected an object with a string field 'text'"
    for target in (500, 20_000, 10**9):
        (part,) = iter_parts(section)
        for p in pieces.plan_pieces(part, target):
            read = pieces.read_piece(p)
            if read.error is not None:
                assert str(pieces.piece_error(p, read)) == str(want.value)
                break
        else:
            pytest.fail("no piece saw the bad row")


@pytest.mark.parametrize(
    ("name", "content"),
    [("blank.txt", b" \n\t\r\n  "), ("zero.txt", b""), ("blank.jsonl", b"\n  \n"), ("zero.jsonl", b"")],
)
def test_a_file_without_records_is_an_empty_file_in_every_piece(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    section = PrepareSection(sources=["text"], text_files=[str(tmp_path / name)])
    with pytest.raises(BertpldError, match="empty file") as want:
        _sequential(section)
    (part,) = iter_parts(section)
    (piece,) = pieces.plan_pieces(part, 100)
    read = pieces.read_piece(piece)
    assert read.empty and not read.records and read.error is None
    assert str(pieces.empty_file_error(piece)) == str(want.value)


def test_a_large_row_group_is_cut_into_at_most_max_slices_pieces(files):
    section = PrepareSection(sources=["wikipedia"], wikipedia=str(files["wiki-big-group"]))
    (part,) = iter_parts(section)
    plan = list(pieces.plan_pieces(part, 1))
    assert pieces.MAX_SLICES - 2 <= len(plan) <= pieces.MAX_SLICES and {p.row_groups for p in plan} == {(0,)}
    md = pq.ParquetFile(files["wiki-big-group"]).metadata
    size = md.row_group(0).column(3).total_uncompressed_size
    (part,) = iter_parts(section)
    assert len(list(pieces.plan_pieces(part, size // 6))) == 6
