"""The step benchmark runs on CPU (its GPU numbers go in the README; here it must not rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gpu_smoke_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--preset", "tiny", "--device", "cpu"]
    args += ["--precision", "fp32", "--micro-batch", "4", "--seq", "32", "--preds", "4", "--vocab", "512"]
    args += ["--steps", "2", "--warmup", "1", "--modes", "pre,pld,heads", "--theta-bar", "0.2"]
    args += ["--out", str(out), "--profile", str(tmp_path / "profiles")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert results["pre"]["mean_blocks"] == 2 and results["heads"]["mean_blocks"] == 0
    assert results["pld"]["mean_blocks"] < 2 and all(r["tokens_per_s"] > 0 for r in results.values())
    assert "heads / pre step-time share" in done.stdout
    assert "aten::" in (tmp_path / "profiles" / "pre-eager.txt").read_text()


def test_bench_model_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench_model.json"
    args = [sys.executable, str(ROOT / "scripts" / "bench_model.py"), "--layers", "4", "--hidden", "64"]
    args += ["--batch", "4", "--seq", "32", "--preds", "4", "--vocab-size", "500", "--reps", "1"]
    args += ["--warmup", "0", "--presets", "tiny", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert 0 < result["unpad"]["real_token_fraction"] < 1 and result["unpad"]["flops_ratio"] < 1
    assert result["pld"]["flops_ratio"] < 1 and result["presets"][0]["preset"] == "tiny"
