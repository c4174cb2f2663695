"""Does skipping blocks save the time it promises? CPU forward+backward timing against FLOPs.

1. PLD at steady state vs full depth: a 12-layer x 256-hidden Pre-LN BERT (seq 128) runs
   forward+backward with every block, and with a fixed gate pattern for theta = 0.5 that keeps
   9 of 12 blocks (E = 8.75; L - floor(expected drops 3.25)). The pattern is systematic sampling of p_l: walking up the
   stack, a block is dropped each time the running sum of drop probabilities (1 - p_l) crosses an
   integer (blocks 7, 10 and 12 for L = 12), so it is a typical draw, not a hand-picked one.
   Reported: time ratio PLD / full against the analytic FLOPs ratio of the same two steps.
2. Padding removal: the same model at full depth on a batch with --pad-fraction of padding
   (default 0.15, as the demo data), padded vs `token_index` (impl.unpad), against the FLOPs ratio.
3. Forward+backward time per step for the tiny / mini / small presets.
4. With --attention (and nothing else): the CPU attention kernel forward+backward in bf16 against
   the model's choice, an fp32 round trip (bertpld.model.SelfAttention), at --batch, --seq,
   --hidden and --heads: is the round trip still the faster one?

    python scripts/bench_model.py --attention --batch 64 --seq 64 --hidden 128 --heads 2 --threads 1

Timings are medians over repetitions, with the two arms interleaved so that load from other
processes on a shared machine hits both alike. No optimizer step (it does not depend on depth).

    python scripts/bench_model.py --reps 7 --json bench_model.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bertpld import pld
from bertpld.atomic import atomic_write_json
from bertpld.config import MODEL_PRESETS, ModelConfig
from bertpld.flops import step_flops
from bertpld.model import BertForPreTraining, token_index


def systematic_gates(theta: float, num_layers: int) -> list[bool]:
    """Deterministic gates that follow p_l: drop block l when sum_{k<=l} (1 - p_k) crosses an integer."""
    gates, acc = [], 0.0
    for p in pld.keep_probs(theta, num_layers):
        before = acc
        acc += 1.0 - p
        gates.append(int(acc + 1e-9) == int(before + 1e-9))
    return gates


def make_batch(
    cfg: ModelConfig, batch: int, seq: int, preds: int, seed: int = 0, pad_fraction: float = 0.0
) -> dict[str, torch.Tensor]:
    """Random tokens; with `pad_fraction`, sequence lengths uniform in [seq (1 - 2 f), seq], so
    that the expected share of padding is f, and masked positions only on real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
    shortest = max(round(seq * (1 - 2 * pad_fraction)), preds + 1)
    lengths = torch.randint(shortest, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    positions = (torch.rand(batch, preds, generator=g) * lengths[:, None]).long()
    return dict(
        input_ids=ids * mask,
        token_type_ids=(torch.arange(seq) >= seq // 2).long().expand(batch, -1).clone(),
        attention_mask=mask,
        mlm_positions=positions,
        mlm_labels=torch.randint(0, cfg.vocab_size, (batch, preds), generator=g),
        nsp_labels=torch.randint(0, 2, (batch,), generator=g),
    )


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_step(
    model: BertForPreTraining,
    batch: dict,
    gates: list[bool] | None,
    probs: list[float] | None,
    dtype: str = "fp32",
    index: torch.Tensor | None = None,
) -> float:
    device = batch["input_ids"].device
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(
        device.type, dtype=AUTOCAST[dtype] or torch.float32, enabled=AUTOCAST[dtype] is not None
    ):
        loss = model(**batch, gates=gates, keep_probs=probs, token_index=index).loss
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _model(args: argparse.Namespace) -> tuple[ModelConfig, BertForPreTraining]:
    """The --layers x --hidden Pre-LN BERT (heads of 64), seeded."""
    cfg = ModelConfig(
        vocab_size=args.vocab_size,
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.hidden // 64,
        intermediate_size=4 * args.hidden,
        norm="pre",
    )
    torch.manual_seed(0)
    return cfg, BertForPreTraining(cfg, nsp=True).to(args.device).train()


def bench_pld(args: argparse.Namespace) -> dict:
    cfg, model = _model(args)
    batch = {k: v.to(args.device) for k, v in make_batch(cfg, args.batch, args.seq, args.preds).items()}
    gates = systematic_gates(args.theta, cfg.num_layers)
    probs = pld.keep_probs(args.theta, cfg.num_layers)
    kept = sum(gates)
    L = cfg.num_layers
    arms = {"full": (None, None), "pld": (gates, probs)}
    if args.breakdown:  # where the time goes: no block at all, and the PLD blocks without scaling
        arms |= {"none": ([False] * L, [1.0] * L), "pld_unscaled": (gates, [1.0] * L)}
    for _ in range(args.warmup):
        for g, p in arms.values():
            time_step(model, batch, g, p, args.dtype)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.reps):  # interleaved
        for name, (g, p) in arms.items():
            times[name].append(time_step(model, batch, g, p, args.dtype))
    med = {name: statistics.median(t) for name, t in times.items()}
    preds = args.batch * args.preds
    f_full = step_flops(cfg, args.batch, args.seq, L, preds, True)
    f_part = step_flops(cfg, args.batch, args.seq, kept, preds, True)
    t_full, t_part = med["full"], med["pld"]
    return {
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "batch": args.batch,
        "seq": args.seq,
        "theta": args.theta,
        "expected_blocks": pld.expected_blocks(args.theta, cfg.num_layers),
        "gates": gates,
        "median_s": med,
        "min_s": {name: min(t) for name, t in times.items()},
        "time_ratio_of_min": min(times["pld"]) / min(times["full"]),
        "all_s": times,
        "non_block_flops_share": step_flops(cfg, args.batch, args.seq, 0, preds, True) / f_full,
        "full_s": t_full,
        "pld_s": t_part,
        "time_ratio": t_part / t_full,
        "flops_ratio": f_part / f_full,
        "relative_gap": (t_part / t_full) / (f_part / f_full) - 1.0,
        "full_gflop_per_s": f_full / t_full / 1e9,
    }


def bench_unpad(args: argparse.Namespace) -> dict:
    cfg, model = _model(args)
    cpu_batch = make_batch(cfg, args.batch, args.seq, args.preds, pad_fraction=args.pad_fraction)
    batch = {k: v.to(args.device) for k, v in cpu_batch.items()}
    index = token_index(cpu_batch["attention_mask"]).to(args.device)
    arms = {"padded": None, "unpadded": index}
    for _ in range(args.warmup):
        for i in arms.values():
            time_step(model, batch, None, None, args.dtype, i)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.reps):  # interleaved
        for name, i in arms.items():
            times[name].append(time_step(model, batch, None, None, args.dtype, i))
    med = {name: statistics.median(t) for name, t in times.items()}
    preds, L = args.batch * args.preds, cfg.num_layers
    flops_ratio = step_flops(cfg, args.batch, args.seq, L, preds, True, tokens=len(index)) / step_flops(
        cfg, args.batch, args.seq, L, preds, True
    )
    return {
        "real_token_fraction": len(index) / cpu_batch["attention_mask"].numel(),
        "median_s": med,
        "all_s": times,
        "time_ratio": med["unpadded"] / med["padded"],
        "flops_ratio": flops_ratio,
    }


def bench_presets(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in args.presets.split(","):
        cfg = ModelConfig(**MODEL_PRESETS[name], vocab_size=args.vocab_size, norm="pre")
        torch.manual_seed(0)
        model = BertForPreTraining(cfg, nsp=True).to(args.device).train()
        batch = {k: v.to(args.device) for k, v in make_batch(cfg, args.batch, args.seq, args.preds).items()}
        for _ in range(args.warmup):
            time_step(model, batch, None, None, args.dtype)
        times = [time_step(model, batch, None, None, args.dtype) for _ in range(args.reps)]
        flops = step_flops(cfg, args.batch, args.seq, cfg.num_layers, args.batch * args.preds, True)
        t = statistics.median(times)
        rows.append(
            {
                "preset": name,
                "step_s": t,
                "tokens_per_s": args.batch * args.seq / t,
                "gflop_per_s": flops / t / 1e9,
            }
        )
    return rows


def bench_attention(args: argparse.Namespace) -> dict:
    """SDPA forward+backward on (batch, heads, seq, hidden / heads) bf16 inputs with a padding
    mask: in bf16, and as an fp32 round trip (cast, attend, cast back), interleaved, medians."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    hs = args.hidden // args.heads
    qkv = [torch.randn(args.batch, args.heads, args.seq, hs, dtype=torch.bfloat16) for _ in range(3)]
    mask = torch.ones(args.batch, 1, 1, args.seq, dtype=torch.bool)
    mask[: args.batch // 2, ..., args.seq * 3 // 4 :] = False  # some padding, as real batches have

    def run(fp32: bool) -> float:
        q, k, v = (t.clone().requires_grad_() for t in qkv)
        t0 = time.perf_counter()
        if fp32:
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y.float().sum().backward()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"bf16": [], "fp32_round_trip": []}
    for i in range(args.warmup + args.reps):
        for name, fp32 in (("bf16", False), ("fp32_round_trip", True)):
            dt = run(fp32)
            if i >= args.warmup:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "shape": {"batch": args.batch, "heads": args.heads, "seq": args.seq, "head_size": hs},
        "median_s": med,
        "bf16_over_fp32_round_trip": med["bf16"] / med["fp32_round_trip"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "reps": args.reps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--preds", type=int, default=20, help="MLM positions per sequence")
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--theta", type=float, default=0.5, help="steady-state theta (theta_bar)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--breakdown", action="store_true", help="also time zero blocks and unscaled PLD")
    ap.add_argument(
        "--pad-fraction", type=float, default=0.15, help="padding share for the unpad arm (0: skip)"
    )
    ap.add_argument("--presets", default="tiny,mini,small", help="comma-separated presets to time")
    ap.add_argument("--device", default="cpu", help="cpu (the issue's benchmark) or cuda")
    ap.add_argument("--dtype", default="fp32", choices=sorted(AUTOCAST), help="autocast precision")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    ap.add_argument(
        "--attention", action="store_true", help="only the CPU attention: bf16 vs fp32 round trip"
    )
    ap.add_argument("--heads", type=int, default=0, help="attention heads for --attention (0: hidden / 64)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attention:
        args.heads = args.heads or max(1, args.hidden // 64)
        a = bench_attention(args)
        m = a["median_s"]
        print(
            f"attention fwd+bwd {a['shape']}, {a['threads']} thread(s): bf16 {m['bf16'] * 1e3:.2f} ms, "
            f"fp32 round trip {m['fp32_round_trip'] * 1e3:.2f} ms: bf16 is {a['bf16_over_fp32_round_trip']:.2f}x"
        )
        if args.json:
            atomic_write_json(args.json, a)
        return

    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(args.device)}")
    r = bench_pld(args)
    kept = "".join("1" if g else "0" for g in r["gates"])
    print(
        f"{r['layers']}x{r['hidden']} seq {r['seq']} batch {r['batch']}, theta {r['theta']}: gates {kept} "
        f"({sum(r['gates'])} of {r['layers']}, E = {r['expected_blocks']:.2f}), {args.device} {args.dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  full depth  {r['full_s'] * 1e3:8.1f} ms/step  ({r['full_gflop_per_s']:.1f} GFLOP/s)")
    print(f"  PLD pattern {r['pld_s'] * 1e3:8.1f} ms/step")
    print(
        f"  time ratio {r['time_ratio']:.4f} (medians; of minima {r['time_ratio_of_min']:.4f})  "
        f"FLOPs ratio {r['flops_ratio']:.4f}  gap {100 * r['relative_gap']:+.2f}%"
    )
    if args.breakdown:
        m = r["median_s"]
        per_block = (m["full"] - m["none"]) / r["layers"]
        print(
            f"  breakdown: no blocks {m['none'] * 1e3:.1f} ms ({100 * m['none'] / m['full']:.1f}% of the step, "
            f"{100 * r['non_block_flops_share']:.1f}% of its FLOPs), per block {per_block * 1e3:.1f} ms, "
            f"PLD without 1/p scaling {m['pld_unscaled'] * 1e3:.1f} ms"
        )
    u = bench_unpad(args) if args.pad_fraction > 0 else None
    if u:
        m = u["median_s"]
        print(
            f"  padding removal ({100 * (1 - u['real_token_fraction']):.0f}% padding): padded {m['padded'] * 1e3:.1f} ms, "
            f"unpadded {m['unpadded'] * 1e3:.1f} ms; time ratio {u['time_ratio']:.4f}  FLOPs ratio {u['flops_ratio']:.4f}"
        )
    rows = bench_presets(args) if args.presets else []
    for row in rows:
        print(
            f"  {row['preset']:6s} fwd+bwd {row['step_s'] * 1e3:8.1f} ms/step  "
            f"{row['tokens_per_s']:9.0f} tokens/s  {row['gflop_per_s']:.1f} GFLOP/s"
        )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "pld": r,
                "unpad": u,
                "presets": rows,
                "device": args.device,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
            },
        )


if __name__ == "__main__":
    main()
