"""Where a training step's time goes: the step split into its named phases, Pre-LN vs PLD.

Runs the trainer's own step (`bertpld.train.train_step`, on real prepared data) under a
`bertpld.phases.PhaseClock`, which charges every moment of a step to the phase the code is in
(bertpld.phases.PHASES: data, gates, embeddings / blocks / heads forward and backward, gradient
reduction, optimizer, bookkeeping). PLD runs at its steady state (theta = theta_bar = 0.5 after the
warm-up steps). The arms run in interleaved rounds of a few steps, so that load from other
processes on a shared machine hits both alike, and every number is the median over an arm's rounds
(this project's 2-core VM varies by 10-40% from minute to minute; a median of many short rounds
holds still where a whole-run total or a fastest round does not).

Reported per arm: ms per step for each phase, executed FLOPs per step (split into blocks and the
rest), and time per executed FLOP; for PLD over Pre-LN, the ratio of time per executed FLOP (1.0:
skipping a block saves exactly its share of the time) and what the non-block phases cost per FLOP.

Shapes (a row each; --set adds overrides):
    demo   configs/demo.toml on data/demo (6 x 128, seq 64, vocabulary 4,096, batch 64)
    base   BERT-base: 12 x 768, seq 128, vocabulary 30,522, MLM + NSP, batch 8, on data/demo30k
           (bertpld prepare --out data/demo30k --vocab-size 30522)

    python scripts/profile_step.py --shape demo --threads 1 --json docs/measurements/x.json
    python scripts/profile_step.py --shape base --steps 4 --rounds 2
    python scripts/profile_step.py --shape demo --trace /tmp/trace    # + a torch.profiler trace per arm
    python scripts/profile_step.py --table before.json after.json       # two profiles side by side
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from bertpld import pld
from bertpld.atomic import atomic_write_json
from bertpld.config import PretrainConfig, load_config, parse_set, resolve_config_path
from bertpld.data.reader import PretrainReader, load_manifest
from bertpld.device import cpu_bf16_support, keep_host_memory, resolve_device, resolve_precision
from bertpld.phases import OTHER, PHASES, PhaseClock
from bertpld.train import build_trainer, expected_step_flops, resolve_vocab, schedule_steps, train_step

SHAPES = {
    "demo": ("demo", "data/demo", {}),
    "base": (
        "bert-base-preln",
        "data/demo30k",
        {"train": {"global_batch_size": 8}, "impl": {"micro_batch_size": 8, "precision": "auto"}},
    ),
}
ARMS = {
    "post": {"model": {"norm": "post"}},
    "pre": {"model": {"norm": "pre"}},
    "pld": {"model": {"norm": "pre"}, "pld": {"enabled": True}},
}
BLOCKS = ("forward.blocks", "backward.blocks")


def arm_config(shape: str, arm: str, data: str, device: str, threads: int, sets: list[str]) -> PretrainConfig:
    config, _, layer = SHAPES[shape]
    steady = {"train": {"max_steps": 10**6, "max_flops": 0.0, "eval_every": 0, "save_every": 0}}
    # gamma 1: theta is within 0.1% of theta_bar after 8 steps (the warm-up), PLD's steady state
    pld_cfg = {"pld": {**ARMS[arm].get("pld", {}), "gamma": 1.0}} if arm == "pld" else {}
    layers = [layer, ARMS[arm], pld_cfg, steady]
    layers.append({"data": {"path": data}, "impl": {"device": device, "threads": threads}})
    return load_config(PretrainConfig, resolve_config_path(config), *layers, parse_set(sets))


class Arm:
    """One arm's trainer, kept across rounds (its data stream and optimizer state go on)."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.impl.device)
        resolve_vocab(cfg, load_manifest(cfg.data.path))
        reader = PretrainReader(
            cfg.data.path, cfg.data, "train", cfg.impl.micro_batch_size, cfg.train.seed, 0, 1
        )
        self.precision = resolve_precision(cfg.impl.precision, self.device)
        self.trainer = build_trainer(cfg, self.device, self.precision.dtype, reader, schedule_steps(cfg))
        # a step with every block dropped: embeddings and heads, on the data's mean real tokens
        self.nonblock_flops = expected_step_flops(cfg, 0, reader.mean_tokens_per_sequence())
        self.rounds: list[dict] = []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            _, _, failure = train_step(self.trainer)
            if failure:
                sys.exit(failure)

    def measure(self, steps: int) -> dict:
        c = self.trainer.counters
        flops0, blocks0 = c.flops, self.trainer.meter.blocks_sum
        with PhaseClock(self.trainer.model, self.device) as clock:
            for _ in range(steps):
                self.run(1)
                clock.step()
        kept = (self.trainer.meter.blocks_sum - blocks0) / steps
        flops = (c.flops - flops0) / steps
        result = {
            "step_ms": 1e3 * sum(clock.steps) / steps,
            "phases_ms": {k: 1e3 * clock.totals.get(k, 0.0) / steps for k in [*PHASES, OTHER]},
            "flops_per_step": flops,
            "nonblock_flops_per_step": self.nonblock_flops,
            "blocks_kept": kept,
        }
        self.rounds.append(result)
        return result

    def median(self) -> dict:
        """Each quantity's median over the rounds (time per FLOP: the median of the rounds' own)."""
        med = statistics.median
        rs = self.rounds
        return {
            "step_ms": med(r["step_ms"] for r in rs),
            "phases_ms": {k: med(r["phases_ms"][k] for r in rs) for k in rs[0]["phases_ms"]},
            "flops_per_step": med(r["flops_per_step"] for r in rs),
            "nonblock_flops_per_step": rs[0]["nonblock_flops_per_step"],
            "blocks_kept": sum(r["blocks_kept"] for r in rs) / len(rs),
            "ns_per_flop": med(1e9 * r["step_ms"] / 1e3 / r["flops_per_step"] for r in rs),
        }


def table(arms: dict[str, dict]) -> str:
    names = list(arms)
    lines = ["| phase | " + " | ".join(f"{a} ms/step | {a} share" for a in names) + " |"]
    lines.append("|---|" + "---|---|" * len(names))
    for k in [*PHASES, OTHER]:
        cells = []
        for a in names:
            ms, step = arms[a]["phases_ms"][k], arms[a]["step_ms"]
            cells.append(f"{ms:.1f} | {ms / step:.1%}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{arms[a]['step_ms']:.1f}** | 100%" for a in names) + " |")
    return "\n".join(lines)


def side_by_side(paths: list[str]) -> str:
    """A markdown table of several profiles' JSON (e.g. before and after a change): ms per step."""
    runs = []
    for p in paths:
        try:
            runs.append((Path(p).stem, json.loads(Path(p).read_text())))
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"error: {p}: not a profile_step JSON ({e})")
        if not isinstance(runs[-1][1].get("arms"), dict):
            sys.exit(f"error: {p}: no 'arms' object; expected the --json output of scripts/profile_step.py")
    cols = [(name, a) for name, run in runs for a in run["arms"]]
    lines = [
        "| phase | " + " | ".join(f"{a} {name}" for name, a in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    by = {(name, a): run["arms"][a] for name, run in runs for a in run["arms"]}
    for k in [*PHASES, OTHER]:
        lines.append(f"| {k} | " + " | ".join(f"{by[c]['phases_ms'][k]:.1f}" for c in cols) + " |")
    lines.append("| **step** | " + " | ".join(f"**{by[c]['step_ms']:.1f}**" for c in cols) + " |")
    lines.append(
        "| ps per executed FLOP | " + " | ".join(f"{1e3 * by[c]['ns_per_flop']:.2f}" for c in cols) + " |"
    )
    return "\n".join(lines)


def summarize(arms: dict[str, dict]) -> dict:
    out = {}
    for r in arms.values():
        blocks_ms = sum(r["phases_ms"][k] for k in BLOCKS)
        r["blocks_ms"], r["nonblock_ms"] = blocks_ms, r["step_ms"] - blocks_ms
        r["nonblock_time_share"] = r["nonblock_ms"] / r["step_ms"]
        r["nonblock_flops_share"] = r["nonblock_flops_per_step"] / r["flops_per_step"]
    if {"post", "pld"} <= arms.keys():
        out["pld_over_post_time_per_flop"] = arms["pld"]["ns_per_flop"] / arms["post"]["ns_per_flop"]
        out["pre_over_post_time_per_flop"] = arms["pre"]["ns_per_flop"] / arms["post"]["ns_per_flop"]
    if {"pre", "pld"} <= arms.keys():
        out["pld_over_pre_time_per_flop"] = arms["pld"]["ns_per_flop"] / arms["pre"]["ns_per_flop"]
        out["pld_over_pre_step_time"] = arms["pld"]["step_ms"] / arms["pre"]["step_ms"]
        out["pld_over_pre_flops"] = arms["pld"]["flops_per_step"] / arms["pre"]["flops_per_step"]
    return out


def trace(arm: Arm, out: Path, steps: int = 3) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if arm.device.type == "cuda" else [])
    with profile(activities=acts) as prof, PhaseClock(arm.trainer.model, arm.device):
        arm.run(steps)
    out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(
        str(out / f"{arm.cfg.model.norm}-{'pld' if arm.cfg.pld.enabled else 'nopld'}.json")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="demo")
    ap.add_argument("--data", default="", help="prepared data (default: the shape's)")
    ap.add_argument("--arms", default="pre,pld", help="comma-separated, of: " + ", ".join(ARMS))
    ap.add_argument("--steps", type=int, default=3, help="measured steps per round and arm")
    ap.add_argument("--warmup", type=int, default=8, help="unmeasured steps per arm first")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (medians over them)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every arm")
    ap.add_argument("--json", default="", help="write the numbers here")
    ap.add_argument("--trace", default="", help="also write a torch.profiler chrome trace per arm here")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="only print these profiles side by side")
    args = ap.parse_args()
    if args.table:
        print(side_by_side(args.table))
        return
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        sys.exit(
            f"error: --arms: {', '.join(unknown)} unknown; expected a comma-separated list of {', '.join(ARMS)}"
        )
    data = args.data or SHAPES[args.shape][1]
    if not (Path(data) / "manifest.json").is_file():
        sys.exit(f"{data}: no prepared data (see --help for the bertpld prepare command)")
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = {
        a: Arm(arm_config(args.shape, a, data, args.device, args.threads, args.set))
        for a in args.arms.split(",")
    }
    # the trainer's allocator setting (process-wide: --set impl.keep_host_memory=false for all arms)
    keep = {a.cfg.impl.keep_host_memory for a in arms.values()}
    host_memory = keep_host_memory() if keep == {True} else ""
    for arm in arms.values():
        arm.run(args.warmup)
    for r in range(args.rounds):
        for name, arm in arms.items():
            res = arm.measure(args.steps)
            print(f"round {r + 1} {name}: {res['step_ms']:.1f} ms/step", flush=True)
    medians = {name: arm.median() for name, arm in arms.items()}
    ratios = summarize(medians)
    print(table(medians))
    for name, r in medians.items():
        print(
            f"{name}: {r['step_ms']:.1f} ms/step, {r['flops_per_step'] / 1e9:.2f} GFLOP/step, "
            f"{r['ns_per_flop'] * 1e3:.2f} ps/FLOP; blocks kept {r['blocks_kept']:.2f}; "
            f"outside the blocks {r['nonblock_time_share']:.1%} of the time, {r['nonblock_flops_share']:.1%} of the FLOPs"
        )
    if "pld_over_pre_time_per_flop" in ratios:
        print(
            f"PLD / Pre-LN: time per executed FLOP {ratios['pld_over_pre_time_per_flop']:.3f} "
            f"(step time {ratios['pld_over_pre_step_time']:.3f}, FLOPs {ratios['pld_over_pre_flops']:.3f})"
        )
    if "pld_over_post_time_per_flop" in ratios:
        print(
            f"PLD / Post-LN: time per executed FLOP {ratios['pld_over_post_time_per_flop']:.3f}; "
            f"Pre-LN / Post-LN {ratios['pre_over_post_time_per_flop']:.3f}"
        )
    if args.trace:
        for arm in arms.values():
            trace(arm, Path(args.trace))
    if args.json:
        some = next(iter(arms.values()))
        atomic_write_json(
            Path(args.json),
            {
                "shape": args.shape,
                "data": data,
                "set": args.set,
                "steps": args.steps,
                "n_rounds": args.rounds,
                "warmup": args.warmup,
                "threads": torch.get_num_threads(),
                "device": some.device.type,
                "precision": some.precision.name,
                "host_memory": host_memory or "malloc defaults",
                "cpu_bf16": cpu_bf16_support() or None,
                "machine": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
                "phases": PHASES,
                "arms": medians,
                "rounds": {n: a.rounds for n, a in arms.items()},
                **ratios,
                "theta_pld": pld.theta(10**6, 0.5, 1.0),
            },
        )


if __name__ == "__main__":
    main()
