"""The reader at the paper's corpus size: start-up, memory and throughput, measured and projected.

Builds synthetic training corpora of a few hundred million tokens on disk from the offline demo
corpus (data/demo, `bertpld prepare --out data/demo --vocab-size 4096`): the demo's training
documents repeated, in a shuffled order per repetition, cut into shards of 4M tokens as `prepare`
writes them (so the sentences are real English, but every document occurs many times). For each
size, in a fresh process per measurement (rank 0 of 8, BERT's MLM+NSP at seq 128, micro-batch 32):

- start-up: constructing the reader and reading its first batch, cold (every shard hashed: the
  first reader of a new data directory) and warm (checksums recorded in .verified.json: every
  later rank, restart and run);
- memory: peak resident set (VmHWM) and anonymous resident memory (RssAnon: what the process owns,
  without the shard pages mapped from disk, which the page cache shares between ranks);
- batches/s while reading.

Then it projects start-up and memory per rank to the full Wikipedia + BookCorpus (4B tokens) by a
straight line through the two sizes, labelled as a projection.

    python scripts/bench_scale.py --sizes 50e6,200e6 --work /tmp/scale --out bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FULL_CORPUS_TOKENS = 4e9  # Wikipedia + BookCorpus in BERT's WordPiece (~3.3B words)

MEASURE = r"""
import json, os, sys, time
t0 = time.perf_counter()
from bertpld.config import DataConfig
from bertpld.data.reader import PretrainReader
t_import = time.perf_counter() - t0

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # MB
    return None

t = time.perf_counter()
r = PretrainReader(sys.argv[1], DataConfig(objective="mlm+nsp", max_seq_len=128), "train", 32, 1, 0, 8)
it = iter(r)
next(it)
startup = time.perf_counter() - t
t = time.perf_counter()
n = int(sys.argv[2])
for _ in range(n):
    next(it)
rate = n / (time.perf_counter() - t)
r.close()
print(json.dumps({"startup_s": startup, "import_s": t_import, "batches_per_s": rate,
                  "peak_rss_mb": status("VmHWM"), "anon_rss_mb": status("RssAnon")}))
"""


def build_corpus(demo: Path, out: Path, tokens: float, seed: int = 0) -> dict:
    """Shards of about 4M tokens made of the demo's training documents, repeated in shuffled order."""
    from bertpld.atomic import atomic_write_json
    from bertpld.data.shards import MANIFEST, Shard, open_shard, write_shard

    manifest = json.loads((demo / MANIFEST).read_text())
    src = [open_shard(demo / r["path"]) for r in manifest["splits"]["train"]["shards"]]
    docs = []  # (shard, first sentence, last sentence + 1)
    for i, sh in enumerate(src):
        do = np.asarray(sh.document_offsets)
        docs += [(i, int(a), int(b)) for a, b in zip(do[:-1], do[1:])]
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    records, total = [], 0
    toks, sents, doc_n = [], [], []
    buffered = 0

    def flush() -> None:
        nonlocal toks, sents, doc_n, buffered
        t = np.concatenate(toks)
        so = np.concatenate([[0], np.cumsum(np.concatenate(sents))])
        do = np.concatenate([[0], np.cumsum(doc_n)])
        rel = f"train/shard-{len(records):05d}.npz"
        info = write_shard(out / rel, Shard(t, so, do))
        records.append(
            {"path": rel, **info, "tokens": len(t), "documents": len(doc_n), "sentences": len(so) - 1}
        )
        toks, sents, doc_n, buffered = [], [], [], 0

    while total < tokens:
        for k in rng.permutation(len(docs)):
            i, a, b = docs[k]
            so = np.asarray(src[i].sentence_offsets[a : b + 1])
            toks.append(np.asarray(src[i].tokens[so[0] : so[-1]]))
            sents.append(np.diff(so))
            doc_n.append(b - a)
            buffered += int(so[-1] - so[0])
            total += int(so[-1] - so[0])
            if buffered >= 4_000_000:
                flush()
            if total >= tokens:
                break
    if buffered:
        flush()
    (out / "val").mkdir(exist_ok=True)
    for r in manifest["splits"]["val"]["shards"]:
        shutil.copyfile(demo / r["path"], out / r["path"])
    shutil.copyfile(demo / manifest["tokenizer"], out / manifest["tokenizer"])
    manifest["splits"]["train"] = {
        "tokens": total,
        "documents": sum(r["documents"] for r in records),
        "sentences": sum(r["sentences"] for r in records),
        "shards": records,
    }
    manifest["fingerprint"] = f"synthetic-{total}-{seed}"
    atomic_write_json(out / MANIFEST, manifest)
    return {"tokens": total, "shards": len(records), "sentences": manifest["splits"]["train"]["sentences"]}


def measure(data: Path, batches: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(data), str(batches)], env=env, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="data/demo", help="prepared demo data (the documents to repeat)")
    ap.add_argument("--sizes", default="50e6,200e6", help="training tokens of the synthetic corpora")
    ap.add_argument("--work", default="/tmp/bertpld-scale", help="where the corpora are written")
    ap.add_argument("--batches", type=int, default=300, help="batches read to measure batches/s")
    ap.add_argument("--keep", action="store_true", help="keep the corpora")
    ap.add_argument("--out", default="", help="write the numbers as JSON here")
    args = ap.parse_args()
    demo = Path(args.demo)
    if not (demo / "manifest.json").is_file():
        sys.exit(f"{demo}: no prepared data; run `bertpld prepare --out {demo} --vocab-size 4096` first")
    sizes = [float(s) for s in args.sizes.split(",")]
    work = Path(args.work)
    results = []
    for size in sizes:
        data = work / f"corpus-{size:.0e}"
        shutil.rmtree(data, ignore_errors=True)
        t = time.perf_counter()
        info = build_corpus(demo, data, size)
        info["build_s"] = time.perf_counter() - t
        cold = measure(data, args.batches)
        warm = measure(data, args.batches)
        results.append({**info, "cold": cold, "warm": warm})
        print(
            f"{info['tokens'] / 1e6:,.0f}M tokens ({info['shards']} shards, {info['sentences'] / 1e6:.1f}M sentences): "
            f"start-up {cold['startup_s']:.2f} s cold (hashing), {warm['startup_s']:.2f} s warm; "
            f"anonymous RSS {warm['anon_rss_mb']:.0f} MB, peak RSS {warm['peak_rss_mb']:.0f} MB; "
            f"{warm['batches_per_s']:,.0f} batches/s of 32 x 128",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    projection = {}
    if len(results) >= 2:
        a, b = results[0], results[-1]
        for key in ("startup_s", "anon_rss_mb", "peak_rss_mb"):
            for kind in ("cold", "warm"):
                slope = (b[kind][key] - a[kind][key]) / (b["tokens"] - a["tokens"])
                projection[f"{kind}_{key}"] = b[kind][key] + slope * (FULL_CORPUS_TOKENS - b["tokens"])
        print(
            "PROJECTION to 4B tokens (Wikipedia + BookCorpus), a straight line through the two sizes, per rank: "
            f"start-up {projection['warm_startup_s']:.1f} s warm ({projection['cold_startup_s']:.0f} s for the very "
            f"first reader, which hashes every shard once), anonymous RSS {projection['warm_anon_rss_mb']:.0f} MB, "
            f"peak RSS {projection['warm_peak_rss_mb']:.0f} MB (the shard pages a rank has touched included)"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"sizes": results, "projection_4b": projection}, indent=2))


if __name__ == "__main__":
    main()
