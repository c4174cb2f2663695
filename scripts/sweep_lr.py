"""Learning-rate sweep per arm: every arm of the demo comparison gets its best stable lr.

Trains each arm (Post-LN baseline, Pre-LN, PLD) of a config at each lr, on the config's own
stopping rule (the demo's executed-FLOPs budget), and tabulates the final validation MLM loss and
how far it lies below the data's unigram line. A run that ends within 0.2 nats of that line has
learned word frequencies only ("stuck"); one with a non-finite loss "diverged". The best lr of an
arm is the lowest final loss among its runs; an lr at the edge of the grid is flagged, because the
optimum may lie beyond it. Runs go `--jobs` at a time, one thread each (as `make reproduce` runs
them); finished runs are reused, so an interrupted sweep continues where it stopped.

    python scripts/sweep_lr.py --data data/demo --lrs 2e-3,3e-3,4e-3,6e-3 --out runs/sweep
    python scripts/sweep_lr.py --arms post --lrs 1e-3,2e-3 --seeds 1,2,3   # the seed spread of one lr
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"post": ["--norm", "post"], "pre": ["--norm", "pre"], "pld": ["--pld"]}
STUCK = 0.2  # nats: within this of the unigram line a run has learned no language


def run_name(arm: str, lr: float, seed: int) -> str:
    """A sweep run's directory name, `<arm>-lr<lr>-s<seed>`."""
    return f"{arm}-lr{lr:g}-s{seed}"


def parse_run_name(name: str) -> tuple[str, float]:
    """The arm and lr of a run directory named by run_name."""
    arm, _, rest = name.partition("-lr")
    return arm, float(rest.rsplit("-s", 1)[0])


def finished(run: Path) -> bool:
    """A run that ended on its own stopping rule: its summary says so. A run stopped by a signal
    (Ctrl-C, a scheduler's SIGTERM) writes a summary too, and is resumed, not reused."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return not str(summary.get("stop_reason", "")).startswith("signal")


def train(out: Path, data: str, config: str, arm: str, lr: float, seed: int, extra: list[str]) -> dict:
    """One run (reused if it finished before; resumed if it was stopped or killed); its summary
    and unigram line."""
    if not finished(out):
        cmd = [sys.executable, "-m", "bertpld.cli", "pretrain", "--config", config, "--data", data]
        cmd += ["--out", str(out), "--seed", str(seed), *ARMS[arm], "--set", f"train.lr={lr}"]
        cmd += ["--set", "impl.threads=1", "--set", "train.save_every=0", *extra]
        if (out / "config.json").is_file():
            cmd += ["--resume"]
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f"{out.name}.log", "w") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=None, cwd=ROOT)
        if done.returncode:
            return {"error": f"exit {done.returncode}; see {out.parent / (out.name + '.log')}"}
    summary = json.loads((out / "summary.json").read_text())
    unigram = json.loads((out / "data.json").read_text()).get("val_unigram_ce")
    return {**summary, "unigram": unigram}


def verdict(r: dict) -> str:
    if "error" in r:
        return "failed"
    loss = r.get("final_val_mlm_loss")
    if loss is None or not math.isfinite(loss):
        return "diverged"
    if r["unigram"] is not None and r["unigram"] - loss < STUCK:
        return "stuck"
    return "ok"


def arm_rows(arm: str, lrs: list[float], seeds: list[int], results: dict) -> list[dict]:
    """One table row per lr of `arm` from results[(arm, lr, seed)] (train()'s dicts): the losses
    of the seeds, their mean (None unless every seed finished), verdicts, and the best lr (the
    lowest mean among those that learned), flagged when it lies at an edge of the grid."""
    rows = []
    for lr in lrs:
        rs = [results[(arm, lr, s)] for s in seeds]
        losses = [r["final_val_mlm_loss"] for r in rs if verdict(r) in ("ok", "stuck")]
        mean = statistics.fmean(losses) if len(losses) == len(rs) else None
        rows.append(
            {
                "arm": arm,
                "lr": lr,
                "verdicts": [verdict(r) for r in rs],
                "final_val_mlm_loss": [r.get("final_val_mlm_loss") for r in rs],
                "mean": mean,
                "below_unigram": None if mean is None else rs[0]["unigram"] - mean,
                "steps": [r.get("steps") for r in rs],
                "wall_s": [r.get("wall_s") for r in rs],
            }
        )
    ok = [r for r in rows if r["mean"] is not None and "stuck" not in r["verdicts"]]
    best = min(ok, key=lambda r: r["mean"]) if ok else None
    for r in rows:
        r["best"] = r is best
        r["at_grid_edge"] = r is best and r["lr"] in (min(lrs), max(lrs))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--arms", default="post,pre,pld")
    ap.add_argument("--lrs", default="2e-3,3e-3,4e-3,6e-3")
    ap.add_argument("--seeds", default="1", help="comma-separated seeds; the table shows their mean")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    args = ap.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        sys.exit(f"{args.data}: no prepared data; run `bertpld prepare --out {args.data}` first")
    arms = args.arms.split(",")
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    extra = [a for s in args.set for a in ("--set", s)]
    jobs = [(arm, lr, seed) for seed in seeds for lr in lrs for arm in arms]
    out = Path(args.out)

    def one(job):
        arm, lr, seed = job
        return job, train(out / run_name(arm, lr, seed), args.data, args.config, arm, lr, seed, extra)

    results = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for (arm, lr, seed), r in pool.map(one, jobs):
            results[(arm, lr, seed)] = r
            loss = r.get("final_val_mlm_loss")
            print(f"{arm} lr {lr:g} seed {seed}: {verdict(r)}, final val MLM loss {loss}", flush=True)

    table = [row for arm in arms for row in arm_rows(arm, lrs, seeds, results)]

    lines = [
        "| arm | lr | final val MLM loss | below unigram | steps | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        loss = " / ".join("–" if v is None else f"{v:.3f}" for v in r["final_val_mlm_loss"])
        below = "–" if r["below_unigram"] is None else f"{r['below_unigram']:.3f}"
        mark = " **best**" + (" (grid edge)" if r["at_grid_edge"] else "") if r["best"] else ""
        lines.append(
            f"| {r['arm']} | {r['lr']:g} | {loss} | {below} | {r['steps'][0]} | {', '.join(r['verdicts'])}{mark} |"
        )
    md = "\n".join(lines)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(md + "\n")
    (out / "sweep.json").write_text(json.dumps({"seeds": seeds, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
