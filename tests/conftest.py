"""Shared test helpers: a small prepared data directory made from Python's own docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import bertpld.data.prepare as prep
from bertpld.config import PrepareConfig, load_config


def make_prepared_data(root: Path, **prepare) -> Path:
    """`bertpld prepare` on pydoc topics (a jsonl 'text' source) into root/data; returns the dir."""
    corpus = root / "topics.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in topics.values() if len(t) > 400))
    section = {"sources": ["text"], "text_files": [str(corpus)], **prepare}
    prep.prepare(load_config(PrepareConfig, None, {"prepare": section}), root / "data", progress=False)
    return root / "data"


def torchrun_two(args: list[str], timeout: float = 300, restarts: int = 0) -> subprocess.CompletedProcess:
    """Run `args` (a script and its arguments) as 2 gloo ranks under torchrun, 1 thread each;
    torchrun restarts the whole job up to `restarts` times when a rank dies."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--max-restarts", str(restarts), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
