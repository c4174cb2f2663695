"""`bertpld prepare`: tokenizer, shards + manifest, no-op rerun, resume, refusal, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

import bertpld.data.prepare as prep
from bertpld.config import PrepareConfig, load_config
from bertpld.data.shards import open_shard, sha256_file
from bertpld.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from bertpld.errors import BertpldError

TEXTS = [t for t in topics.values() if len(t) > 400]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Python's own docs as a text corpus: one document per topic, blank-line separated."""
    p = tmp_path_factory.mktemp("corpus") / "topics.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return p


def _cfg(corpus: Path, **over) -> PrepareConfig:
    fields = dict(
        sources=["text"], text_files=[str(corpus)], vocab_size=400, val_fraction=0.1, shard_tokens=25_000
    )
    fields.update(over)
    return load_config(PrepareConfig, None, {"prepare": fields})


def test_tokenizer_round_trip_and_specials():
    tok = train_tokenizer(TEXTS[:100], 300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == 300
    text = "The Café returns a VALUE, naïvely: lambda x: x + 1!"
    enc = tok.encode(text)
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert tok.decode(enc.ids) == "the cafe returns a value, naively : lambda x : x + 1!"
    assert "[UNK]" not in enc.tokens
    pair = tok.encode("first part", "second part")
    assert pair.type_ids == [0] * (pair.tokens.index("[SEP]") + 1) + [1] * (
        len(pair.ids) - pair.tokens.index("[SEP]") - 1
    )
    # deterministic (tokenizers' own trainer is not; see train_tokenizer)
    assert train_tokenizer(TEXTS[:100], 300).to_str() == tok.to_str()


def test_given_tokenizer_must_have_bert_specials(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    bad = Tokenizer(WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    bad.save(str(tmp_path / "bad.json"))
    with pytest.raises(BertpldError, match=r"lacks the special tokens \[PAD\], \[CLS\]"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(BertpldError, match="no such file"):
        load_tokenizer(tmp_path / "missing.json")


def test_shards_and_manifest_round_trip(tmp_path, corpus):
    out = tmp_path / "data"
    m = prep.prepare(_cfg(corpus), out, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["vocab_size"] == 400 and m["token_dtype"] == "uint16"
    assert m["tokenizer_sha256"] == sha256_file(out / "tokenizer.json")
    assert m["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert m["fingerprint"] == prep.fingerprint(m["config"], m["tokenizer_sha256"])
    tok = load_tokenizer(out / "tokenizer.json")
    expected_docs = [t for t in TEXTS]  # all longer than min_doc_chars
    total_docs = 0
    decoded_first: list[str] = []
    for split in ("train", "val"):
        s = m["splits"][split]
        assert s["shards"], split
        assert s["tokens"] == sum(r["tokens"] for r in s["shards"])
        for rec in s["shards"]:
            path = out / rec["path"]
            assert path.stat().st_size == rec["size"] and sha256_file(path) == rec["sha256"]
            sh = open_shard(path)
            assert (len(sh.tokens), sh.num_documents, sh.num_sentences) == (
                rec["tokens"],
                rec["documents"],
                rec["sentences"],
            )
            assert sh.tokens.dtype == np.uint16 and sh.tokens.max() < 400
            assert np.all(np.diff(sh.sentence_offsets) > 0) and sh.document_offsets[-1] == sh.num_sentences
            total_docs += sh.num_documents
            if split == "train" and not decoded_first:
                first_doc = sh.tokens[sh.sentence_offsets[0] : sh.sentence_offsets[sh.document_offsets[1]]]
                decoded_first.append(tok.decode(first_doc.tolist()))
        # shards other than the last hold about shard_tokens (whole documents)
        assert all(r["tokens"] >= 25_000 for r in s["shards"][:-1])
    assert total_docs == len(expected_docs)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(expected_docs)
    assert 0.03 < m["splits"]["val"]["documents"] / len(expected_docs) < 0.2
    # the first train document decodes to the first document of the corpus that was not held out
    first_train = next(
        t for t in TEXTS if not prep._is_val(_doc(t), (0).to_bytes(8, "little", signed=True), 0.1)
    )
    assert decoded_first[0].split()[:12] == tok.decode(tok.encode(first_train).ids).split()[:12]


def _doc(text):
    from bertpld.data.sources import Document
    from bertpld.data.text import document_sentences

    s = document_sentences(" ".join(text.split()))
    return Document("text", s, sum(map(len, s)))


def test_rerun_is_noop_and_other_config_refused(tmp_path, corpus, monkeypatch):
    out = tmp_path / "data"
    m1 = prep.prepare(_cfg(corpus), out, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def boom(*a, **k):
        raise AssertionError("a no-op rerun wrote a shard")

    monkeypatch.setattr(prep, "write_shard", boom)
    monkeypatch.setattr(prep, "train_tokenizer", boom)
    assert prep.prepare(_cfg(corpus), out, progress=False) == m1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    with pytest.raises(
        BertpldError, match=r"different config \(prepare.vocab_size: 400 -> 300\); pass --overwrite"
    ):
        prep.prepare(_cfg(corpus, vocab_size=300), out, progress=False)
    monkeypatch.undo()
    m2 = prep.prepare(_cfg(corpus, vocab_size=300), out, progress=False, overwrite=True)
    assert m2["vocab_size"] == 300 and m2["fingerprint"] != m1["fingerprint"]


def test_interrupted_prepare_resumes_at_first_unfinished_shard(tmp_path, corpus, monkeypatch):
    reference = prep.prepare(_cfg(corpus), tmp_path / "ref", progress=False)
    n_shards = sum(len(s["shards"]) for s in reference["splits"].values())
    assert n_shards >= 4

    real = prep.write_shard
    calls: list[str] = []

    def interrupted(path, shard):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the third shard
        calls.append(path.name)
        return real(path, shard)

    out = tmp_path / "data"
    monkeypatch.setattr(prep, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(_cfg(corpus), out, progress=False)
    assert not (out / "manifest.json").exists()  # never looks complete
    first = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.npz")}
    assert len(first) == 2

    resumed: list[str] = []

    def counting(path, shard):
        resumed.append(path.name)
        return real(path, shard)

    monkeypatch.setattr(prep, "write_shard", counting)
    monkeypatch.setattr(prep, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer retrained on resume"))
    m = prep.prepare(_cfg(corpus), out, progress=False)
    assert len(resumed) == n_shards - 2
    assert {p: p.stat().st_mtime_ns for p in first} == first  # finished shards untouched
    assert m["splits"] == reference["splits"] and m["fingerprint"] == reference["fingerprint"]


def test_given_tokenizer_is_reused(tmp_path, corpus):
    a = prep.prepare(_cfg(corpus), tmp_path / "a", progress=False)
    b = prep.prepare(
        _cfg(corpus, tokenizer=str(tmp_path / "a" / "tokenizer.json")), tmp_path / "b", progress=False
    )
    assert b["tokenizer_sha256"] == a["tokenizer_sha256"]
    assert [r["sha256"] for r in b["splits"]["train"]["shards"]] == [
        r["sha256"] for r in a["splits"]["train"]["shards"]
    ]


def test_corpus_without_documents_is_an_error(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("Short.\n\nAlso short.\n")
    cfg = load_config(
        PrepareConfig, None, {"prepare": {"sources": ["text"], "text_files": [str(p)], "vocab_size": 100}}
    )
    with pytest.raises(BertpldError, match="yielded no documents"):
        prep.prepare(cfg, tmp_path / "out", progress=False)


def _cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bertpld.cli", "prepare", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


def test_cli_prepare_and_user_errors(tmp_path, corpus):
    r = _cli(
        f"text={corpus}",
        "--out",
        str(tmp_path / "d"),
        "--vocab-size",
        "300",
        "--set",
        "prepare.shard_tokens=1e6",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert (
        m["config"]["prepare"]["text_files"] == [str(corpus)]
        and m["config"]["prepare"]["shard_tokens"] == 1_000_000
    )
    for args, message in [
        (["text=/nonexistent.txt"], "error: prepare.text_files: no such file: /nonexistent.txt"),
        (["nonsense"], "error: source 'nonsense': unknown"),
        (["wikipedia"], "error: prepare.wikipedia: 'wikimedia/wikipedia:20231101.en' is no local file"),
    ]:
        r = _cli(*args, "--out", str(tmp_path / "e"))
        assert r.returncode == 2 and r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr


def test_literal_special_tokens_in_text_are_plain_text(tmp_path, corpus):
    p = tmp_path / "specials.jsonl"
    rows = [{"text": t} for t in TEXTS[:40]]
    rows.append({"text": "Write [MASK] or [SEP] in a sentence. The [CLS] token is not special here. " * 5})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = prep.prepare(_cfg(corpus, text_files=[str(p)], val_fraction=0.0), tmp_path / "d", progress=False)
    sh = open_shard(tmp_path / "d" / m["splits"]["train"]["shards"][-1]["path"])
    assert sh.tokens.min() >= len(SPECIAL_TOKENS)  # no special id inside the text
    tok = load_tokenizer(tmp_path / "d" / "tokenizer.json")
    last_doc = sh.tokens[sh.sentence_offsets[sh.document_offsets[-2]] :]
    assert tok.decode(last_doc[:30].tolist()).startswith("write [ mask ] or [ sep ] in a sentence")


def test_manifest_holds_the_unigram_line(tmp_path, corpus):
    """The validation tokens' cross-entropy under the training tokens' add-0.5 unigram, specials
    excluded, recomputed here from the shard files with plain numpy and a Python loop."""
    import math
    from collections import Counter

    from bertpld.data import unigram

    out = tmp_path / "data"
    m = prep.prepare(_cfg(corpus), out, progress=False)

    def counts(split):
        c = Counter()
        for rec in m["splits"][split]["shards"]:
            with np.load(out / rec["path"]) as z:
                c.update(z["tokens"].tolist())
        return c

    train, val = counts("train"), counts("val")
    regular = [i for i in range(m["vocab_size"]) if i not in m["special_tokens"].values()]
    total = sum(train[i] for i in regular) + 0.5 * len(regular)
    n_val = sum(val[i] for i in regular)
    expected = -sum(val[i] * math.log((train[i] + 0.5) / total) for i in regular) / n_val
    assert m["val_unigram_ce"] == pytest.approx(expected, abs=1e-6)
    assert 4.0 < m["val_unigram_ce"] < math.log(400)  # below the uniform distribution's loss

    # data prepared before the field existed: computed from the shards on demand, the same number
    old = {k: v for k, v in m.items() if k != "val_unigram_ce"}
    assert unigram.val_unigram_ce(out, old) == pytest.approx(expected, rel=1e-9)
    # no validation data: no line, and no error
    none = prep.prepare(_cfg(corpus, val_fraction=0.0), tmp_path / "noval", progress=False)
    assert none["val_unigram_ce"] is None
