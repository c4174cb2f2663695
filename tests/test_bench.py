"""The step benchmark runs on CPU (its GPU numbers go in the README; here it must not rot)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


TINY_TOML = """
[model]
preset = "tiny"
max_position_embeddings = 32
[data]
objective = "mlm"
max_seq_len = 32
[train]
global_batch_size = 4
max_steps = 3
eval_every = 0
eval_sequences = 8
warmup = 1
[impl]
micro_batch_size = 4
"""


def test_sweep_lr_smoke(tmp_path: Path, monkeypatch) -> None:
    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    args = [sys.executable, str(ROOT / "scripts" / "sweep_lr.py"), "--data", str(data)]
    args += ["--config", str(tmp_path / "tiny.toml"), "--arms", "post,pld", "--lrs", "1e-3,1e-2"]
    args += ["--out", str(tmp_path / "sweep"), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [(r["arm"], r["lr"]) for r in rows] == [
        ("post", 1e-3),
        ("post", 1e-2),
        ("pld", 1e-3),
        ("pld", 1e-2),
    ]
    unigram = json.loads((data / "manifest.json").read_text())["val_unigram_ce"]
    arm_settings = {"post": ("post", False), "pld": ("pre", True)}  # (model.norm, pld.enabled)
    runs = {}
    for r in rows:
        run = tmp_path / "sweep" / f"{r['arm']}-lr{r['lr']:g}-s1"
        runs[run] = (run / "summary.json").stat().st_mtime_ns
        summary = json.loads((run / "summary.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        # the run of the arm and lr of its row, on one thread
        assert (cfg["model"]["norm"], cfg["pld"]["enabled"]) == arm_settings[r["arm"]]
        assert (cfg["train"]["lr"], cfg["train"]["seed"], cfg["impl"]["threads"]) == (r["lr"], 1, 1)
        loss = summary["final_val_mlm_loss"]
        assert r["steps"] == [3] and r["final_val_mlm_loss"] == [loss] and r["mean"] == loss
        assert r["below_unigram"] == pytest.approx(unigram - loss)
        # stuck within 0.2 nats of the data's unigram line
        assert r["verdicts"] == ["stuck" if unigram - loss < 0.2 else "ok"]
    assert "| post | 0.001 |" in (tmp_path / "sweep" / "sweep.md").read_text()
    # a rerun reuses the finished runs: the same table, not one summary written again
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert (
        again.returncode == 0 and json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"] == rows
    )
    assert {run: (run / "summary.json").stat().st_mtime_ns for run in runs} == runs
    # a run stopped by a signal wrote a summary too: a rerun resumes it instead of reusing it
    stopped = next(iter(runs))
    summary = json.loads((stopped / "summary.json").read_text())
    (stopped / "summary.json").write_text(json.dumps({**summary, "stop_reason": "signal SIGTERM"}))
    third = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    resumed = json.loads((stopped / "summary.json").read_text())
    assert resumed["stop_reason"] == summary["stop_reason"] and resumed["steps"] == summary["steps"]

    # verdicts, each arm's best lr and the grid-edge flag, on made-up results (unigram line 7.0)
    spec = importlib.util.spec_from_file_location("sweep_lr", ROOT / "scripts" / "sweep_lr.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    nan = float("nan")
    losses = {
        "post": {1e-3: 6.79, 2e-3: 6.0, 4e-3: None},  # None: the run failed
        "pld": {1e-3: 6.81, 2e-3: 6.9, 4e-3: nan},
        "pre": {1e-3: 6.95, 2e-3: 6.4, 4e-3: 6.2},
    }

    def fake_train(out, data, config, arm, lr, seed, extra) -> dict:
        loss = losses[arm][lr]
        if loss is None:
            return {"error": "exit 1"}
        return {"final_val_mlm_loss": loss, "unigram": 7.0, "steps": 3, "wall_s": 1.0}

    monkeypatch.setattr(sweep, "train", fake_train)
    argv = ["sweep_lr.py", "--data", str(data), "--arms", "post,pld,pre", "--lrs", "1e-3,2e-3,4e-3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "fake")])
    sweep.main()
    table = json.loads((tmp_path / "fake" / "sweep.json").read_text())["rows"]
    got = {(r["arm"], r["lr"]): (r["verdicts"][0], r["best"], r["at_grid_edge"]) for r in table}
    assert got == {
        ("post", 1e-3): ("ok", False, False),  # 0.21 nats below the line
        ("post", 2e-3): ("ok", True, False),
        ("post", 4e-3): ("failed", False, False),
        ("pld", 1e-3): ("stuck", False, False),  # 0.19 nats below it
        ("pld", 2e-3): ("stuck", False, False),  # an arm without a run that learned: no best lr
        ("pld", 4e-3): ("diverged", False, False),
        ("pre", 1e-3): ("stuck", False, False),
        ("pre", 2e-3): ("ok", False, False),
        ("pre", 4e-3): ("ok", True, True),  # the best at the grid's edge: the optimum may lie beyond
    }
    assert {(r["arm"], r["lr"]): r["below_unigram"] for r in table if r["arm"] == "pre"} == pytest.approx(
        {("pre", 1e-3): 0.05, ("pre", 2e-3): 0.6, ("pre", 4e-3): 0.8}
    )


def test_bench_train_precision_smoke(tmp_path: Path) -> None:
    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    args = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--data", str(data)]
    args += ["--config", str(tmp_path / "tiny.toml"), "--steps", "2", "--repeats", "1", "--skip-ddp"]
    args += ["--skip-pld", "--precision", "--out", str(tmp_path / "b.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["precision_speedup"] > 0 and len(result["fp32_tokens_per_s"]) == 1
    assert result["precision_speedup"] == pytest.approx(
        result["auto_tokens_per_s"][0] / result["fp32_tokens_per_s"][0]
    )
    assert "auto / fp32 throughput" in done.stdout
    # each arm ran in its precision, as its run recorded it: auto is what it resolves to on this
    # machine (bf16 where the CPU has native bf16 matmuls, or on a GPU), not fp32 against fp32
    from bertpld.device import resolve_device, resolve_precision

    auto = resolve_precision("auto", resolve_device("auto")).name
    assert result["auto_precision"] == [auto] and result["fp32_precision"] == ["fp32"]
    assert f"impl.precision=auto (ran in {auto}): tokens/s" in done.stdout
    assert ("compares fp32 with itself" in done.stdout) == (auto == "fp32")


def test_bench_data_workers_smoke_and_projection(tmp_path: Path, monkeypatch, capsys) -> None:
    """bench_data --workers on a few documents of the real-corpus layout: byte-identical outputs and
    a projection that follows from the measured CPU per token."""
    out = tmp_path / "bench.json"
    args = [sys.executable, str(ROOT / "scripts" / "bench_data.py"), "--workers", "1,2", "--repeat", "1"]
    args += ["--rss-scale", "1", "--max-documents", "30", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["corpus"] == "files" and res["outputs_byte_identical"] is True
    w, m = res["worker_cpu_us_per_token"], res["main_cpu_us_per_token"]
    assert w > 0 and m > 0
    for cores in (8, 32, 64):
        expected = max(4e9 * w * 1e-6 / (cores - 1), 4e9 * m * 1e-6) + res["tokenizer_training_s"]
        assert res[f"projected_4b_minutes_{cores}_cores"] * 60 == pytest.approx(expected)
        assert (
            f"PROJECTION, not measured: prepare of Wikipedia + BookCorpus (4B tokens) on {cores} cores"
            in done.stdout
        )
    assert "outputs byte-identical" in done.stdout

    # the comparison is of the files themselves: prepares whose shards differ in one byte, with
    # manifests alike, are reported, and the script exits 1 once its numbers are written
    import bertpld.data.sources

    spec = importlib.util.spec_from_file_location("bench_data", ROOT / "scripts" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # (the script sets them when imported)
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    spec.loader.exec_module(bench)
    odd = {"given-w2"}  # the prepares (out directory names) that write another byte

    def fake_prepare(fields: dict, out: Path) -> dict:
        manifest = {"splits": {"train": {"tokens": 900}, "val": {"tokens": 100}}, "timing_s": {"s": out.name}}
        (out / "train").mkdir(parents=True)
        (out / "manifest.json").write_text(json.dumps(manifest))
        (out / "tokenizer.json").write_text("{}")
        (out / "train" / "shard-00000.npz").write_bytes(b"shard" + (b"!" if out.name in odd else b"."))
        (out / ".verified.json").write_text(str(out))  # bookkeeping, not an output: not compared
        times = {"seconds": 1.0, "cpu_main_s": 1.0, "cpu_workers_s": 1.0}
        return {"manifest": manifest, "rss_main_mb": 1.0, "rss_worker_mb": 1.0, **times}

    monkeypatch.setattr(bench, "_one_run", fake_prepare)
    monkeypatch.setattr(bench, "_articles_parquet", lambda work: "articles.parquet")
    monkeypatch.setattr(bertpld.data.sources, "_demo_books", lambda: [])
    out = tmp_path / "fake.json"
    monkeypatch.setattr(
        sys, "argv", ["bench_data.py", "--workers", "1,2", "--rss-scale", "1", "--out", str(out)]
    )
    with pytest.raises(
        SystemExit, match=r"^error: prepare's outputs differ between --workers 1,2 \(given\)$"
    ):
        bench.main()
    res = json.loads(out.read_text())
    assert res["outputs_byte_identical"] is False and res["outputs_differ"] == ["given"]
    assert "OUTPUTS DIFFER" in capsys.readouterr().out
    odd.clear()  # the same bytes everywhere
    bench.main()
    assert json.loads(out.read_text())["outputs_byte_identical"] is True
    assert "outputs byte-identical" in capsys.readouterr().out


def test_bench_train_arms_and_compare_with_smoke(tmp_path: Path) -> None:
    """Post-LN, Pre-LN and PLD against another checkout (here: this one): per-arm tokens/s, time per
    executed FLOP (fastest run of each arm) and their ratios come from the runs' summaries."""
    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    args = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--data", str(data)]
    args += ["--config", str(tmp_path / "tiny.toml"), "--steps", "8", "--repeats", "1", "--skip-ddp"]
    args += ["--arms", "post,pre,pld", "--compare-with", str(ROOT), "--out", str(tmp_path / "b.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "b.json").read_text())
    this, other = res["runs"]["this"], res["runs"]["other"]
    assert this["pld"]["flops"] < this["pre"]["flops"] and this["flops_ratio"] < 1
    for per in (this, other):
        ratio = per["pld"]["best_ps_per_flop"] / per["pre"]["best_ps_per_flop"]
        assert per["time_per_flop_ratio"] == pytest.approx(ratio)
    best = {a: max(this[a]["tokens_per_s"]) / max(other[a]["tokens_per_s"]) for a in ("post", "pre", "pld")}
    assert res["speedup_vs_other"] == pytest.approx(best)
    step = {a: this[a]["step_tokens_per_s"] / other[a]["step_tokens_per_s"] for a in ("post", "pre", "pld")}
    assert res["step_speedup_vs_other"] == pytest.approx(step) and all(v > 0 for v in step.values())
    assert "time per executed FLOP" in done.stdout


def test_bench_train_refuses_a_compare_with_that_would_import_another_bertpld(tmp_path: Path) -> None:
    """--compare-with DIR runs DIR's bertpld; a directory without one would import whatever else is
    on the path (it once imported this checkout for both sides): an error before any run."""
    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    args = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--data", str(data), "--skip-ddp"]
    args += ["--steps", "8", "--compare-with", str(tmp_path)]
    done = subprocess.run(
        args, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode != 0 and f"not {tmp_path}'s" in done.stderr
    assert "imports the bertpld at" in done.stderr and not list(tmp_path.glob("*/summary.json"))


def test_profile_step_smoke(tmp_path: Path) -> None:
    """The step profile charges every moment of a step to one phase: the phases add up to the step,
    and the encoder's hooks split backward into heads, blocks and embeddings."""
    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    tiny = ["model.num_layers=4", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64"]
    tiny += ["model.max_position_embeddings=32", "data.max_seq_len=32", "train.global_batch_size=4"]
    tiny += ["impl.micro_batch_size=2", "impl.precision=fp32"]
    args = [sys.executable, str(ROOT / "scripts" / "profile_step.py"), "--shape", "demo", "--data", str(data)]
    args += ["--steps", "4", "--warmup", "1", "--rounds", "2", "--json", str(tmp_path / "p.json")]
    args += [a for s in tiny for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "p.json").read_text())
    for rounds in res["rounds"].values():
        assert len(rounds) == 2
        for r in rounds:
            assert sum(r["phases_ms"].values()) == pytest.approx(r["step_ms"], rel=1e-9)
    for arm in res["arms"].values():
        for phase in ("data", "forward.blocks", "forward.heads", "backward", "backward.blocks", "optimizer"):
            assert arm["phases_ms"][phase] > 0, phase
        assert arm["phases_ms"]["backward.embeddings"] > 0
    assert res["arms"]["pre"]["blocks_kept"] == 4 and res["arms"]["pld"]["blocks_kept"] < 4
    assert res["pld_over_pre_flops"] < 1 and "| forward.blocks |" in done.stdout


def test_ladder_budget_gives_every_width_the_demo_step_count(tmp_path: Path) -> None:
    """A rung's FLOPs budget is the config's scaled by the FLOPs of its step over the config's own
    step: at the config's depth and width it is the config's budget, and a narrower model (--set)
    gets a smaller one, so that it trains about as many steps, not more."""
    import argparse

    sys.path.insert(0, str(ROOT / "scripts"))
    import ladder

    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    (tmp_path / "tiny.toml").write_text(TINY_TOML.replace("max_steps = 3", "max_flops = 1e12"))

    def budget(depth: int, *sets: str, scale: float = 1.0) -> float:
        cfg = str(tmp_path / "tiny.toml")
        return ladder.budget(
            argparse.Namespace(config=cfg, data=str(data), set=list(sets), budget_scale=scale), depth
        )

    assert budget(2) == pytest.approx(1e12)  # the tiny config: 2 x 64
    narrow = ("model.hidden_size=32", "model.intermediate_size=64")
    assert budget(2, *narrow) < 0.5e12  # about a third of the FLOPs per step
    assert budget(4, *narrow) == pytest.approx(2 * budget(2, *narrow), rel=0.3)  # the blocks dominate
    assert budget(4, *narrow) > budget(2, *narrow)
    assert budget(4, *narrow, scale=2.0) == pytest.approx(2 * budget(4, *narrow))  # --budget-scale


def test_ladder_flags_an_lr_at_the_edge_of_its_grid() -> None:
    """A ladder row's lr comes from its runs' names; it is flagged when it is the smallest or the
    largest lr its arm swept (the optimum not bracketed), and the paper's baseline is not tuned."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import ladder

    sweeps = {"12": [{"arm": a, "lr": lr} for a in ("post", "pld") for lr in (2e-3, 3e-3, 4e-3)]}
    sweeps["12"].append({"arm": "pld", "lr": 6e-3})

    def row(run: str, baseline: str = "post", arm: str = "PLD") -> dict:
        return ladder.tuned_lr(
            {"runs": [f"/x/depth-12/sweep/{run}"], "depth": 12, "baseline": baseline, "arm": arm}, sweeps
        )

    assert row("post-lr0.003-s1") == {"lr": 3e-3, "lr_at_grid_edge": False}
    assert row("pld-lr0.004-s2") == {"lr": 4e-3, "lr_at_grid_edge": False}  # 6e-3 lies beyond it
    assert row("pld-lr0.006-s3")["lr_at_grid_edge"] and row("post-lr0.002-s1")["lr_at_grid_edge"]
    paper = row("post-lr0.0003-s1", "paper", "Post-LN at PLD's lr / 10 (baseline)")
    assert paper == {"lr": 3e-4, "lr_at_grid_edge": None}
    empty = dict.fromkeys(["final_val_mlm_loss", "below_unigram", "speedup_flops", "speedup_wall_s"])
    flagged = {**empty, "depth": 12, "baseline": "post", "arm": "PLD", "reached_target": "0 of 1"}
    flagged.update(loss_vs_baseline=None, lr=6e-3, lr_at_grid_edge=True)
    assert "| PLD | 0.006 (grid edge: not bracketed) |" in ladder.render([flagged])


@pytest.mark.slow  # ~50 s on 2 cores: 11 tiny runs and 2 reports, twice
def test_ladder_smoke(tmp_path: Path) -> None:
    """scripts/ladder.py on one tiny depth: sweep (2 lrs, 3 arms), the second seed at each arm's best
    lr, the paper-style Post-LN at PLD's best lr / 10, a report per baseline, the ladder table;
    a rerun trains nothing again."""
    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    args = [sys.executable, str(ROOT / "scripts" / "ladder.py"), "--data", str(data), "--depths", "2"]
    args += ["--config", str(tmp_path / "tiny.toml"), "--lrs", "1e-3,1e-2", "--extend", "0", "--seeds", "1,2"]
    args += ["--paper-depth", "2", "--out", str(tmp_path / "ladder"), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    rows = table["rows"]
    assert {r["baseline"] for r in rows} == {"post", "paper"}
    tuned = [r for r in rows if r["baseline"] == "post"]
    assert len(tuned) == 3 and tuned[0]["arm"] == "Post-LN baseline (baseline)"
    assert all(len(r["runs"]) == 2 for r in rows)  # two seeds per arm
    sweep = tmp_path / "ladder" / "depth-2" / "sweep"
    cfgs = [json.loads(p.read_text()) for p in sweep.glob("*/config.json")]
    assert {c["model"]["num_layers"] for c in cfgs} == {2}
    pld_best = [c["train"]["lr"] for c in cfgs if c["pld"]["enabled"] and c["train"]["seed"] == 2]
    paper = [
        c
        for c in cfgs
        if c["model"]["norm"] == "post" and c["train"]["lr"] == pytest.approx(pld_best[0] / 10)
    ]
    assert len(paper) == 2  # the paper's pairing: Post-LN at PLD's lr / 10, both seeds
    assert "| 2 x 64 | paper |" in (tmp_path / "ladder" / "ladder.md").read_text()  # blocks x hidden
    assert all(r["hidden"] == 64 for r in rows)
    # a grid of two lrs brackets nothing: every tuned arm's lr is flagged, the paper's is not tuned
    assert all(r["lr_at_grid_edge"] for r in tuned) and "(grid edge: not bracketed)" in done.stdout
    assert [r["lr_at_grid_edge"] for r in rows if r["arm"].startswith("Post-LN at PLD")] == [None]
    # the grid (3 arms x 2 lrs), seed 2 of each arm, 2 paper runs (one may be a grid run: 1e-2 / 10)
    n_runs = len(list(sweep.glob("*/summary.json")))
    assert table["compute"]["2"]["runs"] == n_runs and n_runs in (10, 11)
    walls = sum(json.loads(p.read_text())["wall_s"] for p in sweep.glob("*/summary.json"))
    assert table["compute"]["2"]["run_hours"] == pytest.approx(walls / 3600, abs=1e-3)
    assert (tmp_path / "ladder" / "ladder.png").stat().st_size > 10_000
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/summary.json")}
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    ledger = json.loads((tmp_path / "ladder" / "ladder-time.json").read_text())
    assert len(ledger) == 2 and ledger[0]["seconds"] > ledger[1]["seconds"] >= 0  # the rerun trains nothing
    # --merge: one table from several ladder.json files, running nothing
    first = tmp_path / "ladder" / "ladder.json"
    merged = subprocess.run(
        [*args[:2], "--merge", str(first), str(first), "--out", str(tmp_path / "merged")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert merged.returncode == 0, merged.stderr
    both = json.loads((tmp_path / "merged" / "ladder.json").read_text())
    assert both["rows"] == 2 * json.loads(first.read_text())["rows"]
