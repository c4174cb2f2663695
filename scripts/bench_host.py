"""What a training step costs the host beyond its maths: page faults, oneDNN kernel builds, memory.

Each setting trains a shape of scripts/profile_step.py (default: the demo; one arm, default: PLD)
in its own fresh process, the settings interleaved and repeated; after --warmup steps, over
--steps steps it counts per step the minor page faults (getrusage), the oneDNN primitives created
(cache misses, from ONEDNN_VERBOSE=profile_create) and the growth of the resident memory, and
times the steps. The settings:

    impl.keep_host_memory   glibc malloc keeps freed memory (bertpld.device.keep_host_memory)
    impl.unpad_multiple     the encoder's row count rounded up to a multiple (bertpld.model.token_index)

    python scripts/bench_host.py --json docs/measurements/cpu_host_step_costs.json
    python scripts/bench_host.py --arm pre --steps 20 --repeats 3
    python scripts/bench_host.py --shape base --threads 1 --warmup 3 --steps 4
    python scripts/bench_host.py --shape base --multiples 64,16,8,1   # memory kept, rows rounded to each

--multiples replaces the settings with one per multiple (memory kept in all); it also counts the
distinct row counts (matmul shapes) the encoder sees in the measured steps and the rows the rounding
added, so the choice of a multiple rests on counts as well as on step times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from profile_step import SHAPES  # noqa: E402  (scripts/ is not a package)

SETTINGS = {
    "before (malloc defaults, real tokens only)": ["impl.keep_host_memory=false", "impl.unpad_multiple=1"],
    "memory kept": ["impl.keep_host_memory=true", "impl.unpad_multiple=1"],
    "memory kept, rows to a multiple of 64": ["impl.keep_host_memory=true", "impl.unpad_multiple=64"],
}

CHILD = """
import ctypes, json, os, resource, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "scripts"))
from bertpld.device import keep_host_memory
from profile_step import Arm, arm_config
arm, warmup, steps, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
a = Arm(arm_config(sys.argv[6], arm, sys.argv[7], "cpu", threads, sys.argv[8:]))
import bertpld.train
rows = []  # (real tokens, rows the encoder ran) of every micro-batch
def counted(mask, multiple, _index=bertpld.train.token_index):
    index = _index(mask, multiple)
    rows.append((int(mask.sum()), len(index)))
    return index
bertpld.train.token_index = counted
if a.cfg.impl.keep_host_memory:
    keep_host_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def mark(text):  # oneDNN's verbose lines go through C stdio: flush them before the marker
    ctypes.CDLL(None).fflush(None)
    os.write(1, text.encode() + b"\\n")
a.run(warmup)
seen = {n for _, n in rows}
del rows[:]
mark("=== measured ===")
faults, mem, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, rss(), time.perf_counter()
times = []
for _ in range(steps):
    t = time.perf_counter()
    a.run(1)
    times.append(time.perf_counter() - t)
out = {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, "rss_growth": rss() - mem,
       "rss": rss(), "step_ms": [1e3 * t for t in times],
       "row_counts_new": len({n for _, n in rows} - seen), "row_counts": len({n for _, n in rows}),
       "rows_added": sum(n - t for t, n in rows) / max(sum(t for t, _ in rows), 1)}
mark("=== end ===")
mark(json.dumps(out))
"""


def run_once(args, sets: list[str]) -> dict:
    env = {**os.environ, "ONEDNN_VERBOSE": "profile_create", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", CHILD, str(ROOT), args.arm, str(args.warmup), str(args.steps)]
    cmd += [str(args.threads), args.shape, args.data or SHAPES[args.shape][1], *sets]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: a measured run failed:\n{done.stderr[-2000:]}")
    lines = done.stdout.splitlines()
    res = json.loads(lines[-1])
    measured = lines[lines.index("=== measured ===") : lines.index("=== end ===")]
    res["onednn_kernels_created"] = sum("create:cache_miss" in line for line in measured)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="demo", help="as scripts/profile_step.py's")
    ap.add_argument("--data", default="", help="prepared data (default: the shape's)")
    ap.add_argument("--arm", default="pld", choices=["post", "pre", "pld"])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--multiples", default="", help="comma-separated impl.unpad_multiple values to compare")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    settings = SETTINGS
    if args.multiples:
        try:
            multiples = [int(m) for m in args.multiples.split(",")]
        except ValueError:
            sys.exit(f"error: --multiples {args.multiples}: expected comma-separated integers")
        settings = {
            f"memory kept, rows to a multiple of {m}": [
                "impl.keep_host_memory=true",
                f"impl.unpad_multiple={m}",
            ]
            for m in multiples
        }
    data = args.data or SHAPES[args.shape][1]
    if not (Path(data) / "manifest.json").is_file():
        sys.exit(f"error: {data}: no prepared data (see scripts/profile_step.py --help)")
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for r in range(args.repeats):
        for name, sets in settings.items():
            runs[name].append(run_once(args, sets))
            print(f"repeat {r + 1}, {name}: done", flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "minor_faults_per_step": statistics.median(x["faults"] / args.steps for x in rs),
            "onednn_kernels_created_per_step": statistics.median(
                x["onednn_kernels_created"] / args.steps for x in rs
            ),
            "rss_growth_mib_per_step": statistics.median(x["rss_growth"] / 2**20 / args.steps for x in rs),
            "rss_mib_at_end": statistics.median(x["rss"] / 2**20 for x in rs),
            "median_step_ms": statistics.median(t for x in rs for t in x["step_ms"]),
            "distinct_row_counts": statistics.median(x["row_counts"] for x in rs),
            "new_row_counts_after_warmup": statistics.median(x["row_counts_new"] for x in rs),
            "rows_added_by_rounding": statistics.median(x["rows_added"] for x in rs),
        }
        s = summary[name]
        print(
            f"{name}: {s['minor_faults_per_step']:.0f} minor faults/step, "
            f"{s['onednn_kernels_created_per_step']:.1f} oneDNN kernels built/step, "
            f"RSS +{s['rss_growth_mib_per_step']:.2f} MiB/step (ends at {s['rss_mib_at_end']:.0f} MiB), "
            f"median step {s['median_step_ms']:.1f} ms; {s['distinct_row_counts']:.0f} row counts "
            f"({s['new_row_counts_after_warmup']:.0f} new after warm-up), rounding added "
            f"{100 * s['rows_added_by_rounding']:.2f}% rows"
        )
    if args.json:
        from bertpld.atomic import atomic_write_json

        atomic_write_json(
            Path(args.json),
            {
                "command": "python " + " ".join(sys.argv),
                "shape": args.shape,
                "arm": args.arm,
                "threads": args.threads,
                "warmup": args.warmup,
                "steps": args.steps,
                "repeats": args.repeats,
                "machine": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "settings": settings,
                "summary": summary,
                "runs": runs,
            },
        )


if __name__ == "__main__":
    main()
