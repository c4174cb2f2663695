"""PretrainReader: batch layout, masking statistics, NSP pairs, ranks, resume, validation, checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bertpld.config import DataConfig
from bertpld.data.masking import instance_keys, mask_tokens
from bertpld.data.reader import PretrainReader, load_manifest
from bertpld.errors import BertpldError
from tests.conftest import make_prepared_data

PAD, UNK, CLS, SEP, MASK = range(5)
T = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A prepared directory from Python's docs: vocab 300, several train shards."""
    return make_prepared_data(
        tmp_path_factory.mktemp("reader"), vocab_size=300, val_fraction=0.1, shard_tokens=40_000
    )


def _reader(data, objective="mlm+nsp", split="train", batch=16, **kw):
    return PretrainReader(data, DataConfig(objective=objective, max_seq_len=T), split, batch, **kw)


def _take(reader, n):
    it = iter(reader)
    return [next(it) for _ in range(n)]


def test_batch_layout_nsp(data):
    r = _reader(data)
    assert r.vocab_size == 300 and r.tokenizer_path == data / "tokenizer.json"
    assert len(r._tokens) >= 2  # several shards are exercised
    P = DataConfig(max_seq_len=T).predictions_per_seq
    for b in _take(r, 5):
        assert set(b) == {
            "input_ids",
            "token_type_ids",
            "attention_mask",
            "mlm_positions",
            "mlm_labels",
            "nsp_labels",
        }
        assert all(v.dtype == torch.int64 for v in b.values())
        assert (
            b["input_ids"].shape == (16, T)
            and b["mlm_positions"].shape == (16, P)
            and b["nsp_labels"].shape == (16,)
        )
        ids, types, att = b["input_ids"].numpy(), b["token_type_ids"].numpy(), b["attention_mask"].numpy()
        labels, pos = b["mlm_labels"].numpy(), b["mlm_positions"].numpy()
        orig = ids.copy()
        rows = np.arange(16)[:, None]
        orig[rows, pos] = np.where(labels >= 0, labels, orig[rows, pos])
        for i in range(16):
            n = att[i].sum()
            assert (att[i, :n] == 1).all() and (att[i, n:] == 0).all() and (ids[i, n:] == PAD).all()
            assert ids[i, 0] == CLS and ids[i, n - 1] == SEP
            seps = np.flatnonzero(orig[i] == SEP)
            assert len(seps) == 2 and seps[1] == n - 1
            # segment ids: 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding
            assert (types[i, : seps[0] + 1] == 0).all() and (types[i, seps[0] + 1 : n] == 1).all()
            assert (types[i, n:] == 0).all()
            assert seps[0] >= 2 and seps[1] - seps[0] >= 2  # A and B non-empty


def test_mlm_objective_packs_whole_sentences(data):
    r = _reader(data, objective="mlm")
    b = _take(r, 3)[-1]
    assert "nsp_labels" not in b
    assert (b["token_type_ids"] == 0).all()
    inst = r._epoch(0)[0]
    t = r._table
    # every packed instance starts at a sentence start and (unless one sentence is too long) ends at one
    starts = t.start + t.shard.astype(np.int64) * 10**9
    a = inst.a_start + inst.shard.astype(np.int64) * 10**9
    assert np.isin(a, starts).all()
    ends = np.isin(a + inst.a_len, starts + t.length)
    assert ends.mean() > 0.95
    assert (inst.a_len <= T - 2).all() and inst.a_len.mean() > 0.7 * (T - 2)


def test_masking_statistics_and_specials_never_masked():
    rng = np.random.default_rng(0)
    B, L, P = 4000, 128, 20
    ids = rng.integers(5, 1000, (B, L))
    ids[:, 0], ids[:, 100:] = CLS, PAD
    ids[:, 99] = SEP
    ids[rng.random((B, L)) < 0.05] = UNK  # specials inside the text must not be chosen either
    special = np.zeros(1000, bool)
    special[:5] = True
    cand = ~special[ids]
    orig = ids.copy()
    replacement = np.flatnonzero(~special)
    pos, labels = mask_tokens(ids, cand, instance_keys(3, 0, np.arange(B)), 0.15, P, MASK, replacement)
    valid = labels != -100
    rows = np.broadcast_to(np.arange(B)[:, None], pos.shape)
    # exactly round(15% of candidates) per row, all at candidate positions, labels = original tokens
    assert (valid.sum(1) == np.minimum(np.rint(cand.sum(1) * 0.15), P)).all()
    assert cand[rows[valid], pos[valid]].all()
    assert (labels[valid] == orig[rows[valid], pos[valid]]).all()
    assert (pos[~valid] == 0).all()
    assert len(np.unique(rows[valid] * L + pos[valid])) == valid.sum()  # no position twice
    changed = ids != orig
    assert changed[~cand].sum() == 0  # specials and padding untouched
    new = ids[rows[valid], pos[valid]]
    frac_mask = (new == MASK).mean()
    frac_keep = (new == labels[valid]).mean()
    frac_rand = 1 - frac_mask - frac_keep
    assert abs(frac_mask - 0.8) < 0.01 and abs(frac_rand - 0.1) < 0.01 and abs(frac_keep - 0.1) < 0.01
    random_tokens = new[(new != MASK) & (new != labels[valid])]
    assert not special[random_tokens].any()
    # uniform choice: every candidate position is masked about equally often
    per_pos = np.bincount(pos[valid], minlength=L)[1:99] / B
    assert np.abs(per_pos - per_pos.mean()).max() < 0.03


def test_reader_mask_rate(data):
    r = _reader(data, batch=64)
    chosen = cands = 0
    for b in _take(r, 10):
        ids = b["input_ids"].numpy().copy()
        lab, pos = b["mlm_labels"].numpy(), b["mlm_positions"].numpy()
        rows = np.arange(len(ids))[:, None]
        ids[rows, pos] = np.where(lab >= 0, lab, ids[rows, pos])
        cands += ((ids >= 5) & (b["attention_mask"].numpy() == 1)).sum()
        chosen += (lab >= 0).sum()
        assert (ids[rows, pos][lab >= 0] >= 5).all()
    assert abs(chosen / cands - 0.15) < 0.01


def test_nsp_pairs_half_random_and_segments_from_the_right_documents(data):
    r = _reader(data)
    inst = r._epoch(0)[0]
    t = r._table
    assert abs(inst.nsp.mean() - 0.5) < 0.05
    key = t.shard.astype(np.int64) * 10**9 + t.start  # sentence start -> sentence index
    order = np.argsort(key)

    def sentence_of(shard, tok):
        k = shard.astype(np.int64) * 10**9 + tok
        return order[np.searchsorted(key[order], k, side="right") - 1]

    sa, sb = sentence_of(inst.shard, inst.a_start), sentence_of(inst.shard, inst.b_start)
    same_doc = t.doc_start[sa] == t.doc_start[sb]
    nxt, rnd = inst.nsp == 0, inst.nsp == 1
    assert same_doc[nxt].all()  # is-next: B from A's document, right after A
    whole = inst.a_len + inst.b_len < T - 3
    contiguous = inst.b_start == inst.a_start + inst.a_len
    assert contiguous[nxt & whole].all()
    assert not same_doc[rnd].any()  # random: B from another document
    assert (inst.a_len + inst.b_len <= T - 3).all() and (inst.a_len >= 1).all() and (inst.b_len >= 1).all()


def _rows(batches, n):
    ids = torch.cat([b["input_ids"] for b in batches])[:n]
    labels = torch.cat([b["mlm_labels"] for b in batches])[:n]
    return sorted(map(tuple, torch.cat([ids, labels], 1).tolist()))


def test_rank_partitioning_disjoint_and_complete(data):
    world = 3
    readers = [_reader(data, seed=5, rank=k, world_size=world) for k in range(world)]
    parts = [rd.rank_indices(0) for rd in readers]
    n = readers[0].instances_in_epoch(0)
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n
    # the rows the ranks yield in epoch 0 are exactly the rows a single reader yields
    single = _reader(data, seed=5)
    per_rank = [_rows(_take(rd, -(-len(p) // 16)), len(p)) for rd, p in zip(readers, parts)]
    assert sorted(sum(per_rank, [])) == _rows(_take(single, -(-n // 16)), n)
    assert not set(per_rank[0]) & set(per_rank[1])


def test_state_resume_gives_the_same_next_batch(data):
    r = _reader(data, seed=7)
    n_epoch = len(r.rank_indices(0)) // 16
    it = iter(r)
    for k in (3, n_epoch - 3):  # inside an epoch and across the epoch boundary
        while r.position < k * 16 and r.epoch == 0:
            next(it)
        state = json.loads(json.dumps(r.state_dict()))  # survives a JSON checkpoint
        expected = [next(it) for _ in range(5)]
        fresh = _reader(data, seed=7)
        fresh.load_state_dict(state)
        got = _take(fresh, 5)
        for e, g in zip(expected, got):
            assert all(torch.equal(e[k], g[k]) for k in e)
    assert r.epoch == 1  # the loop above did cross into epoch 1


def test_deterministic_given_seed_and_epochs_differ(data):
    a, b, c = (
        _take(_reader(data, seed=1), 2),
        _take(_reader(data, seed=1), 2),
        _take(_reader(data, seed=2), 2),
    )
    assert torch.equal(a[1]["input_ids"], b[1]["input_ids"])
    assert not torch.equal(a[1]["input_ids"], c[1]["input_ids"])
    r = _reader(data, seed=1)
    assert not np.array_equal(r.rank_indices(0)[:50], r.rank_indices(1)[:50])


def test_validation_is_fixed_and_finite(data):
    v1 = list(_reader(data, split="val", seed=1))
    v2 = list(_reader(data, split="val", seed=99))
    r = _reader(data, split="val")
    assert len(v1) == len(r) > 0
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(list(r), list(r)))  # repeatable
    for x, y in zip(v1, v2):
        assert all(torch.equal(x[k], y[k]) for k in x)
    n = r.instances_in_epoch()
    halves = [_rows(list(_reader(data, split="val", rank=k, world_size=2)), n) for k in range(2)]
    assert sorted(halves[0] + halves[1]) == _rows(v1, n)


def test_checksum_failure_names_the_shard(data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    m = load_manifest(copy)
    shard = copy / m["splits"]["train"]["shards"][1]["path"]
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(raw))
    with pytest.raises(BertpldError, match=r"train/shard-00001.npz: checksum mismatch"):
        _reader(copy)
    shard.unlink()
    with pytest.raises(BertpldError, match="shard-00001.npz: shard listed in manifest.json is missing"):
        _reader(copy)


def test_load_manifest_errors(tmp_path):
    with pytest.raises(BertpldError, match="no such data directory"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(BertpldError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BertpldError, match="unreadable manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BertpldError, match="not a bertpld manifest"):
        load_manifest(tmp_path)
    good = {
        "format": "bertpld-shards-v1",
        "vocab_size": 100,
        "tokenizer": "tokenizer.json",
        "tokenizer_sha256": "",
        "special_tokens": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4},
        "fingerprint": "",
        "splits": {"train": {"shards": [{"path": "train/shard-00000.npz", "size": 1, "sha256": "x"}]}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(good))
    assert load_manifest(tmp_path)["vocab_size"] == 100
    broken = [
        ({"special_tokens": {"[PAD]": 0}}, "special_tokens must map"),
        ({"splits": {"train": []}}, "splits must map"),
        ({"splits": {"train": {"shards": [{"path": "a.npz"}]}}}, "every shard must be"),
    ]
    for change, message in broken:
        (tmp_path / "manifest.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(BertpldError, match=message):
            load_manifest(tmp_path)
