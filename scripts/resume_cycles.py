"""kill -9 / --resume cycles against an uninterrupted run: is resume bit-exact, every time?

    python scripts/resume_cycles.py --data data/demo --cycles 10 --steps 60 --json out.json
    python scripts/resume_cycles.py --data DIR --config demo --pld --set impl.threads=2 ...

Runs `bertpld pretrain` once to the end (the reference), then runs the same command with --resume
`--cycles` times, each time killed with SIGKILL at a random moment after it has written a new
checkpoint, and once more to the end. Every metrics.jsonl field but the timings (wall_s,
tokens_per_s, mfu) and the final weights must be equal, bit for bit; the script prints and
writes (--json) what it compared, where each cycle was killed and the largest difference, and
exits 1 if anything differs. The default is the PLD demo at the machine's default thread count,
where an earlier release differed now and then (issue 19).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertpld import checkpoint

TIMINGS = ("wall_s", "tokens_per_s", "mfu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a prepared data directory (bertpld prepare)")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--no-pld", action="store_true", help="run the config as it is, without --pld")
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60, help="the run's length (its schedule's too)")
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="of the kill moments")
    ap.add_argument(
        "--kill-within",
        type=float,
        default=1.0,
        help="kill at a random moment this many seconds after a new checkpoint",
    )
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--keep", type=Path, help="keep both run directories under this directory")
    args = ap.parse_args()
    if args.cycles < 1 or args.steps < 2 * args.save_every:
        sys.exit("error: --cycles must be >= 1 and --steps >= 2 x --save-every")

    work = Path(args.keep or tempfile.mkdtemp(prefix="bertpld-resume-cycles-"))
    cmd = [sys.executable, "-m", "bertpld.cli", "pretrain", "--config", args.config, "--data", args.data]
    cmd += [] if args.no_pld else ["--pld"]
    cmd += ["--max-steps", str(args.steps)]
    sets = [f"train.total_steps={args.steps}", f"train.save_every={args.save_every}"]
    sets += [f"train.keep_checkpoints={args.steps}", "train.log_every=1", *args.sets]
    cmd += [x for kv in sets for x in ("--set", kv)]

    ref, run = work / "reference", work / "killed"
    for d in (ref, run):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.time()
    _run([*cmd, "--out", str(ref)])
    rng = random.Random(args.seed)
    kills = []
    for cycle in range(args.cycles):
        done = _saved(run)
        proc = subprocess.Popen(
            [*cmd, "--out", str(run), "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        while _saved(run) <= done and proc.poll() is None:  # wait for a new checkpoint
            time.sleep(0.02)
        if proc.poll() is not None:
            sys.exit(
                f"error: cycle {cycle}: the run ended before it could be killed (raise --steps)\n{proc.stderr.read().decode()}"
            )
        time.sleep(rng.uniform(0.0, args.kill_within))  # then somewhere in the following steps
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append({"cycle": cycle, "last_checkpoint": _saved(run), "rows": len(_rows(run))})
        print(f"cycle {cycle}: killed after checkpoint {kills[-1]['last_checkpoint']}", flush=True)
    _run([*cmd, "--out", str(run), "--resume"])

    a, b = _rows(ref), _rows(run)
    differing, worst = [], 0.0
    if [r["step"] for r in a] != [r["step"] for r in b]:
        differing.append("the logged steps")
    for ra, rb in zip(a, b):
        for key in sorted(set(ra) | set(rb)):
            if key in TIMINGS:
                continue
            x, y = ra.get(key), rb.get(key)
            if x != y:
                differing.append(f"step {ra['step']}: {key} {x} vs {y}")
                if isinstance(x, float) and isinstance(y, float):
                    worst = max(worst, abs(x - y))
    wa = checkpoint.load_model_weights(checkpoint.latest_checkpoint(ref))
    wb = checkpoint.load_model_weights(checkpoint.latest_checkpoint(run))
    weights_equal = all(torch.equal(wa[k], wb[k]) for k in wa)
    result = {
        "command": " ".join(cmd[1:]),
        "default_threads": torch.get_num_threads(),  # what impl.threads=0 (the default) gives
        "cpu_count": os.cpu_count(),
        "cycles": args.cycles,
        "kills": kills,
        "rows_compared": len(a),
        "fields_compared": sorted({k for r in a for k in r} - set(TIMINGS)),
        "identical": not differing and weights_equal,
        "weights_identical": weights_equal,
        "differences": differing[:20],
        "largest_difference": worst,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "kills"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result["identical"] else 1)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def _saved(run: Path) -> int:
    found = checkpoint.list_checkpoints(run) if (run / "checkpoints").is_dir() else []
    return found[-1][0] if found else 0


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    main()
