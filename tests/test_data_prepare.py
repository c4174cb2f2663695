"""`bertpld prepare`: tokenizer, shards + manifest, no-op rerun, resume, refusal, CLI errors,
and the same bytes with any number of worker processes."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

import bertpld.atomic as atomic
import bertpld.data.prepare as prep
import bertpld.data.workers as workers
from bertpld import lock
from bertpld.config import ConfigError, PrepareConfig, PrepareSection, load_config
from bertpld.data import sources
from bertpld.data import text as text_mod
from bertpld.data.pieces import read_piece
from bertpld.data.shards import open_shard, sha256_file
from bertpld.data.sources import SourceStats, iter_documents
from bertpld.data.tokenizer import SPECIAL_TOKENS, alphabet, load_tokenizer, train_tokenizer
from bertpld.errors import BertpldError

TEXTS = [t for t in topics.values() if len(t) > 400]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Python's own docs as a text corpus: one document per topic, blank-line separated."""
    p = tmp_path_factory.mktemp("corpus") / "topics.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return p


def _cfg(corpus: Path | None, **over) -> PrepareConfig:
    fields = dict(vocab_size=400, val_fraction=0.1, shard_tokens=25_000)
    if corpus is not None:
        fields.update(sources=["text"], text_files=[str(corpus)])
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
    # the fingerprint, from its definition (docs/DESIGN.md): sha256 of the recorded config (JSON,
    # keys sorted) followed by the tokenizer file's sha256, computed here without bertpld's helpers
    tok_sha = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    blob = json.dumps(m["config"], sort_keys=True) + tok_sha
    assert m["fingerprint"] == hashlib.sha256(blob.encode()).hexdigest()
    recorded = m["config"]["prepare"]
    assert (recorded["text_files"], recorded["vocab_size"], recorded["val_fraction"], recorded["seed"]) == (
        [str(corpus)],
        400,
        0.1,
        0,
    )
    tok = load_tokenizer(out / "tokenizer.json")
    expected_docs = [t for t in TEXTS]  # all longer than min_doc_chars
    total_docs = 0
    starts: dict[str, list[list[str]]] = {"train": [], "val": []}  # each document's first words
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
            for d in range(sh.num_documents):
                first, end = (sh.sentence_offsets[sh.document_offsets[i]] for i in (d, d + 1))
                starts[split].append(tok.decode(sh.tokens[first:end].tolist()).split()[:12])
        # shards other than the last hold about shard_tokens (whole documents)
        assert all(r["tokens"] >= 25_000 for r in s["shards"][:-1])
    assert total_docs == len(expected_docs)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(expected_docs)
    assert 0.03 < m["splits"]["val"]["documents"] / len(expected_docs) < 0.2
    # The held-out documents, by the split rule recomputed here: a document is held out when the
    # blake2b hash (8-byte digest, keyed by prepare.seed as 8 little-endian bytes, here 0) of its
    # text, its sentences one per line, read as a little-endian integer is below val_fraction x 2^64.
    held_out = [_blake2b_fraction(t, key=bytes(8)) < 0.1 for t in TEXTS]
    assert m["splits"]["val"]["documents"] == sum(held_out) and 0 < sum(held_out) < len(TEXTS)
    # every split holds exactly its documents, in corpus order (compared by their first words)
    for split, want in (("train", False), ("val", True)):
        expected = [tok.decode(tok.encode(t).ids).split()[:12] for t, v in zip(TEXTS, held_out) if v == want]
        assert starts[split] == expected, split


def _blake2b_fraction(text: str, key: bytes) -> float:
    """A corpus record's place in [0, 1) under the split hash, the document as prepare sees it:
    cleaned and split into sentences (the record's lines are its paragraphs), one per line."""
    from bertpld.data.text import document_sentences

    digest = hashlib.blake2b("\n".join(document_sentences(text)).encode(), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def test_rerun_is_noop_and_other_config_refused(tmp_path, corpus, monkeypatch):
    out = tmp_path / "data"
    m1 = prep.prepare(_cfg(corpus), out, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}  # names its last holder

    def boom(*a, **k):
        raise AssertionError("a no-op rerun wrote a shard")

    monkeypatch.setattr(prep, "write_shard", boom)
    monkeypatch.setattr(prep, "train_tokenizer", boom)
    assert prep.prepare(_cfg(corpus), out, progress=False) == m1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == stamp
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
    assert (out / ".prepare-progress.json").is_file()
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
    assert not (out / ".prepare-progress.json").exists()  # finished: nothing left of the resume state
    assert prep.prepare(_cfg(corpus), out, progress=False) == m  # and a rerun is still a no-op


def test_a_second_prepare_is_refused_while_one_writes(tmp_path, corpus):
    out = tmp_path / "data"
    with lock.hold(out, "bertpld prepare"):  # a prepare writing `out` (flock: per open file, so even here)
        r = _cli(f"text={corpus}", "--out", str(out), "--vocab-size", "300")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(
        f"error: {out}: in use by bertpld prepare (pid {os.getpid()} on {socket.gethostname()}); one writer"
    ), r.stderr
    assert _cli(f"text={corpus}", "--out", str(out), "--vocab-size", "300").returncode == 0  # released


def test_a_full_disk_stops_prepare_with_finished_shards_intact(tmp_path, corpus, monkeypatch):
    reference = prep.prepare(_cfg(corpus), tmp_path / "ref", progress=False)
    out = tmp_path / "data"
    real = atomic.os.fsync
    shards: list[str] = []

    def full_at_third_shard(fd):  # the real temp-file-and-rename write, failing as a full disk does
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".shard-" in name:
            shards.append(name)
            if len(shards) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", full_at_third_shard)
    with pytest.raises(BertpldError) as e:
        prep.prepare(_cfg(corpus), out, progress=False)
    failed = Path(shards[2]).parent / Path(shards[2]).name.split(".")[1]
    assert str(e.value) == (
        f"{out / failed.parent.name / failed.name}.npz: write failed (No space left on device); prepare "
        "stopped, the shards written before are intact: free space or fix permissions, then run the same "
        "command again (it resumes)"
    )
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()
    assert len(list(out.rglob("shard-*.npz"))) == 2
    monkeypatch.undo()
    m = prep.prepare(_cfg(corpus), out, progress=False)
    assert m["splits"] == reference["splits"] and m["fingerprint"] == reference["fingerprint"]


def test_prepare_records_its_shards_as_verified(tmp_path, corpus, monkeypatch):
    import bertpld.data.reader as R

    out = tmp_path / "data"
    m = prep.prepare(_cfg(corpus), out, progress=False)
    records = [r for s in m["splits"].values() for r in s["shards"]]
    monkeypatch.setattr(R, "_verified", {})  # a reader in a new process
    monkeypatch.setattr(R, "sha256_file", lambda p: pytest.fail(f"{p} hashed again after prepare"))
    R.verify_shards(out, records)
    recorded = json.loads((out / ".verified.json").read_text())
    assert sorted(recorded) == sorted(r["path"] for r in records)
    assert all(recorded[r["path"]][2] == sha256_file(out / r["path"]) for r in records)


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


# ----------------------------------------------------------------------------------------------
# Worker processes: the same bytes for any number, resume, errors


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of ~20k characters, so the test corpora make a few dozen of them (blocks are cut in
    the main process, so this reaches the workers too)."""
    monkeypatch.setattr(workers, "BLOCK_CHARS", 20_000)


_PROCESS = workers.process  # imported before any test patches it, here and in worker processes


def _jittered(job):
    """`workers.process`, but in a worker process half the blocks finish late: results arrive out
    of order, so an output that followed the order of completion would differ between counts."""
    first = (job.records or job.texts or job.pieces or [""])[0]
    if multiprocessing.parent_process() is not None and zlib.crc32(str(first)[:200].encode()) % 2:
        time.sleep(0.05)
    return _PROCESS(job)


def _identity(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "timing_s"}


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory, corpus) -> dict:
    """Two source parts: the jsonl topics, and a book of them with invalid UTF-8 bytes in it."""
    book = tmp_path_factory.mktemp("book") / "book.txt"
    body = "\n\n".join(TEXTS[::-1]).encode()
    book.write_bytes(body[:300_000] + b" \xff\xfe broken. " + body[300_000:])
    return dict(sources=["text", "bookcorpus"], text_files=[str(corpus)], bookcorpus=str(book))


def test_output_is_the_same_for_any_number_of_workers(tmp_path, two_parts, small_blocks, monkeypatch):
    monkeypatch.setattr(workers, "process", _jittered)
    manifests = {}
    for n in (1, 2, 3):
        manifests[n] = prep.prepare(_cfg(None, **two_parts, workers=n), tmp_path / f"w{n}", progress=False)
    m = manifests[1]
    assert sum(len(s["shards"]) for s in m["splits"].values()) >= 6 and m["replaced_bytes"] == 2
    assert "workers" not in m["config"]["prepare"]
    for n in (2, 3):
        assert _identity(manifests[n]) == _identity(m)  # shard sha256s and fingerprint included
        for split in m["splits"].values():
            for rec in split["shards"]:
                assert sha256_file(tmp_path / f"w{n}" / rec["path"]) == rec["sha256"]
        assert (tmp_path / f"w{n}" / "tokenizer.json").read_bytes() == (
            tmp_path / "w1" / "tokenizer.json"
        ).read_bytes()


def test_max_documents_counts_as_the_sequential_reader(tmp_path, two_parts, small_blocks):
    """Reading runs ahead of counting: what was read past max_documents must not count."""
    fields = dict(two_parts, max_documents=30, min_doc_chars=900)
    stats = SourceStats()
    before = text_mod.replaced_bytes()
    docs = list(iter_documents(PrepareSection(**fields), stats))
    replaced = text_mod.replaced_bytes() - before
    expected = {k: dataclasses.asdict(v) for k, v in stats.parts.items()}
    assert expected["text"]["dropped_short"] > 0 and expected["text"]["kept"] == 30
    assert expected["bookcorpus"]["kept"] == 30
    for n in (1, 3):
        m = prep.prepare(_cfg(None, **fields, workers=n), tmp_path / f"w{n}", progress=False)
        assert m["sources"] == expected and m["replaced_bytes"] == replaced
        assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(docs)


@pytest.mark.parametrize("max_documents", [0, 10])
def test_pieces_write_the_bytes_of_reading_in_the_main_process(
    tmp_path, two_parts, small_blocks, monkeypatch, max_documents
):
    """Workers reading pieces of local files themselves (bertpld.data.pieces) write what reading
    every record in the main process writes (as dumps and hub streams are read): JSON lines with
    invalid bytes and CRLFs, a book, parquet, sentence rows grouped into documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.jsonl"
    lines = [json.dumps({"text": t}).encode().replace(b". ", b". \xff") for t in TEXTS[1::3]]
    rows.write_bytes(b"\r\n".join(lines))  # the read-ahead past any row meets invalid bytes
    pq.write_table(pa.table({"text": TEXTS[::3]}), tmp_path / "docs.parquet", row_group_size=40)
    sentences = [s for t in TEXTS[2::3] for s in t.split(". ")]
    pq.write_table(pa.table({"text": sentences}), tmp_path / "sentences.parquet", row_group_size=500)
    fields = dict(
        two_parts,
        text_files=[str(rows), *two_parts["text_files"], str(tmp_path / "docs.parquet")],
        bookcorpus=f"{tmp_path / 'sentences.parquet'},{two_parts['bookcorpus']}",
        max_documents=max_documents,
        min_doc_chars=900,
    )
    m = prep.prepare(_cfg(None, **fields, workers=2), tmp_path / "pieces", progress=False)
    assert m["replaced_bytes"] > 2
    monkeypatch.setattr(sources, "_layouts", lambda paths, layout: None)  # every part read here
    (part,) = sources.iter_parts(PrepareSection(sources=["text"], text_files=[str(rows)]))
    assert part.files is None
    main = prep.prepare(_cfg(None, **fields, workers=2), tmp_path / "main", progress=False)
    assert _identity(m) == _identity(main)  # shard sha256s and fingerprint included


def test_interrupted_prepare_with_workers_resumes_at_first_unfinished_shard(
    tmp_path, corpus, small_blocks, monkeypatch
):
    reference = prep.prepare(_cfg(corpus, workers=1), tmp_path / "ref", progress=False)
    n_shards = sum(len(s["shards"]) for s in reference["splits"].values())
    real = prep.write_shard
    calls: list[str] = []

    def interrupted(path, shard):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while writing the third shard: the pool is cancelled
        calls.append(path.name)
        return real(path, shard)

    out = tmp_path / "data"
    monkeypatch.setattr(prep, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(_cfg(corpus, workers=2), out, progress=False)
    first = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.npz")}
    assert len(first) == 2 and not (out / "manifest.json").exists()

    resumed: list[str] = []
    encoded: list[int] = []
    assign = prep._assign

    def counting(res, n, splits):
        encoded.append(int(res.encoded[:n].sum()))
        return assign(res, n, splits)

    monkeypatch.setattr(
        prep, "write_shard", lambda path, shard: resumed.append(path.name) or real(path, shard)
    )
    monkeypatch.setattr(prep, "_assign", counting)
    m = prep.prepare(_cfg(corpus, workers=2), out, progress=False)
    assert len(resumed) == n_shards - 2
    assert {p: p.stat().st_mtime_ns for p in first} == first  # finished shards untouched
    assert _identity(m) == _identity(reference)
    assert sum(encoded) < len(TEXTS)  # documents of finished shards were not all encoded again


def test_killed_prepare_with_workers_resumes_and_leaves_no_worker(tmp_path, corpus):
    """kill -9 of the main process while writing the third shard; its workers exit by themselves."""
    reference = prep.prepare(_cfg(corpus, workers=1), tmp_path / "ref", progress=False)
    out, pids = tmp_path / "data", tmp_path / "pids.json"
    fields = json.dumps({**dataclasses.asdict(_cfg(corpus).prepare), "workers": 2})
    script = f"""
import json, multiprocessing, os, signal
from pathlib import Path
import bertpld.data.prepare as prep, bertpld.data.workers as workers
from bertpld.config import PrepareConfig, load_config
workers.BLOCK_CHARS = 20_000
real, calls = prep.write_shard, []
def write_shard(path, shard):
    if len(calls) == 2:
        Path({str(pids)!r}).write_text(json.dumps([p.pid for p in multiprocessing.active_children()]))
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(path)
    return real(path, shard)
prep.write_shard = write_shard
cfg = load_config(PrepareConfig, None, {{"prepare": json.loads({fields!r})}})
prep.prepare(cfg, {str(out)!r}, progress=False)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(list(out.rglob("shard-*.npz"))) == 2 and not (out / "manifest.json").exists()
    worker_pids = json.loads(pids.read_text())
    assert len(worker_pids) == 2
    m = prep.prepare(_cfg(corpus, workers=2), out, progress=False)
    assert _identity(m) == _identity(reference)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in worker_pids), "a worker outlived its killed main process"


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _raising(job):
    records = job.records if job.pieces is None else [r for p in job.pieces for r in read_piece(p).records]
    if job.texts is None and any("__init__" in str(r) for r in records):
        raise BertpldError("a user error, one line as every BertpldError")
    return _PROCESS(job)


def _dying(job):
    os._exit(3)


def test_worker_errors_are_one_line(tmp_path, corpus, small_blocks, monkeypatch):
    """A user error raised in a worker reaches the user as the one line it is, as without workers:
    nothing of the worker's traceback is added to it or chained to it."""
    monkeypatch.setattr(workers, "process", _raising)
    with pytest.raises(BertpldError) as alone:  # one worker: no pool, raised in this process
        prep.prepare(_cfg(corpus, workers=1), tmp_path / "one", progress=False)
    with pytest.raises(BertpldError) as e:
        prep.prepare(_cfg(corpus, workers=2), tmp_path / "a", progress=False)
    assert str(e.value) == str(alone.value) == "a user error, one line as every BertpldError"
    assert "\n" not in str(e.value) and e.value.args == (str(e.value),)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no worker traceback chained to it
    monkeypatch.setattr(workers, "process", _dying)
    with pytest.raises(BertpldError, match="a worker process died") as e:
        prep.prepare(_cfg(corpus, workers=2), tmp_path / "b", progress=False)
    assert "\n" not in str(e.value)


def test_malformed_file_read_ahead_is_the_same_one_line_error(tmp_path, corpus):
    """The error of a bad row deep in a file, read while earlier blocks are with the workers."""
    bad = tmp_path / "bad.jsonl"
    rows = corpus.read_text().splitlines() * 3  # ~1.4M characters: a few blocks
    bad.write_text("\n".join(rows[:180] + ['{"title": "no text"}'] + rows[180:]) + "\n")
    for n in ("1", "2"):
        r = _cli(f"text={bad}", "--out", str(tmp_path / f"w{n}"), "--workers", n, "--vocab-size", "300")
        assert r.returncode == 2, r.stderr
        assert r.stderr == f"error: {bad}:181: expected an object with a string field 'text'\n"


def test_tokenizer_training_is_deterministic_with_threads_and_given_alphabets(monkeypatch):
    texts = TEXTS[:150]
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    one_thread = train_tokenizer(texts, 300).to_str()
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    assert train_tokenizer(texts, 300).to_str() == one_thread
    assert train_tokenizer(texts, 300, [alphabet(t) for t in texts]).to_str() == one_thread


def test_cli_workers_option_and_rerun_with_other_workers_is_noop(tmp_path, corpus):
    d = str(tmp_path / "d")
    r = _cli(f"text={corpus}", "--out", d, "--workers", "2", "--vocab-size", "300")
    assert r.returncode == 0, r.stderr
    assert "documents/s" in r.stderr and "tokens/s) with 2 worker processes" in r.stderr
    r = _cli(f"text={corpus}", "--out", d, "--workers", "1", "--vocab-size", "300")
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr
    r = _cli(f"text={corpus}", "--out", d, "--workers", "-1")
    assert r.returncode == 2 and r.stderr.startswith("error: prepare.workers") and r.stderr.count("\n") == 1
    with pytest.raises(ConfigError, match="prepare.workers"):
        load_config(PrepareConfig, None, {"prepare": {"workers": -2}})
