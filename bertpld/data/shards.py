"""The shard file format: one uncompressed ``.npz`` per shard, memory-mappable member by member.

A shard holds whole documents:
    tokens            (N,) uint16 or uint32   token ids of every sentence, concatenated
    sentence_offsets  (S+1,) int64            sentence i is tokens[sentence_offsets[i]:sentence_offsets[i+1]]
    document_offsets  (D+1,) int64            document d is sentences document_offsets[d]..document_offsets[d+1]

`np.savez` stores members uncompressed, so each array can be memory-mapped at its offset inside
the zip: readers touch only the pages they use and processes share the page cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertpld.atomic import atomic_write_bytes, atomic_write_json
from bertpld.errors import BertpldError

FORMAT = "bertpld-shards-v1"  # the prepared directory's layout, checked by the reader
MANIFEST = "manifest.json"  # written last: its presence means the directory is complete
PROGRESS = ".prepare-progress.json"  # present while a prepare is unfinished
VERIFIED = ".verified.json"  # shards whose sha256 matched the manifest: {path: [size, mtime_ns, sha256]}
MEMBERS = ("tokens", "sentence_offsets", "document_offsets")


@dataclass
class Shard:
    tokens: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_shard(path: Path, shard: Shard) -> dict[str, int | str]:
    """Write atomically; returns {size, sha256} for the manifest."""
    assert (
        shard.sentence_offsets[-1] == len(shard.tokens) and shard.document_offsets[-1] == shard.num_sentences
    )
    assert len(shard.tokens) < 2**31  # readers index shards with int32 offsets
    buf = io.BytesIO()
    np.savez(buf, **{m: np.ascontiguousarray(getattr(shard, m)) for m in MEMBERS})
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def open_shard(path: Path) -> Shard:
    """Memory-map the members of a shard written by `write_shard`."""
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {m: _memmap_member(path, zf, m) for m in MEMBERS}
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise BertpldError(f"{path}: not a readable bertpld shard ({e})") from None
    return Shard(**arrays)


def _memmap_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"member {name} is compressed")
    with open(path, "rb") as f:
        # local file header: 30 fixed bytes, then name and extra field of their own lengths
        f.seek(info.header_offset)
        header = f.read(30)
        name_len = int.from_bytes(header[26:28], "little")
        extra_len = int.from_bytes(header[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran or len(shape) != 1:
        raise ValueError(f"member {name} is not a 1-d C array")
    if shape[0] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_verified(data_dir: Path) -> dict[str, list]:
    """DIR/.verified.json: {shard path: [size, mtime_ns, sha256]} of shards whose hash matched."""
    try:
        record = json.loads((data_dir / VERIFIED).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def verified_mark(data_dir: Path, rec: dict) -> list:
    """The mark of a manifest shard record `rec` ({path, size, sha256}) as on disk now."""
    st = (data_dir / rec["path"]).stat()
    return [st.st_size, st.st_mtime_ns, rec["sha256"]]


def write_verified(data_dir: Path, record: dict[str, list]) -> None:
    """Record verified shards; a read-only data directory records nothing (readers hash again)."""
    with contextlib.suppress(OSError):
        atomic_write_json(data_dir / VERIFIED, record)
