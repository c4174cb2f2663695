"""When does PLD pay? The depth ladder: Post-LN, Pre-LN and PLD at several depths, each arm at its
own best learning rate, several seeds, against a tuned baseline and (at 12 blocks) the paper's.

    python scripts/ladder.py --data data/demo --depths 6,12,24 --out runs/ladder
    python scripts/ladder.py --depths 6 --lrs 2e-3,3e-3,4e-3 --seeds 1,2,3 --jobs 2

Per depth L (the demo config with model.num_layers = L, hidden 128, or as --set changes it):
  budget   executed FLOPs: the demo's train.max_flops x (FLOPs of a step at L, with --set / of the
           demo's step), so every depth trains for about the demo's number of steps (865 for Post-LN;
           x --budget-scale, for a rung whose baseline needs more to learn);
           the table flags a depth whose tuned baseline ends less than 1.0 nat below the unigram line
  sweep    every arm over --lrs, one seed (scripts/sweep_lr.py's runs and table); an arm whose best
           lr lies at an edge of its grid gets the next lr beyond it (x or / --step), up to --extend
           times, so the optimum is bracketed
  seeds    every arm at its best lr with --seeds (the sweep's run is reused for its seed)
  queue    one queue of --jobs workers for all arms: an arm's next runs are queued as soon as its
           own results decide them, so a worker never idles while another arm still sweeps
  paper    at 12 blocks, also Post-LN at one tenth of PLD's best lr, the paper's pairing
  report   `bertpld report` over each depth's seed runs (baseline: the tuned Post-LN arm)
Then the ladder table (ladder.md, ladder.json): per depth and arm its lr (flagged where it lies at
an edge of the arm's grid after --extend: the optimum not bracketed), the final validation MLM loss
(mean, range over seeds), how far below the unigram line, and PLD's time-to-target speed-up in
FLOPs and wall-clock against the tuned and the paper-style baselines, with the report's
within/beyond-noise verdicts; what it cost (runs, their training hours, and the wall-clock of every
invocation, kept in ladder-time.json across interruptions); and ladder.png, PLD's advantage against
depth. Every stage reuses finished runs: an interrupted ladder continues where it stopped. Runs go
--jobs at a time, one thread each.

    python scripts/ladder.py --merge docs/measurements/cpu_ladder_depth6.json \
        docs/measurements/cpu_ladder_depth12.json --out /tmp/all    # one table and plot, no runs
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from bertpld.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import sweep_lr  # noqa: E402  (scripts/ is not a package)

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
        "--budget-scale", type=float, default=1.0, help="train this many times the demo's number of steps"
    )
    ap.add_argument(
        "--paper-depth", type=int, default=12, help="the depth that also gets the paper's baseline"
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--out", default="runs/ladder")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    ap.add_argument("--merge", nargs="+", default=[], help="ladder.json files to combine; runs nothing")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, Path(args.out))
    try:
        depths = [int(x) for x in args.depths.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
        [float(x) for x in args.lrs.split(",")]
    except ValueError as e:
        ap.error(f"--depths/--seeds/--lrs: expected comma-separated numbers ({e})")
    if not (args.budget_scale > 0 and math.isfinite(args.budget_scale)):
        ap.error(f"--budget-scale {args.budget_scale}: expected a positive number (1: the demo's steps)")
    if not (Path(args.data) / "manifest.json").is_file():
        ap.error(f"--data {args.data}: no prepared data; run `bertpld prepare --out {args.data}` first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "ladder-time.json", depths)
    rows, sweeps, compute = [], {}, {}
    for depth in depths:
        depth_rows, sweeps[depth] = rung(args, depth, seeds, out / f"depth-{depth}", ledger)
        compute[depth] = run_compute(out / f"depth-{depth}" / "sweep")
        ledger.update()
        rows += depth_rows
    table = {
        "depths": depths,
        "seeds": seeds,
        "set": args.set,
        "rows": rows,
        "sweeps": sweeps,  # per depth: every arm's lr grid, one row per (arm, lr), seed by seed
        "compute": compute,
        "invocations": ledger.entries,
        "wall_clock_s": sum(e["seconds"] for e in ledger.entries),
    }
    write_outputs(out, table)


def write_outputs(out: Path, table: dict) -> None:
    for row in table["rows"]:
        row.update(tuned_lr(row, table["sweeps"]))
    md = render(table["rows"]) + "\n\n" + render_compute(table) + "\n"
    atomic_write_json(out / "ladder.json", table)
    atomic_write_text(out / "ladder.md", md)
    plot(table["rows"], out / "ladder.png")
    print(md)


def merge(paths: list[str], out: Path) -> None:
    """One table, cost summary and plot from several ladder.json files (e.g. one per depth)."""
    tables = []
    for p in paths:
        try:
            tables.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"error: --merge {p}: not a ladder.json ({e})")
        if not isinstance(tables[-1].get("rows"), list):
            sys.exit(f"error: --merge {p}: no 'rows' list; expected the ladder.json of scripts/ladder.py")
    out.mkdir(parents=True, exist_ok=True)
    table = {
        "merged_from": paths,
        "depths": [d for t in tables for d in t["depths"]],
        "seeds": tables[0].get("seeds"),
        "rows": [r for t in tables for r in t["rows"]],
        "sweeps": {str(k): v for t in tables for k, v in t.get("sweeps", {}).items()},
        "compute": {str(k): v for t in tables for k, v in (t.get("compute") or sweep_compute(t)).items()},
        "invocations": [e for t in tables for e in t.get("invocations", [])],
        "wall_clock_s": sum(t.get("wall_clock_s") or 0 for t in tables),
    }
    write_outputs(out, table)


class Ledger:
    """The wall-clock of every invocation of the ladder in `path`, this one's updated whenever a run
    ends, so that the ladder's cost survives interruptions."""

    def __init__(self, path: Path, depths: list[int]) -> None:
        self.path, self.t0, self.lock = path, time.time(), threading.Lock()
        try:
            old = json.loads(path.read_text()) if path.is_file() else []
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"error: {path}: not a ladder ledger ({e}); move it aside to start a new one")
        self.entries = [*old, {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "depths": depths, "seconds": 0}]
        self.update()

    def update(self) -> None:
        with self.lock:
            self.entries[-1]["seconds"] = round(time.time() - self.t0)
            atomic_write_json(self.path, self.entries)


def sweep_compute(table: dict) -> dict:
    """run_compute from a ladder.json's sweep tables (for one written before it recorded compute):
    a seed run at the best lr repeats the grid's run of that lr, so runs are told apart by wall_s."""
    out = {}
    for depth, rows in table.get("sweeps", {}).items():
        runs = {(r["arm"], r["lr"], w) for r in rows for w in r["wall_s"] if w}
        out[depth] = {"runs": len(runs), "run_hours": round(sum(w for *_, w in runs) / 3600, 3)}
    return out


def run_compute(sweep_dir: Path) -> dict:
    """How many runs a depth trained and their summed training wall-clock (each run's own)."""
    walls = [json.loads(p.read_text()).get("wall_s") or 0.0 for p in sorted(sweep_dir.glob("*/summary.json"))]
    return {"runs": len(walls), "run_hours": round(sum(walls) / 3600, 3)}


def rung(
    args: argparse.Namespace, depth: int, seeds: list[int], out: Path, ledger: Ledger
) -> tuple[list[dict], list[dict]]:
    """Sweep, seeds, paper-style baseline and report of one depth; its ladder rows and its sweep
    table (the grid's rows, then the seed runs' rows).

    Every arm goes its own way on one pool of --jobs workers: its grid, an lr beyond an edge that
    holds its best (up to --extend times), then its seeds at its best lr (PLD then also the
    paper-style baseline), each run queued as soon as what decides it is known, so no worker
    waits for another arm's runs."""
    sets = [f"model.num_layers={depth}", f"train.max_flops={budget(args, depth):.6g}", *args.set]
    hidden = run_config(args, args.set).model.hidden_size
    extra = [x for s in sets for x in ("--set", s)]
    first = sorted(float(x) for x in args.lrs.split(","))
    pool = ThreadPoolExecutor(args.jobs)
    queued: dict[tuple[str, float, int], Future] = {}
    lock = threading.Lock()

    def results(arm: str, lrs: list[float], seeds_: list[int]) -> dict:
        with lock:
            for lr in lrs:
                for seed in seeds_:
                    if (arm, lr, seed) not in queued:
                        path = out / "sweep" / sweep_lr.run_name(arm, lr, seed)
                        train_args = (path, args.data, args.config, arm, lr, seed, extra)
                        queued[(arm, lr, seed)] = pool.submit(sweep_lr.train, *train_args)
                        queued[(arm, lr, seed)].add_done_callback(lambda _: ledger.update())
            keys = [(arm, lr, seed) for lr in lrs for seed in seeds_]
        return {k: queued[k].result() for k in keys}

    def settle(arm: str) -> dict:
        grid = list(first)
        for _ in range(args.extend + 1):  # widen the grid while its best lies at an edge
            table = sweep_lr.arm_rows(arm, grid, seeds[:1], results(arm, grid, seeds[:1]))
            best = best_row(table, arm)
            if (
                best is None
                or best["lr"] not in (grid[0], grid[-1])
                or len(grid) >= len(first) + 2 * args.extend
            ):
                break
            grid = sorted(
                [*grid, best["lr"] * args.step if best["lr"] == grid[-1] else best["lr"] / args.step]
            )
        done = {"grid": table, "best": best}
        if best is not None:
            done["seeds"] = sweep_lr.arm_rows(arm, [best["lr"]], seeds, results(arm, [best["lr"]], seeds))
            if arm == "pld" and depth == args.paper_depth:
                lr = best["lr"] / 10
                done["paper"] = sweep_lr.arm_rows("post", [lr], seeds, results("post", [lr], seeds))
        return done

    with ThreadPoolExecutor(len(ARMS)) as drivers:
        settled = dict(zip(ARMS, drivers.map(settle, ARMS)))
    pool.shutdown()
    recorded = [row for arm in ARMS for row in settled[arm]["grid"]]
    runs: dict[str, list[Path]] = {}
    for arm in ARMS:
        if settled[arm]["best"] is None:
            continue
        recorded += settled[arm]["seeds"]
        lr = settled[arm]["best"]["lr"]
        runs[arm] = [out / "sweep" / sweep_lr.run_name(arm, lr, s) for s in seeds]
    if "paper" in settled["pld"]:
        recorded += settled["pld"]["paper"]
        lr = settled["pld"]["paper"][0]["lr"]
        runs["paper"] = [out / "sweep" / sweep_lr.run_name("post", lr, s) for s in seeds]
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
        rows += ladder_rows(depth, hidden, baseline, json.loads((report_dir / "report.json").read_text()))
    return rows, recorded


def run_config(args: argparse.Namespace, sets: list[str]):
    """The --config with `sets` applied, on --data's vocabulary."""
    from bertpld.config import PretrainConfig, load_config, parse_set, resolve_config_path
    from bertpld.data.reader import load_manifest
    from bertpld.train import resolve_vocab

    cfg = load_config(PretrainConfig, resolve_config_path(args.config), parse_set(sets))
    cfg.data.path = args.data
    resolve_vocab(cfg, load_manifest(args.data))
    return cfg


def budget(args: argparse.Namespace, depth: int) -> float:
    """The demo's FLOPs budget scaled by the cost of a step at `depth` (with --set, e.g. a narrower
    model) over one of the demo's own model, times --budget-scale: every rung trains for about the
    demo's number of steps (times the scale)."""
    from bertpld.data.reader import PretrainReader
    from bertpld.train import expected_step_flops

    def step_flops(cfg, layers: int) -> float:
        reader = PretrainReader(args.data, cfg.data, "train", cfg.impl.micro_batch_size, cfg.train.seed)
        tokens = reader.mean_tokens_per_sequence()
        reader.close()
        cfg.model.num_layers = layers
        return expected_step_flops(cfg, layers, tokens)

    demo = run_config(args, [])
    demo_budget, demo_step = demo.train.max_flops, step_flops(demo, demo.model.num_layers)
    return args.budget_scale * demo_budget * step_flops(run_config(args, args.set), depth) / demo_step


def best_row(table: list[dict], arm: str) -> dict | None:
    """The arm's lowest mean final loss among its finished runs, runs that learned (not "stuck"
    within 0.2 nats of the unigram line) first; None when every run failed or diverged. The
    ladder table flags a best that did not learn (below_unigram)."""
    rows = [r for r in table if r["arm"] == arm and r["mean"] is not None]
    learned = [r for r in rows if "stuck" not in r["verdicts"]]
    return min(learned or rows, key=lambda r: r["mean"]) if rows else None


def ladder_rows(depth: int, hidden: int, baseline: str, report: dict) -> list[dict]:
    """One row per arm of a depth's report: loss over seeds, margin, speed-ups to the baseline's
    mean final loss, the verdict against the seed spread."""
    rows = []
    for arm in report["arms"]:
        st = arm["stats"]
        versus = (arm.get("vs_baseline") or {}).get("final_loss") or {}
        rows.append(
            {
                "depth": depth,
                "hidden": hidden,
                "baseline": baseline,
                "arm": _arm_name(arm, baseline),
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


def tuned_lr(row: dict, sweeps: dict) -> dict:
    """A ladder row's learning rate (from its runs' names, sweep_lr.run_name) and whether it
    lies at an edge of the arm's swept grid, i.e. the optimum was not bracketed; None for the
    paper-style baseline, which is held at PLD's lr / 10 by design, not tuned."""
    arm, lr = sweep_lr.parse_run_name(Path(row["runs"][0]).name)
    if row["baseline"] == "paper" and "(baseline)" in row["arm"]:
        return {"lr": lr, "lr_at_grid_edge": None}
    grid = [r["lr"] for r in sweeps.get(str(row["depth"]), sweeps.get(row["depth"], [])) if r["arm"] == arm]
    edge = bool(grid) and any(math.isclose(lr, x, rel_tol=1e-6) for x in (min(grid), max(grid)))
    return {"lr": lr, "lr_at_grid_edge": edge}


def _arm_name(arm: dict, baseline: str) -> str:
    """The report's arm label, told apart where two Post-LN arms meet (against the paper's)."""
    if arm["label"].startswith("Post-LN") and baseline == "paper":
        return "Post-LN at PLD's lr / 10 (baseline)" if arm["is_baseline"] else "Post-LN at its tuned lr"
    return arm["label"] + (" (baseline)" if arm["is_baseline"] else "")


def render(rows: list[dict]) -> str:
    lines = [
        "| blocks x hidden | against | arm | lr | final val MLM loss, mean (range) | below unigram (min) | "
        "reached target | speed-up FLOPs | speed-up wall | loss vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        below = r["below_unigram"] or {}
        flag = "" if below.get("min") is None or below["min"] >= 1.0 else " (< 1 nat)"
        versus = "–" if r["loss_vs_baseline"] is None else f"{r['loss_vs_baseline']:+.3f} ({r['verdict']})"
        lr = f"{r['lr']:.3g}" + (" (grid edge: not bracketed)" if r["lr_at_grid_edge"] else "")
        lines.append(
            f"| {r['depth']} x {r.get('hidden', 128)} | {r['baseline']} | {r['arm']} | {lr} | "
            f"{_fmt(r['final_val_mlm_loss'])} | "
            f"{_num(below.get('min'))}{flag} | {r['reached_target']} | {_num(r['speedup_flops'])} | "
            f"{_num(r['speedup_wall_s'])} | {versus} |"
        )
    return "\n".join(lines)


def render_compute(table: dict) -> str:
    runs = sum(c["runs"] for c in table["compute"].values())
    hours = sum(c["run_hours"] for c in table["compute"].values())
    per = "; ".join(
        f"depth {d}: {c['runs']} runs, {c['run_hours']:.1f} h" for d, c in table["compute"].items()
    )
    timed = sorted({str(d) for e in table["invocations"] for d in e["depths"]}, key=int)
    untimed = [str(d) for d in table["compute"] if str(d) not in timed]
    return (
        f"Compute: {runs} runs, {hours:.1f} run-hours of training ({per}); wall-clock of the ladder's "
        f"invocations {table['wall_clock_s'] / 3600:.2f} h (depth {', '.join(timed) or 'none'}"
        + (f"; not recorded for depth {', '.join(untimed)})." if untimed else ").")
    )


def plot(rows: list[dict], path: Path) -> None:
    """PLD's (and Pre-LN's) final loss minus the baseline's, against depth, seed ranges as bars;
    and PLD's FLOPs speed-up to the baseline's mean final loss. One line per baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    loss_ax, speed_ax = fig.subplots(1, 2)
    styles = {"post": ("tuned Post-LN", "-"), "paper": ("paper-style Post-LN (lr / 10)", "--")}
    for baseline, (name, ls) in styles.items():
        by_depth = {}
        for r in rows:
            if r["baseline"] == baseline and r["final_val_mlm_loss"]:
                by_depth.setdefault(r["depth"], {})[r["arm"].split(" (")[0]] = r
        depths = sorted(by_depth)
        if baseline == "post":  # the tuned baseline's own seed range around its mean
            for d in depths:
                b = next((v for v in by_depth[d].values() if "(baseline)" in v["arm"]), None)
                if b:
                    loss = b["final_val_mlm_loss"]
                    span = (loss["min"] - loss["mean"], loss["max"] - loss["mean"])
                    loss_ax.fill_between([d - 0.4, d + 0.4], *span, color="grey", alpha=0.25, lw=0)
            width = {r["depth"]: r.get("hidden", 128) for r in rows}
            for ax in (loss_ax, speed_ax):
                ax.set_xticks(depths, [f"{d} x {width[d]}" for d in depths])
        for arm, color in (("PLD", "#2ca02c"), ("Pre-LN", "#ff7f0e")):
            pts = [
                (d, by_depth[d][arm]["final_val_mlm_loss"], by_depth[d]) for d in depths if arm in by_depth[d]
            ]
            pts = [
                (d, loss, next(v for k, v in rs.items() if "(baseline)" in v["arm"])) for d, loss, rs in pts
            ]
            if not pts:
                continue
            xs = [d for d, _, _ in pts]
            ys = [loss["mean"] - b["final_val_mlm_loss"]["mean"] for _, loss, b in pts]
            lo = [y - (loss["min"] - b["final_val_mlm_loss"]["mean"]) for y, (_, loss, b) in zip(ys, pts)]
            hi = [(loss["max"] - b["final_val_mlm_loss"]["mean"]) - y for y, (_, loss, b) in zip(ys, pts)]
            loss_ax.errorbar(
                xs, ys, yerr=[lo, hi], color=color, ls=ls, marker="o", capsize=4, label=f"{arm} vs {name}"
            )
            if arm == "PLD":
                sp = [
                    (d, r["speedup_flops"])
                    for d in depths
                    if (r := by_depth[d].get(arm)) and r["speedup_flops"]
                ]
                if sp:
                    speed_ax.plot(*zip(*sp), color=color, ls=ls, marker="o", label=f"PLD vs {name}")
    loss_ax.axhline(0, color="grey", lw=0.8)
    loss_ax.set(xlabel="encoder blocks x hidden size", ylabel="final val MLM loss - baseline mean (nats)")
    loss_ax.set_title("below 0: better than the baseline; bars: seed range; grey: the baseline's", fontsize=9)
    speed_ax.axhline(1, color="grey", lw=0.8)
    speed_ax.set(xlabel="encoder blocks x hidden size", ylabel="FLOPs speed-up to the baseline's mean loss")
    speed_ax.set_title("seeds that reach it (mean); none plotted if none do", fontsize=9)
    for ax in (loss_ax, speed_ax):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path) + ".tmp.png", dpi=110)
    Path(str(path) + ".tmp.png").replace(path)


def _num(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def _fmt(loss: dict | None) -> str:
    if not loss or loss.get("mean") is None:
        return "–"
    return f"{loss['mean']:.3f} ({loss['min']:.3f} – {loss['max']:.3f})"


if __name__ == "__main__":
    main()
