"""Raw MediaWiki XML dumps (``enwiki-*-pages-articles*.xml.bz2``) -> plain-text articles.

The dump is streamed (bz2 -> incremental XML parser), so memory stays flat on a 20 GB dump.
Redirects and pages outside the article namespace (0) are skipped; wikitext markup is stripped
with regular expressions: templates, tables, references, comments, files/categories and
interlanguage links are removed, internal and external links keep their label, bold/italics,
headings, lists and HTML tags are reduced to their text.
"""

from __future__ import annotations

import bz2
import codecs
import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

from bertpld.data.text import COUNTING_ERRORS
from bertpld.errors import BertpldError

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
# Whole elements whose content is not prose.
_DROP_ELEMENTS = re.compile(
    r"<(math|gallery|timeline|syntaxhighlight|source|pre|code|score|imagemap|hiero|chem|graph|nowiki)\b[^>]*>.*?</\1\s*>",
    re.S | re.I,
)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # innermost template; applied until none is left
_PARAM = re.compile(r"\{\{\{[^{}]*\}\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)  # innermost table
# innermost internal link; single brackets may occur inside a caption ("[and]")
_LINK = re.compile(r"\[\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\]")
_EXTLINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_BARE_URL = re.compile(r"https?://\S+")
_TAG = re.compile(r"</?[a-zA-Z][^>]*?/?>")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+.*?=+\s*$", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.M)
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACE_PUNCT = re.compile(r" +([,.;:!?)])")

# Link prefixes that are not article links (the dump's own namespace names are added per dump).
_BASE_NAMESPACES = {"file", "image", "media", "category", "wikipedia", "wp", "help", "template", "portal"}
_LANG = re.compile(r"^[a-z]{2,3}(-[a-z]+)?$")


def strip_markup(wikitext: str, namespaces: frozenset[str] = frozenset()) -> str:
    """Wikitext -> plain text with one paragraph per line (headings and non-prose dropped)."""
    t = _COMMENT.sub("", wikitext)
    t = _DROP_ELEMENTS.sub("", t)
    t = _REF.sub("", t)
    t = _PARAM.sub("", t)
    t = _repeat(_TEMPLATE, "", t)
    t = _repeat(_TABLE, "", t)
    skip = _BASE_NAMESPACES | namespaces

    def link(m: re.Match[str]) -> str:
        target, _, label = m.group(1).partition("|")
        prefix, colon, _ = target.partition(":")
        p = prefix.strip().lower()
        if colon and (p in skip or _LANG.match(p)):
            return ""  # files, categories, interlanguage links carry no prose
        if not colon and target.startswith(":"):
            return target.lstrip(":")
        # [[File:x|thumb|caption]]-style pipes beyond the first belong to the label
        return (label.rsplit("|", 1)[-1] if label else target).strip()

    t = _repeat(_LINK, link, t)
    t = _EXTLINK.sub(lambda m: m.group(1), t)
    t = _BARE_URL.sub("", t)
    t = _TAG.sub("", t)
    t = html.unescape(t)
    t = _TAG.sub("", t)  # tags that were entity-escaped in the XML
    t = _QUOTES.sub("", t)
    t = _HEADING.sub("", t)
    t = _MAGIC.sub("", t)
    t = _LIST_MARK.sub("", t)
    t = _EMPTY_PARENS.sub("", t)
    lines = []
    for line in t.split("\n"):
        line = _SPACE_PUNCT.sub(r"\1", " ".join(line.split()))
        # leftovers of templates/tables spanning lines ("|}", "| x = y") are not prose
        if line and line[0] not in "|!{}":
            lines.append(line)
    return "\n".join(lines)


def _repeat(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], text: str) -> str:
    # Nested constructs are removed innermost first, so repeat until nothing matches.
    while True:
        new, n = pattern.subn(repl, text)
        if n == 0:
            return new
        text = new


def iter_dump(path: Path) -> Iterator[dict[str, str]]:
    """Articles of one dump as ``{id, url, title, text}`` (text already stripped of markup).

    Invalid UTF-8 bytes are replaced and counted (see `text.replaced_bytes`)."""
    for page, namespaces in iter_dump_pages(path):
        yield {**page, "text": strip_markup(page["text"], namespaces)}


def iter_dump_pages(
    path: Path, progress: Callable[[int], None] | None = None
) -> Iterator[tuple[dict[str, str], frozenset[str]]]:
    """Articles of one dump as ``({id, url, title, text}, namespaces)`` with the text still in
    markup: `strip_markup(text, namespaces)` makes it plain (prepare does that in its workers).

    `progress` is told the bytes of the file read so far (compressed bytes for .bz2)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=COUNTING_ERRORS)
    parser = ET.XMLPullParser(events=("end",))
    namespaces: frozenset[str] = frozenset()  # one object shared by the pages that follow
    try:
        with open(path, "rb") as raw, bz2.BZ2File(raw) if path.suffix == ".bz2" else raw as f:
            while True:
                data = f.read(1 << 20)
                if progress is not None:
                    progress(raw.tell())
                chunk = decoder.decode(data, final=not data)
                parser.feed(chunk)
                for _, elem in parser.read_events():
                    tag = elem.tag.rpartition("}")[2]
                    if tag == "namespace" and elem.text:
                        namespaces = namespaces | {elem.text.strip().lower()}
                    elif tag == "page":
                        page = _page(elem)
                        elem.clear()
                        if page is not None:
                            yield page, namespaces
                if not data:
                    break
            parser.close()
    except ET.ParseError as e:
        raise BertpldError(f"{path}: not a valid MediaWiki XML dump ({e})") from None
    except (OSError, EOFError) as e:
        raise BertpldError(f"{path}: cannot read the dump ({e})") from None


def _page(elem: ET.Element) -> dict[str, str] | None:
    fields: dict[str, str] = {}
    redirect = False
    for child in elem.iter():
        tag = child.tag.rpartition("}")[2]
        if tag == "redirect":
            redirect = True
        elif tag in ("title", "ns", "text") or (tag == "id" and "id" not in fields):
            fields[tag] = child.text or ""
    text = fields.get("text", "")
    if redirect or fields.get("ns", "0").strip() != "0" or text.lstrip()[:9].upper() == "#REDIRECT":
        return None
    title = fields.get("title", "")
    return {
        "id": fields.get("id", ""),
        "url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"),
        "title": title,
        "text": text,
    }
