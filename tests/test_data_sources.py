"""Source readers, cleaning and the sentence splitter, on small files written by each test."""

from __future__ import annotations

import bz2
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertpld.config import PrepareSection
from bertpld.data import text as text_mod
from bertpld.data.sources import BOOK_DOC_CHARS, SourceStats, iter_documents, iter_parts, resolve_spec
from bertpld.data.text import document_sentences, split_sentences
from bertpld.data.wikixml import iter_dump, strip_markup
from bertpld.errors import BertpldError

PROSE = (
    "Mr. Smith went to Washington in 1999. He met J. R. R. Tolkien there! Was it raining? "
    'Nobody knows, e.g. the weather was "unclear." The value was 3.5 percent.'
)


def _docs(tmp_path, **section):
    stats = SourceStats()
    sec = PrepareSection(min_doc_chars=section.pop("min_doc_chars", 10), **section)
    return list(iter_documents(sec, stats)), stats


def test_sentence_splitter_keeps_abbreviations_initials_and_numbers():
    assert split_sentences(PROSE) == [
        "Mr. Smith went to Washington in 1999.",
        "He met J. R. R. Tolkien there!",
        "Was it raining?",
        'Nobody knows, e.g. the weather was "unclear."',
        "The value was 3.5 percent.",
    ]


def test_document_sentences_normalises_whitespace_and_paragraphs():
    doc = "First  para\tone. Second\x00 sentence.\n\n  \nNext paragraph without end"
    assert document_sentences(doc) == ["First para one.", "Second sentence.", "Next paragraph without end"]


def test_strip_markup():
    wikitext = (
        "{{Infobox person|name={{nowrap|X}}|born=1900}}\n"
        "'''Alan''' was a [[computer scientist|scientist]] from [[London]].<ref>{{cite web|url=x}}</ref> "
        "He wrote [http://example.org a paper].<!-- hidden -->\n"
        "[[File:Alan.jpg|thumb|A [[photo]] of [and] him]]\n"
        "== Career ==\n"
        "{| class=wikitable\n| a || b\n|}\n"
        "* He liked &amp; loved ''maths''.\n"
        "[[Category:Scientists]] [[de:Alan]]"
    )
    assert strip_markup(wikitext) == (
        "Alan was a scientist from London. He wrote a paper.\nHe liked & loved maths."
    )


def _dump(path, pages, raw_suffix=b""):
    xml = [
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><siteinfo><namespaces>'
        '<namespace key="0" /><namespace key="1">Talk</namespace></namespaces></siteinfo>'
    ]
    for i, (title, ns, text, redirect) in enumerate(pages):
        red = f'<redirect title="{redirect}" />' if redirect else ""
        xml.append(
            f"<page><title>{title}</title><ns>{ns}</ns><id>{i + 1}</id>{red}"
            f'<revision><id>9{i}</id><text xml:space="preserve">{text}</text></revision></page>'
        )
    xml.append("</mediawiki>")
    data = "\n".join(xml).encode()
    data = data.replace(b"BADBYTE", b"\xff\xfe")
    path.write_bytes(bz2.compress(data))
    return path


def test_xml_dump_skips_redirects_and_other_namespaces(tmp_path):
    p = _dump(
        tmp_path / "enwiki-test-pages-articles.xml.bz2",
        [
            (
                "Anarchism",
                0,
                "'''Anarchism''' is a [[political philosophy]]. It has BADBYTE many forms.",
                None,
            ),
            ("AccessibleComputing", 0, "#REDIRECT [[Computer accessibility]]", "Computer accessibility"),
            ("Old", 0, "#redirect [[New]]", None),
            ("Talk:Anarchism", 1, "Some talk about the article. It is long enough.", None),
            ("Autism", 0, "Autism is a disorder.\n\nIt affects [[people|many people]].", None),
        ],
    )
    before = text_mod.replaced_bytes()
    pages = list(iter_dump(p))
    assert [pg["title"] for pg in pages] == ["Anarchism", "Autism"]
    assert pages[0]["text"] == "Anarchism is a political philosophy. It has \ufffd\ufffd many forms."
    assert text_mod.replaced_bytes() - before == 2
    assert pages[1]["url"] == "https://en.wikipedia.org/wiki/Autism"
    docs, stats = _docs(tmp_path, sources=["wikipedia"], wikipedia=str(p))
    assert [d.sentences for d in docs][1] == ["Autism is a disorder.", "It affects many people."]
    assert stats.parts["wikipedia"].kept == 2


def test_xml_dump_invalid_is_one_line_error(tmp_path):
    p = tmp_path / "broken.xml.bz2"
    p.write_bytes(bz2.compress(b"<mediawiki><page><title>x</title></pag></mediawiki>"))
    with pytest.raises(BertpldError, match="broken.xml.bz2: not a valid MediaWiki XML dump"):
        list(iter_dump(p))


HUB_ROWS = [
    {
        "id": "12",
        "url": "https://en.wikipedia.org/wiki/Anarchism",
        "title": "Anarchism",
        "text": "Anarchism is a political philosophy. It is sceptical of authority.\nSecond paragraph here.",
    },
    {"id": "25", "url": "https://en.wikipedia.org/wiki/Autism", "title": "Autism", "text": "Too short."},
    {
        "id": "39",
        "url": "https://en.wikipedia.org/wiki/Albedo",
        "title": "Albedo",
        "text": "Albedo is the measure of diffuse reflection. It is dimensionless.",
    },
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_wikipedia_hub_schema_local_files(tmp_path, fmt):
    p = tmp_path / f"wiki-00000.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in HUB_ROWS))
    else:
        pq.write_table(pa.Table.from_pylist(HUB_ROWS), p)
    docs, stats = _docs(
        tmp_path, sources=["wikipedia"], wikipedia=str(tmp_path / f"*.{fmt}"), min_doc_chars=20
    )
    assert [d.sentences for d in docs] == [
        ["Anarchism is a political philosophy.", "It is sceptical of authority.", "Second paragraph here."],
        ["Albedo is the measure of diffuse reflection.", "It is dimensionless."],
    ]
    assert (stats.parts["wikipedia"].read, stats.parts["wikipedia"].dropped_short) == (3, 1)


def test_bookcorpus_rows_grouped_into_documents(tmp_path):
    rows = [f"this is sentence number {i} of a long book ." for i in range(3000)]
    p = tmp_path / "bookcorpus.parquet"
    pq.write_table(pa.table({"text": rows}), p)
    docs, _ = _docs(tmp_path, sources=["bookcorpus"], bookcorpus=str(p))
    assert [s for d in docs for s in d.sentences] == rows  # order and content kept, one row per sentence
    assert len(docs) == pytest.approx(sum(map(len, rows)) / BOOK_DOC_CHARS, abs=1)
    assert all(d.chars >= BOOK_DOC_CHARS for d in docs[:-1])


def test_parquet_text_column_must_hold_strings(tmp_path):
    p = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), p)
    with pytest.raises(BertpldError, match="column 'text' holds int64, expected strings"):
        _docs(tmp_path, sources=["bookcorpus"], bookcorpus=str(p))


def test_bookcorpus_txt_is_a_book_of_blank_line_paragraphs(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("CHAPTER I.\n\nIt was a dark and\nstormy night. The rain fell.\n\nThe end came.\n")
    docs, _ = _docs(tmp_path, sources=["bookcorpus"], bookcorpus=str(p))
    assert [d.sentences for d in docs] == [
        ["CHAPTER I.", "It was a dark and stormy night.", "The rain fell.", "The end came."]
    ]


def test_text_source_txt_jsonl_parquet_and_invalid_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(
        b"First document. It has two\nwrapped lines.\n\n\nSecond document \xff here. Yes.\n"
    )
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "Third document. From jsonl."}) + "\n")
    pq.write_table(pa.table({"text": ["Fourth document. From parquet."]}), tmp_path / "c.parquet")
    before = text_mod.replaced_bytes()
    docs, _ = _docs(
        tmp_path,
        sources=["text"],
        text_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), str(tmp_path / "c.parquet")],
    )
    assert [d.sentences for d in docs] == [
        ["First document.", "It has two wrapped lines."],
        ["Second document \ufffd here.", "Yes."],
        ["Third document.", "From jsonl."],
        ["Fourth document.", "From parquet."],
    ]
    assert text_mod.replaced_bytes() - before == 1


def test_max_documents_per_source(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(f"Document number {i} is here." for i in range(10)))
    docs, stats = _docs(tmp_path, sources=["text"], text_files=[str(tmp_path / "a.txt")], max_documents=3)
    assert len(docs) == 3 and stats.parts["text"].read == 3


def test_demo_corpus_located_in_installed_packages(tmp_path):
    docs, stats = _docs(tmp_path, sources=["demo"], max_documents=2, min_doc_chars=200)
    assert set(stats.parts) == {"demo/enwiki-dump", "demo/shakespeare"}
    assert [d.part for d in docs] == ["demo/enwiki-dump"] * 2 + ["demo/shakespeare"] * 2
    assert docs[0].sentences[0].startswith("Anarchism is a political philosophy")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            dict(sources=["text"], text_files=["/nonexistent/x.txt"]),
            "prepare.text_files: no such file: /nonexistent/x.txt",
        ),
        (dict(sources=["text"], text_files=["/nonexistent/*.txt"]), "no file matches"),
        (dict(sources=["wikipedia"], wikipedia="wikimedia/wikipedia:20231101.en"), "offline"),
    ],
)
def test_source_errors_are_one_line(tmp_path, monkeypatch, section, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BertpldError, match=message) as e:
        _docs(tmp_path, **section)
    assert "\n" not in str(e.value)


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    for name, message in [
        ("empty.txt", "empty file"),
        ("bad.jsonl", "bad.jsonl:2: expected an object with a string field 'text'"),
        ("nocol.parquet", "no 'text' column"),
    ]:
        with pytest.raises(BertpldError, match=message):
            _docs(tmp_path, sources=["text"], text_files=[str(tmp_path / name)])


def test_resolve_spec_hub_vs_files(tmp_path):
    assert resolve_spec("x", "wikimedia/wikipedia:20231101.en") == ("hub", "wikimedia/wikipedia:20231101.en")
    (tmp_path / "w.jsonl").write_text("{}\n")
    assert resolve_spec("x", str(tmp_path / "w.jsonl")) == ("files", [tmp_path / "w.jsonl"])
    assert resolve_spec("x", str(tmp_path)) == ("files", [tmp_path / "w.jsonl"])


def test_read_meter_follows_the_files(tmp_path):
    """The progress of a part in bytes of its files: within a streamed file, and all of them at the end."""
    rows = [{"text": f"Document {i} is long enough to be kept. " * 20} for i in range(3000)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    dump = _dump(tmp_path / "c.xml.bz2", [(f"T{i}", 0, f"Text {i}. " * 500, None) for i in range(300)])
    section = PrepareSection(
        sources=["text", "wikipedia"],
        text_files=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")],
        wikipedia=str(dump),
    )
    files = {"text": [tmp_path / "a.jsonl", tmp_path / "b.parquet"], "wikipedia": [dump]}
    for part in iter_parts(section):
        meter = part.meter
        seen = [meter.done for _ in part.records]
        assert meter.total == sum(p.stat().st_size for p in files[part.name])
        assert seen == sorted(seen) and 0 < seen[len(seen) // 3] <= seen[-1] <= meter.total
        if part.name == "text":  # within the jsonl file, not only file by file
            assert 0 < seen[len(seen) // 8] < files["text"][0].stat().st_size // 2
        assert meter.done == meter.total
