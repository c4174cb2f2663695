"""Training-step throughput and MFU of BERT pre-training: baseline vs PLD at steady state.

One full optimizer step per iteration (forward, backward, fused AdamW, grad clipping) on
synthetic batches, so the number measures the model and the optimizer, not the data reader.
PLD runs at its steady state: theta = theta_bar, fresh gates every step from the same sampler the
trainer uses. FLOPs are the analytic executed FLOPs (bertpld.flops), MFU is FLOP/s over the GPU's
dense peak for the dtype.

    python scripts/bench_gpu.py --preset base --micro-batch 256 --steps 30 --out bench.json
    python scripts/bench_gpu.py --preset tiny --device cpu --precision fp32 --steps 3   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bertpld import pld
from bertpld.config import MODEL_PRESETS, ModelConfig, TrainConfig
from bertpld.flops import peak_flops, step_flops
from bertpld.model import BertForPreTraining
from bertpld.optim import build_optimizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def synthetic_batch(cfg: ModelConfig, batch: int, seq: int, preds: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
    positions = torch.stack([torch.randperm(seq - 2, generator=g)[:preds] + 1 for _ in range(batch)])
    return {
        "input_ids": ids.to(device),
        "token_type_ids": (torch.arange(seq) >= seq // 2).long().expand(batch, seq).contiguous().to(device),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
        "mlm_positions": positions.to(device),
        "mlm_labels": torch.gather(ids, 1, positions).to(device),
        "nsp_labels": torch.randint(0, 2, (batch,), generator=g).to(device),
    }


def bench(
    mode: str, cfg: ModelConfig, args: argparse.Namespace, device: torch.device, compile_blocks: bool
) -> dict:
    torch.manual_seed(0)
    model = BertForPreTraining(cfg, nsp=True).to(device)
    if compile_blocks:
        for block in model.bert.encoder.blocks:
            block.compile(dynamic=False)
    opt = build_optimizer(model, TrainConfig(lr=1e-4), fused=device.type == "cuda")
    dtype = DTYPES[args.precision]
    batch = synthetic_batch(cfg, args.micro_batch, args.seq, args.preds, device)
    L = cfg.num_layers
    times, flops, blocks = [], [], []
    for step in range(args.warmup + args.steps):
        gates = keep = None
        if mode == "pld":
            gates, keep = pld.layer_gates(args.theta_bar, L, "paper", 0, step, 0)
        executed = L if gates is None else sum(gates)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch, gates=gates, keep_probs=keep).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            blocks.append(executed)
            flops.append(
                step_flops(cfg, args.micro_batch, args.seq, executed, args.micro_batch * args.preds, True)
            )
    total_t = sum(times)
    tokens = args.micro_batch * args.seq * len(times)
    peak = peak_flops(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else None
    result = {
        "mode": mode,
        "norm": cfg.norm,
        "compiled": compile_blocks,
        "step_s_median": statistics.median(times),
        "tokens_per_s": tokens / total_t,
        "seqs_per_s": args.micro_batch * len(times) / total_t,
        "mean_blocks": sum(blocks) / len(blocks),
        "tflops_per_s": sum(flops) / total_t / 1e12,
        "mfu": (sum(flops) / total_t / peak) if peak else None,
        "max_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base", choices=list(MODEL_PRESETS))
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--preds", type=int, default=20, help="masked positions per sequence")
    ap.add_argument("--micro-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--theta-bar", type=float, default=0.5)
    ap.add_argument("--precision", default="bf16", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", default="post,pre,pld", help="comma-separated: post, pre, pld")
    ap.add_argument("--compile", default="eager", help="comma-separated: eager, compiled")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for compiled in args.compile.split(","):
        for mode in args.modes.split(","):
            cfg = ModelConfig(
                **MODEL_PRESETS[args.preset], vocab_size=args.vocab, norm="post" if mode == "post" else "pre"
            )
            r = bench(mode, cfg, args, device, compiled == "compiled")
            results.append(r)
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            print(
                f"{mode:5s} {'compiled' if r['compiled'] else 'eager':8s} {r['tokens_per_s']:>12,.0f} tok/s  "
                f"{r['seqs_per_s']:>9,.0f} seq/s  blocks {r['mean_blocks']:.2f}  {r['tflops_per_s']:.1f} TFLOP/s  MFU {mfu}",
                flush=True,
            )
    by = {(r["mode"], r["compiled"]): r for r in results}
    for compiled in (False, True):
        if ("pld", compiled) in by and ("pre", compiled) in by:
            ratio = by[("pld", compiled)]["tokens_per_s"] / by[("pre", compiled)]["tokens_per_s"]
            print(f"PLD / Pre-LN throughput ({'compiled' if compiled else 'eager'}): {ratio:.3f}")
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
        "results": results,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
