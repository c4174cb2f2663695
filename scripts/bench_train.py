"""End-to-end pre-training benchmark on this machine: PLD vs Pre-LN at equal samples, and DDP overhead.

1. PLD vs Pre-LN: the same config (default: configs/demo.toml) trained for the same number of
   steps (so the same samples) by `bertpld pretrain`, once with --pld and once without; compares the
   total executed FLOPs ratio and the training wall-clock ratio from the runs' summary.json. The
   target is a wall-clock ratio within 3% of the FLOPs ratio: skipping blocks saves what it
   promises. Both runs are repeated (--repeats) and interleaved; the median of the paired
   ratios (each PLD run over the Pre-LN run just before it) is reported.
2. DDP overhead: the same global batch on one process (all threads) vs two gloo processes under
   torchrun (threads split between them), steps/s of each.
3. Precision (--precision): the same config trained with impl.precision=auto and =fp32, repeated
   and interleaved; training tokens/s of each and the median of the paired ratios (on a CPU with
   native bf16 matmuls auto means bf16).

    python scripts/bench_train.py                     # demo config, 200 steps
    python scripts/bench_train.py --steps 100 --repeats 1 --skip-ddp
    python scripts/bench_train.py --precision --skip-pld --skip-ddp --steps 100 --repeats 3
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


def run(args: list[str], env: dict | None = None) -> None:
    done = subprocess.run(args, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"command failed: {' '.join(args)}\n{done.stderr[-2000:]}")


def pretrain(
    out: Path, data: str, config: str, steps: int, extra: list[str], launcher: list[str] | None = None
):
    cmd = (launcher or [sys.executable, "-m", "bertpld.cli"]) + ["pretrain"]
    cmd += ["--config", config, "--data", data, "--out", str(out), "--max-steps", str(steps)]
    cmd += ["--eval-every", "0", "--save-every", "0", "--set", "train.total_steps=" + str(steps)]
    cmd += ["--set", "train.max_flops=0", *extra]
    run(cmd, env={"PYTHONPATH": str(ROOT)})
    return json.loads((out / "summary.json").read_text())


def _global_batch(config: str) -> int:
    from bertpld.config import PretrainConfig, load_config, resolve_config_path

    return load_config(PretrainConfig, resolve_config_path(config)).train.global_batch_size


def _secs(summaries: list[dict]) -> str:
    return ", ".join(f"{s['wall_s']:.1f}" for s in summaries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/demo", help="prepared data (bertpld prepare --out data/demo)")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-pld", action="store_true", help="skip the PLD vs Pre-LN comparison")
    ap.add_argument("--precision", action="store_true", help="also compare impl.precision auto vs fp32")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every run")
    ap.add_argument("--out", default="", help="write the numbers as JSON here")
    args = ap.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        sys.exit(
            f"{args.data}: no prepared data; run `bertpld prepare --out {args.data} --vocab-size 4096` first"
        )

    extra = [a for s in args.set for a in ("--set", s)]
    result: dict = {"config": args.config, "steps": args.steps, "cpu_count": os.cpu_count(), "set": args.set}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def train(name: str, flags: list[str], launcher: list[str] | None = None) -> dict:
            return pretrain(tmp / name, args.data, args.config, args.steps, [*flags, *extra], launcher)

        if not args.skip_pld:
            pre, pld = [], []
            for i in range(args.repeats):
                pre.append(train(f"pre{i}", ["--norm", "pre"]))
                pld.append(train(f"pld{i}", ["--pld"]))
            flops_ratio = pld[0]["flops"] / pre[0]["flops"]
            # Each PLD run is paired with the Pre-LN run just before it: the load of this shared
            # machine drifts over minutes, and a pair sees nearly the same load. The median pair decides.
            wall_ratio = statistics.median(b["wall_s"] / a["wall_s"] for a, b in zip(pre, pld))
            result.update(
                pre_wall_s=[p["wall_s"] for p in pre],
                pld_wall_s=[p["wall_s"] for p in pld],
                paired_wall_ratios=[b["wall_s"] / a["wall_s"] for a, b in zip(pre, pld)],
                pre_flops=pre[0]["flops"],
                pld_flops=pld[0]["flops"],
                flops_ratio=flops_ratio,
                wall_ratio=wall_ratio,
                wall_vs_flops=wall_ratio / flops_ratio - 1,
            )
            print(f"Pre-LN wall-clock (s): {_secs(pre)}   FLOPs {pre[0]['flops']:.3e}")
            print(f"PLD    wall-clock (s): {_secs(pld)}   FLOPs {pld[0]['flops']:.3e}")
            print(
                f"PLD / Pre-LN at equal samples: FLOPs {flops_ratio:.3f}, wall-clock {wall_ratio:.3f} "
                f"({result['wall_vs_flops']:+.1%} vs the FLOPs ratio; target within 3%)"
            )

        if args.precision:
            auto, fp32 = [], []
            for i in range(args.repeats):
                auto.append(train(f"auto{i}", ["--set", "impl.precision=auto"]))
                fp32.append(train(f"fp32{i}", ["--set", "impl.precision=fp32"]))
            tps = [[s["tokens"] / s["wall_s"] for s in runs] for runs in (auto, fp32)]
            ratio = statistics.median(a / b for a, b in zip(*tps))
            result.update(auto_tokens_per_s=tps[0], fp32_tokens_per_s=tps[1], precision_speedup=ratio)
            print(f"impl.precision=auto: tokens/s {', '.join(f'{v:,.0f}' for v in tps[0])}")
            print(f"impl.precision=fp32: tokens/s {', '.join(f'{v:,.0f}' for v in tps[1])}")
            print(f"auto / fp32 throughput: {ratio:.2f}x (median of paired ratios)")

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
