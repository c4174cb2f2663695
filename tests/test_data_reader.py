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


def _epoch_instances(r, epoch=0):
    """Every instance of a train epoch, window by window in reading order, and the split's table."""
    from bertpld.data.instances import concat_instances

    windows = [r._window_instances(epoch, i) for i in range(len(r._plan(epoch)))]
    return concat_instances(windows), r._table(list(range(len(r._shards))))


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
    inst, t = _epoch_instances(r)
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
    inst, t = _epoch_instances(r)
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


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_ranks_read_one_stream_whatever_the_world_size(data):
    """Rank r of W's k-th batch is the single stream's batch kW + r, masks included: an optimizer
    step consumes the same sequences on any number of ranks."""
    single = _take(_reader(data, seed=5), 12)
    for world in (2, 3):
        per_rank = [_take(_reader(data, seed=5, rank=r, world_size=world), 12 // world) for r in range(world)]
        interleaved = [per_rank[r][k] for k in range(12 // world) for r in range(world)]
        assert _same(interleaved, single)


def test_a_step_reads_the_same_sequences_whatever_the_world_and_micro_batch(data):
    """Step s is the global batch at positions [sG, (s + 1)G): rank r takes the r-th share and cuts
    it into micro-batches, so any world size and micro-batch reads the same sequences, masks included,
    and a state saved by one layout resumes in another."""
    G, steps = 24, 3

    def step_batches(world: int, micro: int, state=None) -> list[list[dict]]:
        ranks = [
            _reader(data, batch=micro, seed=4, rank=r, world_size=world, global_batch_size=G)
            for r in range(world)
        ]
        for r in ranks:
            if state is not None:
                r.load_state_dict(state)
        accum = G // (world * micro)
        per_rank = [_take(r, steps * accum) for r in ranks]
        # a step: rank 0's micro-batches, then rank 1's, ...
        out = [
            [b for r in range(world) for b in per_rank[r][s * accum : (s + 1) * accum]] for s in range(steps)
        ]
        return out, ranks[0].state_dict()

    def rows(batches: list[dict]) -> dict[str, torch.Tensor]:
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}

    reference, state = step_batches(1, 24)
    for world, micro in ((1, 8), (2, 12), (2, 4), (3, 8), (4, 3)):
        got, got_state = step_batches(world, micro)
        assert got_state == state
        for a, b in zip(reference, got):
            assert all(torch.equal(rows(a)[k], rows(b)[k]) for k in rows(a)), (world, micro)
    ahead, _ = step_batches(1, 24, state)
    for world, micro in ((2, 6), (3, 4)):
        got, _ = step_batches(world, micro, state)  # resumed in another layout
        for a, b in zip(ahead, got):
            assert all(torch.equal(rows(a)[k], rows(b)[k]) for k in rows(a)), (world, micro)


def test_an_epoch_reads_every_instance_once_in_windows_of_shards(data):
    small = DataConfig(objective="mlm+nsp", max_seq_len=T, shuffle_window_tokens=60_000)
    r = PretrainReader(data, small, "train", 16, seed=3)
    plan = r._plan(0)
    assert len(r._shards) >= 3 and len(plan) >= 2  # several windows of whole shards
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(r._shards)))  # each shard once
    assert [s.tolist() for s in plan] != [s.tolist() for s in r._plan(1)]  # a new order each epoch
    for w in plan[:-1]:  # a window closes once it holds shuffle_window_tokens tokens
        assert r._shard_tokens[w].sum() >= 60_000 - r._shard_tokens[w[-1]]
    sizes = r.window_sizes(0)
    # the epoch is exactly the union of its shards' instances, each once
    inst, _ = _epoch_instances(r)
    per_shard = [r._shard_instances(0, s) for s in range(len(r._shards))]
    key = lambda i: sorted(zip(i.shard.tolist(), i.a_start.tolist(), i.a_len.tolist(), i.b_start.tolist()))  # noqa: E731
    from bertpld.data.instances import concat_instances

    assert key(inst) == key(concat_instances(per_shard)) and len(inst) == sum(sizes)
    # each window is read in a random order of its shards' instances, not shard after shard
    for i, w in enumerate(plan):
        built = concat_instances([r._shard_instances(0, int(s)) for s in w])  # shard after shard
        read = r._window_instances(0, i)
        place = {k: j for j, k in enumerate(zip(built.shard.tolist(), built.a_start.tolist()))}
        assert len(place) == len(built) == len(read) > 500  # (shard, a_start) names an instance
        order = np.array([place[k] for k in zip(read.shard.tolist(), read.a_start.tolist())])
        assert sorted(order.tolist()) == list(range(len(read)))  # the same instances, each once
        assert abs(np.corrcoef(order, np.arange(len(read)))[0, 1]) < 0.2  # ... in no trace of that order
        if len(w) > 1:  # the shards are mixed from the start: each has about its share of the first tenth
            head = read.shard[: len(read) // 10]
            for s in w:
                share = (built.shard == s).mean()
                assert abs((head == s).mean() - share) < 0.15, (i, s)
    # the stream crosses from window to window and into the next epoch without a gap
    n = sum(sizes)
    it = iter(r)
    rows = 0
    while r.position < n + 32:
        rows += len(next(it)["input_ids"])
    assert rows == r.position and r.epoch == 1


def test_state_resume_gives_the_same_next_batch(data):
    cfg = DataConfig(objective="mlm+nsp", max_seq_len=T, shuffle_window_tokens=60_000)
    sizes = PretrainReader(data, cfg, "train", 16, seed=7).window_sizes(0)
    # inside the first window, across a window boundary, across the epoch boundary
    # (whole steps of 2 ranks x 16: multiples of 32)
    for at in (4 * 16, sizes[0] // 32 * 32 - 32, sum(sizes) // 32 * 32 - 32):
        r = PretrainReader(data, cfg, "train", 16, seed=7)
        _take(r, at // 16)
        state = json.loads(json.dumps(r.state_dict()))  # survives a JSON checkpoint
        expected = _take(r, 5)
        fresh = PretrainReader(data, cfg, "train", 16, seed=7)
        fresh.load_state_dict(state)
        assert _same(_take(fresh, 5), expected)
        # on 2 ranks: rank k continues with the stream's batches 2j + k
        halves = [PretrainReader(data, cfg, "train", 16, seed=7, rank=k, world_size=2) for k in range(2)]
        for h in halves:
            h.load_state_dict(state)
        got = [_take(h, 2) for h in halves]
        assert _same([got[0][0], got[1][0], got[0][1], got[1][1]], expected[:4])
    assert r.epoch == 1  # the last case did cross into epoch 1


def test_resume_refuses_an_incompatible_state(data):
    r = _reader(data, seed=1)
    _take(r, 3)
    state = r.state_dict()
    with pytest.raises(BertpldError, match=r"^data reader state: seed was 1, now 2; cannot resume$"):
        _reader(data, seed=2).load_state_dict(state)
    with pytest.raises(BertpldError, match=r"position 48 is not a whole number of steps of 32 sequences"):
        _reader(data, seed=1, world_size=2).load_state_dict(state)
    old = {"split": "train", "seed": 1, "rank": 0, "world_size": 1, "epoch": 0, "position": 48}
    with pytest.raises(BertpldError, match="written by an older bertpld"):
        _reader(data, seed=1).load_state_dict(old)


def test_deterministic_given_seed_and_epochs_differ(data):
    a, b, c = (
        _take(_reader(data, seed=1), 2),
        _take(_reader(data, seed=1), 2),
        _take(_reader(data, seed=2), 2),
    )
    assert torch.equal(a[1]["input_ids"], b[1]["input_ids"])
    assert not torch.equal(a[1]["input_ids"], c[1]["input_ids"])
    r = _reader(data, seed=1)
    e0, e1 = r._window_instances(0, 0), r._window_instances(1, 0)
    assert not np.array_equal(e0.a_start[:50], e1.a_start[:50])


def test_validation_is_fixed_and_finite(data):
    v1 = list(_reader(data, split="val", seed=1))
    v2 = list(_reader(data, split="val", seed=99))
    r = _reader(data, split="val")
    assert len(v1) == len(r) > 0
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(list(r), list(r)))  # repeatable
    for x, y in zip(v1, v2):
        assert all(torch.equal(x[k], y[k]) for k in x)
    n = len(r._val)
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


def test_checksums_are_verified_once_per_data_directory(data, tmp_path, monkeypatch):
    import os

    import bertpld.data.reader as R

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    (copy / ".verified.json").unlink(missing_ok=True)  # left by other tests' readers
    hashed = []
    real = R.sha256_file
    monkeypatch.setattr(R, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    monkeypatch.setattr(R, "_verified", {})  # as in a new process
    _reader(copy)
    n = len(load_manifest(copy)["splits"]["train"]["shards"])
    assert len(hashed) == n and (copy / ".verified.json").is_file()
    monkeypatch.setattr(R, "_verified", {})  # another process, another rank, a restart
    _reader(copy)
    assert len(hashed) == n  # nothing hashed again
    shard = copy / load_manifest(copy)["splits"]["train"]["shards"][0]["path"]
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # same size, new content, new mtime: hashed again and refused
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    monkeypatch.setattr(R, "_verified", {})
    with pytest.raises(BertpldError, match=r"shard-00000.npz: checksum mismatch"):
        _reader(copy)
    assert hashed[-1] == "shard-00000.npz"


def test_a_read_only_data_directory_is_verified_per_process(data, tmp_path, monkeypatch):
    """Where .verified.json cannot be written, readers still read: each process hashes every shard
    once and remembers it, and a shard changed since is still caught."""
    import bertpld.data.reader as R
    import bertpld.data.shards as S

    ro = tmp_path / "ro"
    shutil.copytree(data, ro)
    (ro / S.VERIFIED).unlink()  # (prepare leaves a record: with it, nothing is hashed or written)
    shards = sorted(rec["path"] for rec in load_manifest(ro)["splits"]["train"]["shards"])
    writes, hashed, sha256_file = [], [], R.sha256_file

    def refuse(path, *args, **kwargs):  # a read-only directory
        writes.append(Path(path).name)
        raise PermissionError(13, "Permission denied", str(path))

    def counting_sha256(path, *args, **kwargs):
        hashed.append(Path(path).relative_to(ro).as_posix())
        return sha256_file(path, *args, **kwargs)

    monkeypatch.setattr(R, "_verified", {})  # a fresh process
    monkeypatch.setattr(S, "atomic_write_json", refuse)
    monkeypatch.setattr(R, "sha256_file", counting_sha256)
    assert _take(_reader(ro), 1)  # the record cannot be written: still reads
    assert writes == [S.VERIFIED] and not (ro / S.VERIFIED).exists()  # it was tried, and failed
    assert sorted(hashed) == shards  # every train shard hashed, once
    assert _take(_reader(ro), 1) and sorted(hashed) == shards  # this process remembers them
    assert set(writes) == {S.VERIFIED} and not (ro / S.VERIFIED).exists()
    monkeypatch.setattr(R, "_verified", {})  # the next process hashes them again
    assert _take(_reader(ro), 1) and sorted(hashed) == sorted(shards * 2)
    first = ro / shards[0]  # ... and still finds a shard changed since
    middle = first.stat().st_size // 2
    with open(first, "r+b") as f:
        f.seek(middle)
        byte = f.read(1)[0]
        f.seek(middle)
        f.write(bytes([byte ^ 1]))
    with pytest.raises(BertpldError, match=rf"{shards[0]}: checksum mismatch with manifest.json"):
        _reader(ro)


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
