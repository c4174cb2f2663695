"""Cleaning and sentence splitting: raw document text -> a list of sentences.

Every source reader yields documents as text with one paragraph per line. Here whitespace is
normalised, control characters are dropped, and each paragraph is cut into sentences with a small
rule-based splitter (NSP needs sentence boundaries; a dependency-free splitter is good enough for
building sentence pairs, and it is deterministic).
"""

from __future__ import annotations

import codecs
import contextlib
import re
from collections.abc import Iterator

# Control characters other than newline/tab carry no text and confuse the tokenizer's offsets.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")

# A sentence ends at . ! ? (possibly repeated, possibly followed by closing quotes/brackets), then
# whitespace, then something that can start a sentence (capital letter, digit, opening quote).
_BOUNDARY = re.compile(r"([.!?]+)([\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9\u00c0-\u00de])")
_LAST_WORD = re.compile(r"(\S+)$")

# Words that end in a period without ending a sentence (compared lowercased, without the period).
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "ft",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "inc",
        "ltd",
        "co",
        "corp",
        "no",
        "nos",
        "vol",
        "vols",
        "fig",
        "figs",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "cmdr",
        "adm",
        "maj",
        "rev",
        "hon",
        "gov",
        "sen",
        "rep",
        "pres",
        "messrs",
        "mme",
        "mlle",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "approx",
        "ca",
        "p",
        "pp",
        "ed",
        "eds",
        "op",
        "dept",
        "univ",
        "est",
        "u.s",
        "u.k",
        "a.m",
        "p.m",
        "b.c",
        "a.d",
    ]
)


def clean_paragraph(text: str) -> str:
    """One paragraph: control characters dropped, runs of whitespace collapsed, ends stripped."""
    return _SPACES.sub(" ", _CONTROL.sub("", text)).strip()


def split_sentences(paragraph: str) -> list[str]:
    """Cut one cleaned paragraph into sentences (rule-based; abbreviations and initials kept)."""
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(paragraph):
        if m.group(1) == ".":
            word = _LAST_WORD.search(paragraph, start, m.start(1))
            if word is not None:
                w = word.group(1).lstrip("\"'(\u201c\u2018[").lower()
                # "J. R. R. Tolkien", "Mr. Smith", "e.g. This": not sentence ends.
                if (len(w) == 1 and w.isalpha()) or w in ABBREVIATIONS:
                    continue
        end = m.end(2)
        sentence = paragraph[start:end].strip()
        if sentence:
            out.append(sentence)
        start = m.end()
    tail = paragraph[start:].strip()
    if tail:
        out.append(tail)
    return out


def document_sentences(text: str) -> list[str]:
    """A document (one paragraph per line) -> its sentences, in order; empty lines dropped."""
    sentences: list[str] = []
    for line in text.split("\n"):
        p = clean_paragraph(line)
        if p:
            sentences.extend(split_sentences(p))
    return sentences


def paragraphs_from_blocks(text: str) -> str:
    """Plain prose with paragraphs separated by blank lines (hard-wrapped lines inside) ->
    one paragraph per line."""
    blocks = re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "\n".join(" ".join(b.split()) for b in blocks if b.strip())


# Bytes that are not valid UTF-8 are replaced by U+FFFD and counted, so prepare can report them.
COUNTING_ERRORS = "bertpld-count-replace"
_replaced = [0]


def _count_replace(err: UnicodeError) -> tuple[str, int]:
    assert isinstance(err, UnicodeDecodeError)
    _replaced[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error(COUNTING_ERRORS, _count_replace)


def replaced_bytes() -> int:
    """Invalid UTF-8 bytes replaced so far in this process (read it before and after a pass)."""
    return _replaced[0]


@contextlib.contextmanager
def counted_apart() -> Iterator[None]:
    """Inside, `replaced_bytes()` counts from 0; outside, the process total is as before: whoever
    decodes inside reports what was replaced itself (a piece of a file read in the main process
    must not move the total that the main process' own sequential reading is measured by)."""
    saved = _replaced[0]
    _replaced[0] = 0
    try:
        yield
    finally:
        _replaced[0] = saved
