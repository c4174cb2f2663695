"""End-to-end pre-training benchmark on this machine: PLD vs Pre-LN at equal samples, and DDP overhead.

1. PLD vs Pre-LN: the same config (default: configs/demo.toml) trained for the same number of
   steps (so the same samples) by `bertpld pretrain`, once with --pld and once without (--arms adds
   the Post-LN baseline); compares the total executed FLOPs ratio and the training wall-clock ratio
   from the runs' summary.json. The target: PLD's training time per executed FLOP within 3% of
   Pre-LN's (each arm's fastest of --repeats; skipping blocks saves what it promises). The runs
   are interleaved; the median of the paired wall-clock ratios (each PLD run over the Pre-LN run
   just before it) is reported too. --compare-with DIR runs every arm also with the bertpld of
   another checkout (e.g. `git worktree add /tmp/before <commit>`), interleaved with this one:
   tokens/s of each arm before and after a change, on the same machine in the same minutes.
2. DDP overhead: the same global batch on one process (all threads) vs two gloo processes under
   torchrun (threads split between them), steps/s of each.
3. Precision (--precision): the same config trained with impl.precision=auto and =fp32, repeated
   and interleaved; training tokens/s of each and the median of the paired ratios (on a CPU with
   native bf16 matmuls auto means bf16).

    python scripts/bench_train.py                     # demo config, 200 steps
    python scripts/bench_train.py --steps 100 --repeats 1 --skip-ddp
    python scripts/bench_train.py --precision --skip-pld --skip-ddp --steps 100 --repeats 3
    python scripts/bench_train.py --skip-ddp --arms post,pre,pld --compare-with /tmp/before --set impl.threads=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
    done = subprocess.run(args, env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"command failed: {' '.join(args)}\n{done.stderr[-2000:]}")


def pretrain(
    out: Path,
    data: str,
    config: str,
    steps: int,
    extra: list[str],
    launcher: list[str] | None = None,
    code: Path = ROOT,
):
    cmd = (launcher or [sys.executable, "-m", "bertpld.cli"]) + ["pretrain"]
    cmd += [
        "--config",
        config,
        "--data",
        str(Path(data).resolve()),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
    ]
    cmd += ["--eval-every", "0", "--save-every", "0", "--set", "train.total_steps=" + str(steps)]
    cmd += ["--set", "train.max_flops=0", "--set", "train.log_every=1", *extra]
    # in the checkout's own directory: `python -m` puts the working directory first on sys.path,
    # so run from anywhere else it would import the bertpld found there, not `code`'s
    run(cmd, env={"PYTHONPATH": str(code)}, cwd=code)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary["per_step"] = per_step(rows)
    # the precision the run computed in ('auto' resolved), as the run recorded it
    summary["precision"] = json.loads((out / "env.json").read_text()).get("precision")
    return summary


def check_imports(code: Path) -> None:
    """Exit unless a run started for `code` imports `code`'s bertpld (not an installed one)."""
    found = subprocess.run(
        [sys.executable, "-c", "import bertpld; print(bertpld.__file__)"],
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=code,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not found or not Path(found).resolve().is_relative_to(code.resolve()):
        sys.exit(f"error: a run for {code} imports the bertpld at {found or '(none)'}, not {code}'s")


def per_step(rows: list[dict], skip: int = 5) -> dict:
    """Medians over a run's steps (after `skip` warm-up steps) of time per executed FLOP and
    tokens/s, from consecutive metrics rows (logged every step): a burst of load from another
    process moves a run's total, but only the steps it hits."""
    rows = [r for r in rows if "tokens_per_s" in r]  # training rows (not the final evaluation's)
    pairs = [(a, b) for a, b in zip(rows, rows[1:]) if b["step"] > skip and b["wall_s"] > a["wall_s"]]
    if not pairs:
        return {}
    return {
        "median_ps_per_flop": statistics.median(
            1e12 * (b["wall_s"] - a["wall_s"]) / (b["flops"] - a["flops"]) for a, b in pairs
        ),
        "median_tokens_per_s": statistics.median(
            (b["tokens"] - a["tokens"]) / (b["wall_s"] - a["wall_s"]) for a, b in pairs
        ),
    }


def _global_batch(config: str) -> int:
    from bertpld.config import PretrainConfig, load_config, resolve_config_path

    return load_config(PretrainConfig, resolve_config_path(config)).train.global_batch_size


def _secs(summaries: list[dict]) -> str:
    return ", ".join(f"{s['wall_s']:.1f}" for s in summaries)


ARMS = {"post": ["--norm", "post"], "pre": ["--norm", "pre"], "pld": ["--pld"]}


def compare_arms(args, train) -> dict:
    """Every arm (and every arm of --compare-with) once per repeat, interleaved; see the module doc."""
    arms = args.arms.split(",")
    codes = {"this": ROOT, **({"other": Path(args.compare_with).resolve()} if args.compare_with else {})}
    for code in codes.values():
        check_imports(code)
    runs: dict[str, dict[str, list[dict]]] = {c: {a: [] for a in arms} for c in codes}
    for i in range(args.repeats):
        for a in arms:
            # each arm's two checkouts back to back, in alternating order (ABBA): a pair sees
            # nearly the same load, and neither side always runs first
            for c in list(codes)[:: 1 if i % 2 == 0 else -1]:
                runs[c][a].append(train(f"{c}-{a}{i}", ARMS[a], code=codes[c]))
    out: dict = {"arms": arms, "compare_with": args.compare_with or None, "runs": {}}
    for c in codes:
        label = "" if c == "this" else " (--compare-with)"
        per = out["runs"][c] = {}
        for a in arms:
            rs = runs[c][a]
            per[a] = {
                "wall_s": [r["wall_s"] for r in rs],
                "flops": rs[0]["flops"],
                "tokens_per_s": [r["tokens"] / r["wall_s"] for r in rs],
                "best_ps_per_flop": min(1e12 * r["wall_s"] / r["flops"] for r in rs),
                # the median over runs of each run's median step (robust to bursts of load)
                "step_ps_per_flop": statistics.median(r["per_step"]["median_ps_per_flop"] for r in rs),
                "step_tokens_per_s": statistics.median(r["per_step"]["median_tokens_per_s"] for r in rs),
            }
            print(
                f"{a:4s}{label}: wall-clock (s) {_secs(rs)}, FLOPs {rs[0]['flops']:.3e}, "
                f"best {max(per[a]['tokens_per_s']):,.0f} tokens/s, {per[a]['best_ps_per_flop']:.2f} ps/FLOP; "
                f"median step {per[a]['step_tokens_per_s']:,.0f} tokens/s, {per[a]['step_ps_per_flop']:.2f} ps/FLOP"
            )
        if {"pre", "pld"} <= set(arms):
            pre, pld = runs[c]["pre"], runs[c]["pld"]
            per["flops_ratio"] = pld[0]["flops"] / pre[0]["flops"]
            # Each PLD run over the Pre-LN run just before it: the load of a shared machine drifts
            # over minutes, and a pair sees nearly the same load. The median pair decides.
            per["paired_wall_ratios"] = [b["wall_s"] / a["wall_s"] for a, b in zip(pre, pld)]
            per["wall_ratio"] = statistics.median(per["paired_wall_ratios"])
            per["time_per_flop_ratio"] = per["pld"]["best_ps_per_flop"] / per["pre"]["best_ps_per_flop"]
            per["step_time_per_flop_ratio"] = per["pld"]["step_ps_per_flop"] / per["pre"]["step_ps_per_flop"]
            print(
                f"PLD / Pre-LN{label} at equal samples: FLOPs {per['flops_ratio']:.3f}, wall-clock "
                f"{per['wall_ratio']:.3f} (median pair); time per executed FLOP {per['time_per_flop_ratio']:.3f} "
                f"(fastest run of each), {per['step_time_per_flop_ratio']:.3f} (median steps); target <= 1.03"
            )
    if args.compare_with:
        this, other = out["runs"]["this"], out["runs"]["other"]
        out["speedup_vs_other"] = {
            a: max(this[a]["tokens_per_s"]) / max(other[a]["tokens_per_s"]) for a in arms
        }
        out["step_speedup_vs_other"] = {
            a: this[a]["step_tokens_per_s"] / other[a]["step_tokens_per_s"] for a in arms
        }
        # per repeat, this checkout's run over the other's run beside it (median-step tokens/s)
        out["paired_speedups_vs_other"] = {
            a: [
                t["per_step"]["median_tokens_per_s"] / o["per_step"]["median_tokens_per_s"]
                for t, o in zip(runs["this"][a], runs["other"][a])
            ]
            for a in arms
        }
        for a in arms:
            pairs = out["paired_speedups_vs_other"][a]
            print(
                f"{a}: tokens/s {out['speedup_vs_other'][a]:.3f}x (best run), "
                f"{out['step_speedup_vs_other'][a]:.3f}x (median steps), {statistics.median(pairs):.3f}x "
                f"(median of {len(pairs)} adjacent pairs, range {min(pairs):.3f}-{max(pairs):.3f}) "
                f"that of --compare-with {args.compare_with}"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/demo", help="prepared data (bertpld prepare --out data/demo)")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-pld", action="store_true", help="skip the PLD vs Pre-LN comparison")
    ap.add_argument("--arms", default="pre,pld", help="arms to compare, of post, pre, pld")
    ap.add_argument("--compare-with", default="", help="also run every arm with the bertpld of this checkout")
    ap.add_argument("--precision", action="store_true", help="also compare impl.precision auto vs fp32")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every run")
    ap.add_argument("--out", default="", help="write the numbers as JSON here")
    args = ap.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        sys.exit(
            f"{args.data}: no prepared data; run `bertpld prepare --out {args.data} --vocab-size 4096` first"
        )

    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        sys.exit(
            f"error: --arms: {', '.join(unknown)} unknown; expected a comma-separated list of {', '.join(ARMS)}"
        )
    if not args.skip_pld and args.steps < 8:  # per_step's medians skip 5 warm-up steps
        sys.exit(f"error: --steps {args.steps}: the arm comparison needs at least 8 steps")
    extra = [a for s in args.set for a in ("--set", s)]
    result: dict = {"config": args.config, "steps": args.steps, "cpu_count": os.cpu_count(), "set": args.set}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def train(name: str, flags: list[str], launcher: list[str] | None = None, code: Path = ROOT) -> dict:
            return pretrain(tmp / name, args.data, args.config, args.steps, [*flags, *extra], launcher, code)

        if not args.skip_pld:
            result.update(compare_arms(args, train))

        if args.precision:
            auto, fp32 = [], []
            for i in range(args.repeats):
                auto.append(train(f"auto{i}", ["--set", "impl.precision=auto"]))
                fp32.append(train(f"fp32{i}", ["--set", "impl.precision=fp32"]))
            tps = [[s["tokens"] / s["wall_s"] for s in runs] for runs in (auto, fp32)]
            ran = [[s["precision"] for s in runs] for runs in (auto, fp32)]  # what each run computed in
            ratio = statistics.median(a / b for a, b in zip(*tps))
            result.update(auto_tokens_per_s=tps[0], fp32_tokens_per_s=tps[1], precision_speedup=ratio)
            result.update(auto_precision=ran[0], fp32_precision=ran[1])
            for name, v, p in zip(("auto", "fp32"), tps, ran):
                ran_in = "/".join(sorted({str(x) for x in p}))
                print(
                    f"impl.precision={name} (ran in {ran_in}): tokens/s {', '.join(f'{x:,.0f}' for x in v)}"
                )
            print(f"auto / fp32 throughput: {ratio:.2f}x (median of paired ratios)")
            if ran[0] == ran[1]:
                print(f"note: auto ran in {ran[0][0]} here, as fp32 did: the ratio compares fp32 with itself")

        if not args.skip_ddp:
            threads = os.cpu_count() or 2
            one = train("one", ["--pld", "--set", f"impl.threads={threads}"])
            launcher = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
            ]
            launcher += ["-m", "bertpld.cli"]
            os.environ["OMP_NUM_THREADS"] = str(max(threads // 2, 1))
            micro = _global_batch(args.config) // 2  # the same global batch over 2 ranks
            two = train("two", ["--pld", "--set", f"impl.micro_batch_size={micro}"], launcher)
            result.update(single_wall_s=one["wall_s"], ddp2_wall_s=two["wall_s"])
            print(
                f"DDP (gloo): 1 process x {threads} threads {one['wall_s']:.1f}s, "
                f"2 processes x {max(threads // 2, 1)} thread(s) {two['wall_s']:.1f}s "
                f"({two['wall_s'] / one['wall_s'] - 1:+.1%})"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
