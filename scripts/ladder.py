"""When does PLD pay? The depth ladder: Post-LN, Pre-LN and PLD at several depths, each arm at its
own best learning rate, several seeds, against a tuned baseline and (at 12 blocks) the paper's.

    python scripts/ladder.py --data data/demo --depths 6,12,24 --out runs/ladder
    python scripts/ladder.py --depths 6 --lrs 2e-3,3e-3,4e-3 --seeds 1,2,3 --jobs 2

Per depth L (the demo config with model.num_layers = L, hidden 128):
  budget   executed FLOPs: the demo's train.max_flops x (FLOPs of a step at L / at the demo's
           depth), so every depth trains for about the demo's number of steps (865 for Post-LN);
           the table flags a depth whose tuned baseline ends less than 1.0 nat below the unigram line
  sweep    scripts/sweep_lr.py over --lrs for every arm, one seed; an arm whose best lr lies at an
           edge of its grid gets the next lr beyond it (x or / --step), up to --extend times, so the
           optimum is bracketed
  seeds    every arm at its best lr with --seeds (the sweep's run is reused for its seed)
  paper    at 12 blocks, also Post-LN at one tenth of PLD's best lr, the paper's pairing
  report   `bertpld report` over each depth's seed runs (baseline: the tuned Post-LN arm)
Then the ladder table (ladder.md, ladder.json): per depth and arm the final validation MLM loss
(mean, range over seeds), how far below the unigram line, and PLD's time-to-target speed-up in
FLOPs and wall-clock against the tuned and the paper-style baselines, with the report's
within/beyond-noise verdicts. Every stage reuses finished runs: an interrupted ladder continues
where it stopped. Runs go --jobs at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from bertpld.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "scripts" / "sweep_lr.py"
ARMS = ("post", "pre", "pld")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--depths", default="6,12,24")
    ap.add_argument("--lrs", default="2e-3,3e-3,4e-3,6e-3", help="the first grid of every arm")
    ap.add_argument("--step", type=float, default=1.5, help="ratio of an lr added beyond a grid edge")
    ap.add_argument("--extend", type=int, default=2, help="at most this many lrs added per edge")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument(
        "--paper-depth", type=int, default=12, help="the depth that also gets the paper's baseline"
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--out", default="runs/ladder")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    args = ap.parse_args()
    t0 = time.time()
    try:
        depths = [int(x) for x in args.depths.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
        [float(x) for x in args.lrs.split(",")]
    except ValueError as e:
        ap.error(f"--depths/--seeds/--lrs: expected comma-separated numbers ({e})")
    if not (Path(args.data) / "manifest.json").is_file():
        ap.error(f"--data {args.data}: no prepared data; run `bertpld prepare --out {args.data}` first")
    out = Path(args.out)
    rows, sweeps = [], {}
    for depth in depths:
        depth_rows, sweeps[depth] = rung(args, depth, seeds, out / f"depth-{depth}")
        rows += depth_rows
    table = {
        "depths": depths,
        "seeds": seeds,
        "rows": rows,
        "sweeps": sweeps,  # per depth: every arm's lr grid, one row per (arm, lr), seed by seed
        "seconds_this_invocation": round(time.time() - t0),
    }
    out.mkdir(parents=True, exist_ok=True)
    md = render(rows)
    atomic_write_json(out / "ladder.json", table)
    atomic_write_text(out / "ladder.md", md + "\n")
    print(md)


def rung(args: argparse.Namespace, depth: int, seeds: list[int], out: Path) -> tuple[list[dict], list[dict]]:
    """Sweep, seeds, paper-style baseline and report of one depth; its ladder rows and its sweep
    table (the grid's rows, then the seed runs' rows)."""
    sets = [f"model.num_layers={depth}", f"train.max_flops={budget(args, depth):.6g}", *args.set]
    grid = {arm: sorted(float(x) for x in args.lrs.split(",")) for arm in ARMS}
    for _ in range(args.extend + 1):  # sweep; widen a grid whose best lies at its edge
        table = sweep(args, out / "sweep", sets, grid, [seeds[0]])
        wider = False
        for arm in ARMS:
            best = best_row(table, arm)
            room = len(grid[arm]) < len(args.lrs.split(",")) + 2 * args.extend
            if best is not None and best["lr"] in (min(grid[arm]), max(grid[arm])) and room:
                lr = best["lr"]
                grid[arm].append(lr * args.step if lr == max(grid[arm]) else lr / args.step)
                grid[arm].sort()
                wider = True
        if not wider:
            break
    best = {arm: best_row(table, arm) for arm in ARMS}
    recorded = list(table)
    runs: dict[str, list[Path]] = {}
    for arm in ARMS:
        if best[arm] is None:
            continue
        lr = best[arm]["lr"]
        recorded += sweep(args, out / "sweep", sets, {arm: [lr]}, seeds)
        runs[arm] = [out / "sweep" / f"{arm}-lr{lr:g}-s{s}" for s in seeds]
    if depth == args.paper_depth and best["pld"] is not None:
        lr = best["pld"]["lr"] / 10
        recorded += sweep(args, out / "sweep", sets, {"post": [lr]}, seeds)
        runs["paper"] = [out / "sweep" / f"post-lr{lr:g}-s{s}" for s in seeds]
    rows = []
    for baseline in ("post", "paper"):
        if baseline not in runs or "post" not in runs:
            continue
        order = [runs[baseline], *(runs[a] for a in ("post", "pre", "pld") if a in runs and a != baseline)]
        report_dir = out / f"report-vs-{baseline}"
        cmd = [
            sys.executable,
            "-m",
            "bertpld.cli",
            "report",
            *(str(p) for r in order for p in r),
            "--out",
            str(report_dir),
        ]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        rows += ladder_rows(depth, baseline, json.loads((report_dir / "report.json").read_text()))
    return rows, recorded


def budget(args: argparse.Namespace, depth: int) -> float:
    """The demo's FLOPs budget scaled by the cost of a step at `depth` over one at the demo's depth."""
    from bertpld.config import PretrainConfig, load_config, parse_set, resolve_config_path
    from bertpld.data.reader import PretrainReader, load_manifest
    from bertpld.train import expected_step_flops, resolve_vocab

    cfg = load_config(PretrainConfig, resolve_config_path(args.config), parse_set(args.set))
    cfg.data.path = args.data
    resolve_vocab(cfg, load_manifest(args.data))
    reader = PretrainReader(args.data, cfg.data, "train", cfg.impl.micro_batch_size, cfg.train.seed)
    tokens = reader.mean_tokens_per_sequence()
    reader.close()
    base = expected_step_flops(cfg, cfg.model.num_layers, tokens)
    cfg.model.num_layers = depth
    return cfg.train.max_flops * expected_step_flops(cfg, depth, tokens) / base


def sweep(args, out: Path, sets: list[str], grid: dict[str, list[float]], seeds: list[int]) -> list[dict]:
    """scripts/sweep_lr.py for these arms and lrs (finished runs are reused); its table."""
    table = []
    for arm, lrs in grid.items():
        cmd = [sys.executable, str(SWEEP), "--data", args.data, "--config", args.config, "--arms", arm]
        cmd += ["--lrs", ",".join(f"{lr:g}" for lr in lrs), "--seeds", ",".join(map(str, seeds))]
        cmd += ["--jobs", str(args.jobs), "--out", str(out), *(x for s in sets for x in ("--set", s))]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        table += json.loads((out / "sweep.json").read_text())["rows"]
    return table


def best_row(table: list[dict], arm: str) -> dict | None:
    """The arm's lowest mean final loss among its finished runs, runs that learned (not "stuck"
    within 0.2 nats of the unigram line) first; None when every run failed or diverged. The
    ladder table flags a best that did not learn (below_unigram)."""
    rows = [r for r in table if r["arm"] == arm and r["mean"] is not None]
    learned = [r for r in rows if "stuck" not in r["verdicts"]]
    return min(learned or rows, key=lambda r: r["mean"]) if rows else None


def ladder_rows(depth: int, baseline: str, report: dict) -> list[dict]:
    """One row per arm of a depth's report: loss over seeds, margin, speed-ups to the baseline's
    mean final loss, the verdict against the seed spread."""
    rows = []
    for arm in report["arms"]:
        st = arm["stats"]
        versus = (arm.get("vs_baseline") or {}).get("final_loss") or {}
        rows.append(
            {
                "depth": depth,
                "baseline": baseline,
                "arm": arm["label"] + (" (baseline)" if arm["is_baseline"] else ""),
                "runs": arm["runs"],
                "final_val_mlm_loss": st.get("final_loss"),
                "below_unigram": st.get("beyond_unigram"),
                "reached_target": f"{arm.get('reached', 0)} of {len(arm['runs'])}",
                "speedup_flops": (st.get("speedup_flops") or {}).get("mean"),
                "speedup_wall_s": (st.get("speedup_wall_s") or {}).get("mean"),
                "loss_vs_baseline": versus.get("diff"),
                "verdict": versus.get("verdict"),
                "wall_s": (st.get("wall_s") or {}).get("mean"),
            }
        )
    return rows


def render(rows: list[dict]) -> str:
    lines = [
        "| depth | against | arm | final val MLM loss, mean (range) | below unigram (min) | reached target | "
        "speed-up FLOPs | speed-up wall | loss vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        below = r["below_unigram"] or {}
        flag = "" if below.get("min") is None or below["min"] >= 1.0 else " (< 1 nat)"
        versus = "–" if r["loss_vs_baseline"] is None else f"{r['loss_vs_baseline']:+.3f} ({r['verdict']})"
        lines.append(
            f"| {r['depth']} | {r['baseline']} | {r['arm']} | {_fmt(r['final_val_mlm_loss'])} | "
            f"{_num(below.get('min'))}{flag} | {r['reached_target']} | {_num(r['speedup_flops'])} | "
            f"{_num(r['speedup_wall_s'])} | {versus} |"
        )
    return "\n".join(lines)


def _num(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def _fmt(loss: dict | None) -> str:
    if not loss or loss.get("mean") is None:
        return "–"
    return f"{loss['mean']:.3f} ({loss['min']:.3f} – {loss['max']:.3f})"


if __name__ == "__main__":
    main()
