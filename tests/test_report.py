"""`bertpld report` on hand-written run directories: every number checked against hand-computed values."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertpld.cli import app
from bertpld.config import PretrainConfig, config_to_dict
from bertpld.errors import BertpldError
from bertpld.report import glue_scores, load_run, time_to_target, write_report

DATA = {
    "path": "/nonexistent/data/demo",
    "fingerprint": "f" * 64,
    "vocab_size": 1000,
    "tokenizer_sha256": "t" * 64,
}
ENV = {"device": "cpu", "device_name": "Test CPU", "gpu_count": 0, "world_size": 1, "torch": "2.13.0"}


def _config(norm: str, pld: bool, lr: float = 1e-4) -> dict:
    cfg = config_to_dict(PretrainConfig())
    cfg["model"].update(preset="tiny", num_layers=4, norm=norm)
    cfg["pld"]["enabled"] = pld
    cfg["train"]["lr"] = lr
    return cfg


def _rows(flops: list[float], wall: list[float], loss: list[float], val: dict[int, float]) -> list[dict]:
    """Four logged steps (10, 20, 30, 40) of 10 samples x 128 tokens per step; val at the given steps."""
    rows = []
    for i, (f, w, train_loss) in enumerate(zip(flops, wall, loss)):
        step = 10 * (i + 1)
        row = {
            "step": step,
            "samples": 10 * step,
            "tokens": 1280 * step,
            "loss": train_loss,
            "lr": 1e-4,
            "theta": 1.0 - 0.1 * i,
            "blocks_kept": 4 - i * 0.3,
            "flops": f,
            "wall_s": w,
            "tokens_per_s": 1280 * step / w,
        }
        if step in val:
            row["val_loss"] = val[step]
        rows.append(row)
    return rows


def _seed_results(task: str, names: list[str], per_seed: list[dict[str, float]]) -> dict:
    return {
        "task": task,
        "config": {},
        "metric_names": names,
        "main_metric": names[0],
        "seeds": [
            {"seed": 42 + i, "metrics": m, "wall_s": 5.0, "flops": 1e9} for i, m in enumerate(per_seed)
        ],
        "median": {},
        "wall_s": 5.0 * len(per_seed),
        "flops": 1e9 * len(per_seed),
    }


def make_run(
    root: Path,
    name: str,
    cfg: dict,
    rows: list[dict] | None,
    summary: bool = True,
    data: dict | None = None,
    finetune: dict[str, dict] | None = None,
    tail: str = "",
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "env.json").write_text(json.dumps(ENV))
    (d / "data.json").write_text(json.dumps(data or DATA))
    if rows is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    if summary and rows:
        last = rows[-1]
        val = [r["val_loss"] for r in rows if "val_loss" in r]
        s = {
            "steps": last["step"],
            "samples": last["samples"],
            "tokens": last["tokens"],
            "flops": last["flops"],
            "wall_s": last["wall_s"],
            "final_train_loss": last["loss"],
            "final_val_loss": val[-1],
            "stop_reason": "max_steps",
        }
        (d / "summary.json").write_text(json.dumps(s))
    for task, res in (finetune or {}).items():
        (d / "finetune" / task).mkdir(parents=True)
        (d / "finetune" / task / "results.json").write_text(json.dumps(res))
    return d


@pytest.fixture
def three_runs(tmp_path: Path) -> dict[str, Path]:
    """Post-LN baseline, Pre-LN without PLD and PLD, numbers chosen so that results are easy by hand."""
    post = make_run(
        tmp_path,
        "post",
        _config("post", False),
        _rows([1e12, 2e12, 3e12, 4e12], [10, 20, 30, 40], [6.0, 5.0, 4.5, 4.0], {20: 5.0, 40: 4.0}),
        finetune={
            "rte": _seed_results("rte", ["acc"], [{"acc": 0.6}, {"acc": 0.7}, {"acc": 0.65}]),
            "mrpc": _seed_results(
                "mrpc", ["acc", "f1"], [{"f1": 0.80, "acc": 0.70}, {"f1": 0.90, "acc": 0.74}]
            ),
        },
    )
    pre = make_run(
        tmp_path,
        "pre",
        _config("pre", False, lr=1e-3),
        _rows([1e12, 2e12, 3e12, 4e12], [11, 22, 33, 44], [5.8, 4.8, 4.2, 3.7], {20: 4.6, 40: 3.6}),
    )
    pld = make_run(
        tmp_path,
        "pld",
        _config("pre", True, lr=1e-3),
        _rows([0.8e12, 1.6e12, 2.3e12, 3.0e12], [8, 16, 23, 30], [5.9, 4.9, 4.3, 3.8], {20: 4.5, 40: 3.5}),
        finetune={
            "rte": _seed_results("rte", ["acc"], [{"acc": a} for a in (0.7, 0.72, 0.74, 0.5)]),
            "mrpc": _seed_results("mrpc", ["f1", "acc"], [{"f1": 0.9, "acc": 0.8}]),
        },
    )
    return {"post": post, "pre": pre, "pld": pld}


def _by_name(rep: dict) -> dict[str, dict]:
    return {e["name"]: e for e in rep["runs"]}


def test_time_to_target_interpolates_between_evaluations() -> None:
    evals = [
        {"step": 20, "samples": 200, "tokens": 1, "flops": 2.0, "wall_s": 20.0, "val_loss": 4.6},
        {"step": 40, "samples": 400, "tokens": 1, "flops": 4.0, "wall_s": 44.0, "val_loss": 3.6},
    ]
    hit = time_to_target(evals, 4.0)
    # (4.6 - 4.0) / (4.6 - 3.6) = 0.6 of the way from step 20 to step 40
    assert hit["flops"] == pytest.approx(3.2)
    assert hit["wall_s"] == pytest.approx(20 + 0.6 * 24)
    assert hit["samples"] == pytest.approx(320)
    assert not hit["at_first_eval"]
    assert time_to_target(evals, 3.0) is None
    first = time_to_target(evals, 5.0)
    assert first["at_first_eval"] and first["flops"] == 2.0
    # the FIRST crossing counts, even if the loss goes back up afterwards
    bumpy = [{**evals[0], "val_loss": 5.0}, {**evals[1], "val_loss": 3.0}, {**evals[1], "val_loss": 4.5}]
    assert time_to_target(bumpy, 4.0)["flops"] == pytest.approx(2.0 + 0.5 * 2.0)


def test_glue_scores_median_and_task_score() -> None:
    g = glue_scores(_seed_results("mrpc", ["acc", "f1"], [{"f1": 0.8, "acc": 0.7}, {"f1": 0.9, "acc": 0.74}]))
    assert g["metrics"] == pytest.approx({"f1": 85.0, "acc": 72.0})
    assert list(g["metrics"]) == ["f1", "acc"]  # shown as in the paper: F1/Acc
    assert g["score"] == pytest.approx(78.5)
    assert g["seeds"] == 2
    g = glue_scores(_seed_results("rte", ["acc"], [{"acc": a} for a in (0.7, 0.72, 0.74, 0.5)]))
    assert g["metrics"]["acc"] == pytest.approx(71.0)  # median of an even count: mean of the middle two
    assert (g["main_min"], g["main_max"]) == pytest.approx((50.0, 74.0))
    mnli = glue_scores(_seed_results("mnli", ["acc_m", "acc_mm"], [{"acc_m": 0.84, "acc_mm": 0.83}]))
    assert mnli["score"] == pytest.approx(83.5)


def test_report_numbers(three_runs: dict[str, Path], tmp_path: Path) -> None:
    res = write_report([three_runs["pld"], three_runs["pre"], three_runs["post"]], tmp_path / "rep")
    rep = res.report
    assert rep["baseline"] == "post"
    assert [e["name"] for e in rep["runs"]] == ["post", "pld", "pre"]  # baseline first
    assert rep["target_val_loss"] == 4.0
    runs = _by_name(rep)
    assert {n: e["kind"] for n, e in runs.items()} == {"post": "post", "pre": "pre", "pld": "pld"}
    assert runs["pld"]["label"] == "PLD" and runs["pre"]["label"] == "Pre-LN (no PLD)"

    # ratios to the baseline
    assert runs["pld"]["ratios"] == pytest.approx(
        {"samples": 1.0, "tokens": 1.0, "flops": 0.75, "wall_s": 0.75}
    )
    assert runs["pre"]["ratios"]["wall_s"] == pytest.approx(1.1)
    assert runs["post"]["ratios"]["flops"] == 1.0
    assert runs["pld"]["final_train_loss"] == 3.8 and runs["pld"]["final_val_loss"] == 3.5

    # time-to-target: pld crosses 4.0 half-way between (1.6e12, 16 s, 4.5) and (3.0e12, 30 s, 3.5)
    t = runs["pld"]["time_to_target"]
    assert t["reached"] and t["flops"] == pytest.approx(2.3e12) and t["wall_s"] == pytest.approx(23.0)
    assert t["speedup_flops"] == pytest.approx(4e12 / 2.3e12)
    assert t["speedup_wall_s"] == pytest.approx(40 / 23)
    t = runs["pre"]["time_to_target"]
    assert t["flops"] == pytest.approx(3.2e12) and t["wall_s"] == pytest.approx(35.2)
    assert t["speedup_flops"] == pytest.approx(1.25)
    assert runs["post"]["time_to_target"]["speedup_flops"] == pytest.approx(1.0)

    # fine-tuning: pre has none, so the average runs over rte and mrpc
    assert rep["glue"]["average_over"] == ["rte", "mrpc"]
    assert runs["post"]["glue"]["rte"]["metrics"]["acc"] == pytest.approx(65.0)
    assert runs["post"]["glue_average"] == pytest.approx((65.0 + 78.5) / 2)
    assert runs["pld"]["glue_average"] == pytest.approx((71.0 + 85.0) / 2)
    assert runs["pre"]["glue_average"] is None

    # headline, including PLD against Pre-LN alone
    h = rep["headline"]
    assert h["pld / post"]["flops"] == pytest.approx(0.75)
    assert h["pld / pre"]["wall_s"] == pytest.approx(30 / 44)
    assert h["pld / pre"]["speedup_flops"] == pytest.approx(3.2 / 2.3)
    # the paper's averages by our rule, from its table in docs/METHOD.md section 5
    assert rep["paper"]["glue_average_by_our_rule"]["PLD"] == pytest.approx(82.125)
    assert rep["paper"]["glue_average_by_our_rule"]["BERT-base (their baseline)"] == pytest.approx(80.9625)

    # config differences: only norm, pld.enabled and lr
    fields = rep["config_differences"]["fields"]
    assert set(fields) == {"model.norm", "pld.enabled", "train.lr"}
    assert fields["train.lr"] == {"post": 1e-4, "pld": 1e-3, "pre": 1e-3}
    assert not [w for w in rep["warnings"] if "DIFFERENT" in w]


def _md_tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table of report.md as [header, *rows], each a list of its cells' text."""
    tables, current = [], None
    for line in md.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        if set(line) <= set("|-"):  # the separator under the header
            continue
        if current is None:
            current = []
            tables.append(current)
        current.append([c.strip() for c in line.strip()[1:-1].split(" | ")])
    return tables


def _html_tables(page: str) -> list[list[list[str]]]:
    """Every <table> of report.html as [header, *rows], each a list of its cells' unescaped text."""
    return [
        [
            [html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)
        ]
        for table in re.findall(r"<table>(.*?)</table>", page, re.S)
    ]


# The report of `three_runs`, cell by cell: the same tables in report.md and report.html.
# Our numbers are worked out by hand in test_report_numbers; the paper's column and table are the
# paper's (docs/METHOD.md section 5), its averages by our rule (80.9625 and 82.125).
REPORT_TABLES = {
    "headline": [
        ["", "paper: PLD / BERT-base", "pre / post", "pld / post", "pld / pre"],
        ["samples (ratio)", "1.000x (equal samples)", "1.000x", "1.000x", "1.000x"],
        ["FLOPs (ratio)", "0.750x (25% fewer)", "1.000x", "0.750x", "0.750x"],
        ["wall-clock (ratio)", "0.760x (38.45 h -> 29.22 h, 64x V100)", "1.100x", "0.750x", "0.682x"],
        [
            "speed-up to target",
            "2.5x to similar GLUE accuracy",
            "1.250x FLOPs, 1.136x wall",
            "1.739x FLOPs, 1.739x wall",
            "1.391x FLOPs, 1.530x wall",
        ],
        ["fine-tune average", "82.1 vs 81.0 (+1.2)", "–", "78.0 vs 71.8 (+6.2)", "–"],
        ["fine-tune difference", "–", "–", "+6.2 (one seed: noise unknown)", "–"],
        [
            "final validation loss (MLM + NSP) (difference)",
            "–",
            "-0.400 (one seed: noise unknown)",
            "-0.500 (one seed: noise unknown)",
            "-0.100 (one seed: noise unknown)",
        ],
    ],
    "arms": [
        [
            "arm",
            "kind",
            "seeds",
            "final validation loss (MLM + NSP)",
            "below unigram (nats)",
            "FLOPs",
            "wall-clock",
            "speed-up to target (FLOPs)",
            "fine-tune average",
            "loss vs baseline",
            "fine-tune vs baseline",
        ],
        [
            "post (baseline)",
            "Post-LN baseline",
            "1",
            "4.0000",
            "–",
            "4 TFLOP",
            "40.0 s",
            "1.000x",
            "71.8",
            "–",
            "–",
        ],
        [
            "pre",
            "Pre-LN (no PLD)",
            "1",
            "3.6000",
            "–",
            "4 TFLOP",
            "44.0 s",
            "1.250x",
            "–",
            "-0.400 (one seed: noise unknown)",
            "–",
        ],
        [
            "pld",
            "PLD",
            "1",
            "3.5000",
            "–",
            "3 TFLOP",
            "30.0 s",
            "1.739x",
            "78.0",
            "-0.500 (one seed: noise unknown)",
            "+6.2 (one seed: noise unknown)",
        ],
    ],
    "cost": [
        ["run", "kind", "status", "steps", "samples", "tokens", "FLOPs", "wall-clock", "tokens/s (median)"],
        [
            "post (baseline)",
            "Post-LN baseline",
            "complete",
            "40",
            "400 (1.000x)",
            "51,200 (1.000x)",
            "4 TFLOP (1.000x)",
            "40.0 s (1.000x)",
            "1,280",
        ],
        [
            "pre",
            "Pre-LN (no PLD)",
            "complete",
            "40",
            "400 (1.000x)",
            "51,200 (1.000x)",
            "4 TFLOP (1.000x)",
            "44.0 s (1.100x)",
            "1,164",
        ],
        [
            "pld",
            "PLD",
            "complete",
            "40",
            "400 (1.000x)",
            "51,200 (1.000x)",
            "3 TFLOP (0.750x)",
            "30.0 s (0.750x)",
            "1,635",
        ],
    ],
    "time to target": [
        [
            "run",
            "final train loss",
            "final val loss",
            "final val MLM loss",
            "below unigram",
            "evals",
            "FLOPs to target",
            "wall-clock to target",
            "speed-up (FLOPs)",
            "speed-up (wall)",
        ],
        ["post", "4.0000", "4.0000", "–", "–", "2", "4 TFLOP", "40.0 s", "1.000x", "1.000x"],
        ["pre", "3.7000", "3.6000", "–", "–", "2", "3.2 TFLOP", "35.2 s", "1.250x", "1.136x"],
        ["pld", "3.8000", "3.5000", "–", "–", "2", "2.3 TFLOP", "23.0 s", "1.739x", "1.739x"],
    ],
    "glue": [
        ["run", "RTE", "MRPC F1/Acc", "average"],
        ["post", "65.0", "85.0/72.0", "71.8"],
        ["pre", "–", "–", "–"],
        ["pld", "71.0", "90.0/80.0", "78.0"],
    ],
    "paper glue": [
        [
            "paper's runs",
            "RTE",
            "MRPC F1/Acc",
            "STS-B P/S",
            "CoLA MCC",
            "SST-2",
            "QNLI",
            "QQP F1/Acc",
            "MNLI m/mm",
            "average",
        ],
        [
            "BERT-base (their baseline)",
            "67.8",
            "88.0/86.0",
            "89.5/89.2",
            "52.5",
            "91.2",
            "87.1",
            "89.0/90.6",
            "82.5/83.4",
            "81.0",
        ],
        ["PLD", "69.3", "86.6/84.3", "90.0/89.6", "55.8", "91.6", "90.7", "89.6/91.2", "84.1/83.8", "82.1"],
    ],
}


def test_report_files(three_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    write_report(list(three_runs.values()), out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "loss_vs_flops.png",
        "loss_vs_samples.png",
        "loss_vs_wall.png",
        "pld_schedule.png",
        "throughput.png",
    ]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert 'src="loss' not in page  # self-contained: no links to files
    md = (out / "report.md").read_text()
    assert "![Loss against training samples](loss_vs_samples.png)" in md
    # every cell of the tables that carry the comparison, in place, in both formats
    md_tables, html_tables = _md_tables(md), _html_tables(page)
    assert len(md_tables) == len(html_tables)
    for name, table in REPORT_TABLES.items():
        assert table in md_tables, name
        assert table in html_tables, name
    rep = json.loads((out / "report.json").read_text())
    assert rep["runs"][0]["name"] == "post"
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries


def test_not_reached_and_incomplete(tmp_path: Path, three_runs: dict[str, Path]) -> None:
    slow = make_run(
        tmp_path,
        "slow",
        _config("pre", True),
        _rows([1e12, 2e12, 3e12, 4e12], [10, 20, 30, 40], [6, 5, 4.8, 4.6], {20: 4.5, 40: 4.2}),
        summary=False,
        tail='{"step": 50, "samples": 5',  # the run is still writing its next row
    )
    res = write_report([three_runs["post"], slow], tmp_path / "rep")
    e = _by_name(res.report)["slow"]
    assert e["time_to_target"] == {"reached": False}
    assert not e["complete"]
    assert e["samples"] == 400 and e["flops"] == 4e12  # from the last complete metrics row
    assert e["final_val_loss"] == 4.2
    ws = " ".join(res.report["warnings"])
    assert "slow: incomplete" in ws and "last line of metrics.jsonl is incomplete" in ws
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "not reached" in md and "INCOMPLETE" in md


def test_mismatched_data_warns(tmp_path: Path, three_runs: dict[str, Path], capsys) -> None:
    other = make_run(
        tmp_path,
        "other",
        _config("pre", True),
        _rows([1e12, 2e12, 3e12, 4e12], [10, 20, 30, 40], [6, 5, 4, 3], {40: 3.0}),
        data={**DATA, "fingerprint": "0" * 64, "tokenizer_sha256": "1" * 64},
    )
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(three_runs["post"]), str(other), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "DIFFERENT DATA" in r.output and "DIFFERENT TOKENIZER" in r.output
    assert "report.html" in r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "DIFFERENT DATA" in md and "NOT comparable" in md


def test_different_thread_counts_warn_about_wall_clock(tmp_path: Path, three_runs: dict[str, Path]) -> None:
    """Runs that all record the same thread count and precision: no warning; a difference in either:
    one warning that names it, and only it."""

    from bertpld.report import choose_baseline, compare

    def warnings(**per_run: dict[str, object]) -> list[str]:
        for name, run in three_runs.items():
            env = {**ENV, "torch_threads": 1, "precision": "fp32", **per_run.get(name, {})}
            (run / "env.json").write_text(json.dumps(env))
        runs = [load_run(p) for p in three_runs.values()]
        rep = compare(runs, choose_baseline(runs, None)[0])  # write_report's numbers, without plots
        return [w for w in rep["warnings"] if "wall-clock ratios mix" in w]

    assert warnings() == []  # the keys present, equal in every run
    assert warnings(pre={"torch_threads": 2}) == [
        "runs ran on different CPU thread counts (torch_threads differs): "
        "wall-clock ratios mix in the CPU thread counts"
    ]
    assert warnings(pld={"precision": "bf16"}) == [
        "runs ran on different precision (precision differs): wall-clock ratios mix in the precision"
    ]


def test_no_baseline_gives_partial_report(tmp_path: Path, three_runs: dict[str, Path]) -> None:
    res = write_report([three_runs["pre"], three_runs["pld"]], tmp_path / "rep")
    rep = res.report
    assert rep["baseline"] is None and rep["headline"] is None
    assert any("no baseline" in w for w in rep["warnings"])
    assert all(e["ratios"]["flops"] is None and e["time_to_target"] is None for e in rep["runs"])
    assert _by_name(rep)["pld"]["final_val_loss"] == 3.5
    assert (tmp_path / "rep" / "report.html").is_file()
    # an explicit baseline of another kind is used, and said to be unusual
    rep = write_report([three_runs["pld"]], tmp_path / "rep2", baseline=three_runs["pre"]).report
    assert rep["baseline"] == "pre"
    assert _by_name(rep)["pld"]["ratios"]["wall_s"] == pytest.approx(30 / 44)
    assert any("not Post-LN" in w for w in rep["warnings"])


def test_finetune_tasks_differ(tmp_path: Path, three_runs: dict[str, Path]) -> None:
    pre = three_runs["pre"]
    (pre / "finetune" / "rte").mkdir(parents=True)
    (pre / "finetune" / "rte" / "results.json").write_text(
        json.dumps(_seed_results("rte", ["acc"], [{"acc": 0.66}]))
    )
    rep = write_report(list(three_runs.values()), tmp_path / "rep").report
    assert rep["glue"]["average_over"] == ["rte"]
    assert _by_name(rep)["post"]["glue_average"] == pytest.approx(65.0)
    assert _by_name(rep)["pre"]["glue_average"] == pytest.approx(66.0)
    assert any("fine-tuned tasks differ" in w for w in rep["warnings"])


def test_resumed_run_keeps_latest_rows(tmp_path: Path) -> None:
    rows = _rows([1, 2, 3, 4], [1, 2, 3, 4], [6, 5, 4, 3], {20: 5.0})
    # logged 10, 20, 30; resumed from the step-10 checkpoint: 20, 30, 40 again
    again = [{**r, "loss": r["loss"] - 0.5} for r in rows[1:]]
    again[0]["val_loss"] = 4.8
    eval_row = {"step": 40, "val_loss": 2.9}  # an evaluation logged as its own row
    d = make_run(tmp_path, "resumed", _config("post", False), rows[:3] + again + [eval_row], summary=False)
    run = load_run(d)
    assert [r["step"] for r in run.rows] == [10, 20, 30, 40]
    assert [r["loss"] for r in run.rows] == [6, 4.5, 3.5, 2.5]
    assert run.rows[-1]["val_loss"] == 2.9 and run.rows[-1]["flops"] == 4
    assert run.rows[1]["val_loss"] == 4.8  # the interrupted attempt's evaluation at step 20 is replaced


def test_not_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertpldError, match=r"empty: not a run directory"):
        load_run(tmp_path / "empty")
    with pytest.raises(BertpldError, match="not a directory"):
        load_run(tmp_path / "missing")
    r = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, BertpldError)
    assert "\n" not in str(r.exception)
    assert not (tmp_path / "o").exists()


def test_missing_files_are_warned(tmp_path: Path, three_runs: dict[str, Path]) -> None:
    (three_runs["pld"] / "env.json").unlink()
    (three_runs["pld"] / "data.json").unlink()
    rep = write_report([three_runs["post"], three_runs["pld"]], tmp_path / "rep").report
    ws = rep["warnings"]
    assert "pld: env.json is missing" in ws and "pld: data.json is missing" in ws
    assert any("data identity unknown for pld" in w for w in ws)
    assert _by_name(rep)["pld"]["ratios"]["flops"] == pytest.approx(0.75)


def test_misshapen_files_are_warned_not_tracebacks(tmp_path: Path, three_runs: dict[str, Path]) -> None:
    results = next((three_runs["pld"] / "finetune").glob("*/results.json"))
    results.write_text(json.dumps({"task": "rte", "seeds": [1], "median": 5}))
    config = json.loads((three_runs["pre"] / "config.json").read_text())
    (three_runs["pre"] / "config.json").write_text(json.dumps({**config, "model": "x"}))
    rep = write_report(list(three_runs.values()), tmp_path / "rep").report
    shape = [w for w in rep["warnings"] if "does not have the shape bertpld writes" in w]
    assert len(shape) == 2, rep["warnings"]


# ESC (ANSI colour and cursor codes start with it) and Unicode's box-drawing block (rich's panels)
_NOT_PLAIN = re.compile("[\x1b\u2500-\u257f]")


@pytest.mark.parametrize("command", ["", "prepare", "pretrain", "finetune", "report", "export"])
def test_help_is_plain(command: str) -> None:
    # as in a colour terminal: a help renderer that colours or draws panels would do it here
    env = {"FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "100", "NO_COLOR": None}
    r = CliRunner().invoke(app, [*command.split(), "--help"], env=env, color=True)  # click keeps escapes
    assert r.exit_code == 0, r.output
    bad = sorted(set(_NOT_PLAIN.findall(r.output)))
    assert not bad, f"{command or 'bertpld'} --help has escapes or box drawing: {bad!r}"
    first = f"Usage: bertpld {command} [OPTIONS]" if command else "Usage: bertpld [OPTIONS] COMMAND [ARGS]..."
    assert r.output.startswith(first)
    if command == "report":
        assert "--baseline" in r.output and "Post-LN" in r.output


def test_wnli_is_left_out_of_the_average(tmp_path: Path, three_runs: dict[str, Path]) -> None:
    for name in ("post", "pld"):
        d = three_runs[name] / "finetune" / "wnli"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_seed_results("wnli", ["acc"], [{"acc": 0.1}])))
    rep = write_report(list(three_runs.values()), tmp_path / "rep").report
    assert rep["glue"]["tasks"] == ["rte", "mrpc", "wnli"]
    assert rep["glue"]["average_over"] == ["rte", "mrpc"]
    assert _by_name(rep)["post"]["glue_average"] == pytest.approx((65.0 + 78.5) / 2)
    assert not any("tasks differ" in w for w in rep["warnings"])


def test_speed_up_compares_crossing_with_crossing(tmp_path: Path) -> None:
    # The baseline's curve is not monotone: it first reaches its final val loss (3.0) at step 20.
    # PLD reaches it at step 20 too: a speed-up of 1.0, not baseline-total / PLD-crossing = 2.0.
    flops, wall = [1e12, 2e12, 3e12, 4e12], [10.0, 20.0, 30.0, 40.0]
    vals = {10: 5.0, 20: 3.0, 30: 3.2, 40: 3.0}
    post = make_run(tmp_path, "post", _config("post", False), _rows(flops, wall, [6, 5, 4, 3], vals))
    pld = make_run(tmp_path, "pld", _config("pre", True, 1e-3), _rows(flops, wall, [6, 5, 4, 3], vals))
    rep = _by_name(write_report([post, pld], tmp_path / "rep").report)
    for name in ("post", "pld"):
        ttt = rep[name]["time_to_target"]
        assert ttt["flops"] == pytest.approx(2e12)
        assert ttt["speedup_flops"] == pytest.approx(1.0) and ttt["speedup_wall_s"] == pytest.approx(1.0)


def _mlm_run(root: Path, name: str, norm: str, pld: bool, seed: int, val: dict[int, float], unigram=7.0):
    """A run that logged MLM and NSP losses apart, on data whose unigram line is `unigram`."""
    cfg = _config(norm, pld, lr=1e-3)
    cfg["train"]["seed"] = seed
    rows = _rows([1e12, 2e12, 3e12, 4e12], [10, 20, 30, 40], [6.0, 5.5, 5.0, 4.5], {})
    for r in rows:
        r.update(mlm_loss=r["loss"] - 0.6, nsp_loss=0.6)
        if r["step"] in val:
            r.update(val_mlm_loss=val[r["step"]], val_nsp_loss=0.69, val_loss=val[r["step"]] + 0.69)
    data = {**DATA, "val_unigram_ce": unigram} if unigram is not None else DATA
    return make_run(root, name, cfg, rows, data=data)


def test_seeds_form_arms_with_mean_spread_and_a_noise_verdict(tmp_path: Path) -> None:
    runs = [
        _mlm_run(tmp_path, "post-s1", "post", False, 1, {20: 5.0, 40: 4.1}),
        _mlm_run(tmp_path, "post-s2", "post", False, 2, {20: 5.0, 40: 3.9}),
        _mlm_run(tmp_path, "pld-s1", "pre", True, 1, {20: 4.5, 40: 3.95}),
        _mlm_run(tmp_path, "pld-s2", "pre", True, 2, {20: 4.5, 40: 4.05}),
        _mlm_run(tmp_path, "pre-s1", "pre", False, 1, {20: 4.5, 40: 3.0}),
        _mlm_run(tmp_path, "pre-s2", "pre", False, 2, {20: 4.5, 40: 3.1}),
    ]
    res = write_report(runs, tmp_path / "rep")
    rep = res.report
    assert rep["loss_metric"] == "validation MLM loss" and rep["baseline_seeds"] == 2
    assert rep["target_val_loss"] == pytest.approx(4.0)  # the baseline arm's mean final MLM loss
    arms = {a["name"]: a for a in rep["arms"]}
    assert set(arms) == {"post", "pld", "pre"} and arms["post"]["runs"] == ["post-s1", "post-s2"]
    assert arms["post"]["is_baseline"]
    st = arms["pld"]["stats"]["final_loss"]
    assert (st["mean"], st["min"], st["max"], st["n"]) == pytest.approx((4.0, 3.95, 4.05, 2))
    assert arms["pld"]["stats"]["beyond_unigram"]["mean"] == pytest.approx(3.0)
    # PLD - baseline = 0.0 inside a seed range of 0.2: within noise; Pre-LN's -0.95 is not
    d = arms["pld"]["vs_baseline"]["final_loss"]
    assert d["diff"] == pytest.approx(0.0) and d["spread"] == pytest.approx(0.2)
    assert d["verdict"] == "within noise"
    assert arms["pre"]["vs_baseline"]["final_loss"]["verdict"] == "beyond noise"
    assert rep["headline"]["pld / post"]["final_loss"]["verdict"] == "within noise"
    assert rep["headline"]["pre / post"]["final_loss"]["diff"] == pytest.approx(-0.95)
    # time-to-target of post-s2 (4.0 crossed 0.5 of the way from step 20 to 40) and the baseline's
    # own cost: post-s1 never reaches the mean, so its whole run (4e12) counts for it
    t = _by_name(rep)["post-s2"]["time_to_target"]
    assert t["flops"] == pytest.approx(2e12 + (5.0 - 4.0) / (5.0 - 3.9) * 2e12)
    assert t["speedup_flops"] == pytest.approx(((4e12 + t["flops"]) / 2) / t["flops"])
    assert _by_name(rep)["post-s1"]["time_to_target"] == {"reached": False}
    assert arms["pld"]["reached"] == 1 and rep["headline"]["pld / post"]["reached"] is False
    md = (tmp_path / "rep" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| pld |"))
    assert "4.0000 (3.9500 – 4.0500)" in row and "+0.000 (within noise, seed spread 0.200)" in row
    assert "Arms: mean and spread over seeds" in md
    assert "target reached by 1 of 2 seeds only: no speed-up for the arm" in md


def test_one_seed_arms_say_the_noise_is_unknown(three_runs: dict[str, Path], tmp_path: Path) -> None:
    rep = write_report(list(three_runs.values()), tmp_path / "rep").report
    assert rep["headline"]["pld / post"]["final_loss"]["verdict"] == "one seed: noise unknown"


def test_unigram_line_beyond_it_and_a_loud_warning_near_it(tmp_path: Path) -> None:
    from bertpld.report import compare

    post = _mlm_run(tmp_path, "post", "post", False, 1, {20: 6.95, 40: 6.9})
    pld = _mlm_run(tmp_path, "pld", "pre", True, 1, {20: 6.0, 40: 5.5})
    rep = write_report([post, pld], tmp_path / "rep").report
    assert rep["unigram"] == 7.0 and rep["unigram_margin"] == 0.2  # the README's "within 0.2 nats"
    runs = _by_name(rep)
    assert runs["pld"]["beyond_unigram"] == pytest.approx(1.5)
    assert runs["post"]["beyond_unigram"] == pytest.approx(0.1)
    near = [w for w in rep["warnings"] if w.startswith("NEAR THE UNIGRAM LINE")]
    assert len(near) == 1 and near[0].startswith(
        "NEAR THE UNIGRAM LINE: post ends at validation MLM loss 6.900"
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Unigram line: 7.000 nats" in md
    # run | final train loss | final val loss | final val MLM loss | below unigram
    assert "| pld | 4.5000 | 6.1900 | 5.5000 | 1.500 nats |" in md
    # the margin is 0.2 nats: 0.19 below the line is near it, 0.21 below is not
    inside = _mlm_run(tmp_path, "inside", "post", False, 1, {40: 6.81})
    outside = _mlm_run(tmp_path, "outside", "pre", True, 1, {40: 6.79})
    rep = compare([load_run(inside), load_run(outside)], None)  # write_report's numbers, no plots
    assert [w.split(" ends at ")[0] for w in rep["warnings"] if w.startswith("NEAR THE UNIGRAM LINE")] == [
        "NEAR THE UNIGRAM LINE: inside"
    ]


def test_unigram_line_of_data_prepared_before_it_existed(tmp_path: Path) -> None:
    from bertpld.data import unigram
    from tests.conftest import make_prepared_data

    data = make_prepared_data(tmp_path, vocab_size=300, val_fraction=0.1)
    manifest = json.loads((data / "manifest.json").read_text())
    expected = manifest.pop("val_unigram_ce")
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = _mlm_run(tmp_path, "post", "post", False, 1, {40: 4.0}, unigram=None)
    (run / "data.json").write_text(json.dumps({**DATA, "path": str(data)}))
    rep = write_report([run], tmp_path / "rep").report
    assert rep["unigram"] == pytest.approx(expected) and expected == pytest.approx(
        unigram.val_unigram_ce(data, manifest)
    )
    (run / "data.json").write_text(json.dumps({**DATA, "path": str(tmp_path / "gone")}))
    rep = write_report([run], tmp_path / "rep2").report
    assert rep["unigram"] is None and any("unigram line unknown" in w for w in rep["warnings"])


def test_runs_before_the_loss_split_are_compared_on_the_total(three_runs: dict[str, Path], tmp_path: Path):
    rep = write_report(list(three_runs.values()), tmp_path / "rep").report
    assert rep["loss_metric"] == "validation loss (MLM + NSP)" and not rep["loss_is_mlm"]
    assert any("predate(s) separate MLM and NSP losses" in w for w in rep["warnings"])
    # an MLM-only run from before the split: its val_loss is the MLM loss, no warning
    cfg = _config("post", False)
    cfg["data"]["objective"] = "mlm"
    run = make_run(tmp_path, "mlm", cfg, _rows([1, 2, 3, 4], [1, 2, 3, 4], [6, 5, 4, 3], {40: 4.5}))
    rep = write_report([run], tmp_path / "rep2").report
    assert rep["loss_is_mlm"] and _by_name(rep)["mlm"]["final_val_mlm_loss"] == 4.5


def test_noise_verdict_uses_the_seed_range_of_the_arms_that_have_seeds() -> None:
    from bertpld.report import difference, stat

    two = stat([5.0, 5.2])  # range 0.2
    three = stat([5.0, 5.1, 5.4])  # range 0.4
    one = stat([4.9])
    assert difference(one, stat([5.3])) == {
        "diff": pytest.approx(-0.4),
        "spread": None,
        "verdict": "one seed: noise unknown",
    }
    assert difference(one, two) == {
        "diff": pytest.approx(-0.2),
        "spread": pytest.approx(0.2),
        "verdict": "within noise",
    }
    assert difference(stat([4.8]), two)["verdict"] == "beyond noise"  # 0.3 > 0.2
    assert difference(two, one)["spread"] == pytest.approx(0.2)  # either side
    assert difference(stat([4.8]), three)["verdict"] == "within noise"  # the larger range: 0.4
    assert difference(two, three)["spread"] == pytest.approx(0.4)


def test_plots_do_not_import_the_report() -> None:
    # report.py imports plots.py; the other way round would be an import circle
    code = "import sys, bertpld.plots; print('bertpld.report' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
