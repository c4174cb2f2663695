"""Benchmark the data pipeline on the demo corpus.

1. prepare tokens/s vs raw `tokenizers` batch-encode tokens/s on the same documents (target >= 0.8):
   - "encode stage": prepare's encode + shard phase (documents already read for tokenizer training)
   - "end to end": a whole prepare with the tokenizer given (reading, cleaning, sentence splitting,
     encoding and writing all included)
2. reader + masking sequences/s at seq 128 per process (target >= 50,000).

Usage: python scripts/bench_data.py [--out bench.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
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


if __name__ == "__main__":
    main()
