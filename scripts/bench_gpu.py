"""Training-step throughput and MFU of BERT pre-training: baseline vs PLD at steady state.

One full optimizer step per iteration (forward, backward, fused AdamW, grad clipping) on
synthetic batches, so the number measures the model and the optimizer, not the data reader.
PLD runs at its steady state: theta = theta_bar, fresh gates every step from the same sampler the
trainer uses. FLOPs are the analytic executed FLOPs (bertpld.flops), MFU is FLOP/s over the GPU's
dense peak for the dtype.

Modes: post, pre (full depth), pld, and heads: every block dropped, i.e. the part of a step PLD
can never skip (embeddings, MLM/NSP heads and loss, optimizer); its share of the pre step bounds
PLD's speed-up.

Under torchrun (more than one rank) every step also averages the gradients with the trainer's
GradientReducer, either overlapped with backward (`--overlap on`, what `bertpld pretrain` does)
or after it (`off`), and reports the communication time left exposed after backward.

    python scripts/bench_gpu.py --preset base --micro-batch 256 --steps 30 --out bench.json
    python scripts/bench_gpu.py --preset tiny --device cpu --precision fp32 --steps 3   # smoke test
    torchrun --standalone --nproc-per-node 8 scripts/bench_gpu.py --modes pre,pld --overlap on,off
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bertpld import distributed as dist
from bertpld import pld
from bertpld.atomic import atomic_write_json
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
    mode: str,
    cfg: ModelConfig,
    args: argparse.Namespace,
    device: torch.device,
    compile_blocks: bool,
    overlap: bool = True,
) -> dict:
    torch.manual_seed(0)
    model = BertForPreTraining(cfg, nsp=True).to(device)
    if compile_blocks:
        for block in model.bert.encoder.blocks:
            block.compile(dynamic=False)
    opt = build_optimizer(model, TrainConfig(lr=1e-4), fused=device.type == "cuda")
    reducer = dist.GradientReducer(model.parameters())
    dtype = DTYPES[args.precision]
    batch = synthetic_batch(cfg, args.micro_batch, args.seq, args.preds, device)
    L = cfg.num_layers

    def step_once(step: int) -> tuple[int, float]:
        """One optimizer step; returns (blocks executed, communication time left after backward)."""
        gates = keep = None
        if mode == "pld":
            gates, keep = pld.layer_gates(args.theta_bar, L, "paper", 0, step)
        elif mode == "heads":
            gates, keep = [False] * L, [1.0] * L
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch, gates=gates, keep_probs=keep).loss
        if overlap:
            reducer.expect(model.reached_parameters(gates))
        loss.backward()
        exposed = 0.0
        if dist.is_distributed():
            _sync(device)
            t = time.perf_counter()
            reducer.finish()
            _sync(device)
            exposed = time.perf_counter() - t
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return (L if gates is None else sum(gates)), exposed

    times, flops, blocks, exposed = [], [], [], []
    for step in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        executed, t_reduce = step_once(step)
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            blocks.append(executed)
            exposed.append(t_reduce)
            flops.append(
                step_flops(cfg, args.micro_batch, args.seq, executed, args.micro_batch * args.preds, True)
            )
    if args.profile and dist.is_main():
        _profile(f"{mode}-{'compiled' if compile_blocks else 'eager'}", step_once, Path(args.profile), device)
    total_t = sum(times)
    tokens = args.micro_batch * args.seq * len(times)
    peak = peak_flops(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else None
    result = {
        "mode": mode,
        "norm": cfg.norm,
        "compiled": compile_blocks,
        "world_size": dist.world_size(),
        "overlap": overlap if dist.is_distributed() else None,
        "step_s_median": statistics.median(times),
        "exposed_reduce_s_median": statistics.median(exposed) if dist.is_distributed() else None,
        "tokens_per_s": tokens / total_t,
        "seqs_per_s": args.micro_batch * len(times) / total_t,
        "mean_blocks": sum(blocks) / len(blocks),
        "tflops_per_s": sum(flops) / total_t / 1e12,
        "mfu": (sum(flops) / total_t / peak) if peak else None,
        "max_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
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
    ap.add_argument("--modes", default="post,pre,pld", help="comma-separated: post, pre, pld, heads")
    ap.add_argument("--compile", default="eager", help="comma-separated: eager, compiled")
    ap.add_argument("--overlap", default="on", help="under torchrun, comma-separated: on, off")
    ap.add_argument("--profile", default="", help="also write a kernel profile per mode into this directory")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    device = torch.device(args.device)
    dist.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
        torch.backends.cuda.matmul.allow_tf32 = True
    overlaps = [o == "on" for o in args.overlap.split(",")] if dist.is_distributed() else [True]
    results = []
    for compiled in args.compile.split(","):
        for mode in args.modes.split(","):
            for overlap in overlaps:
                norm = "post" if mode == "post" else "pre"
                cfg = ModelConfig(**MODEL_PRESETS[args.preset], vocab_size=args.vocab, norm=norm)
                r = bench(mode, cfg, args, device, compiled == "compiled", overlap)
                if device.type == "cuda":  # the model is gone with bench(): start the next one clean
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                results.append(r)
                dist.print0(_line(r))
                _write(args, device, results)  # after every mode: a timeout keeps what was measured
    by = {(r["mode"], r["compiled"], r["overlap"]): r for r in results}
    for (mode, compiled, overlap), r in by.items():
        pre = by.get(("pre", compiled, overlap))
        if mode in ("pld", "heads") and pre:
            what = "throughput" if mode == "pld" else "step-time share (the part PLD cannot skip)"
            value = (
                r["tokens_per_s"] / pre["tokens_per_s"]
                if mode == "pld"
                else r["step_s_median"] / pre["step_s_median"]
            )
            dist.print0(f"{mode} / pre {what}, {'compiled' if compiled else 'eager'}: {value:.3f}")
    dist.shutdown()


def _write(args: argparse.Namespace, device: torch.device, results: list[dict]) -> None:
    if not (args.out and dist.is_main()):
        return
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
        "results": results,
    }
    atomic_write_json(args.out, info)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile(name: str, step_once, out: Path, device: torch.device) -> None:
    """Kernel-level profile of 3 more steps: the top operators by self time, as a text table."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for step in range(3):
            step_once(1_000_000 + step)
        _sync(device)
    out.mkdir(parents=True, exist_ok=True)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    (out / f"{name}.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=40))


def _line(r: dict) -> str:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    line = (
        f"{r['mode']:5s} {'compiled' if r['compiled'] else 'eager':8s} {r['tokens_per_s']:>12,.0f} tok/s  "
        f"{r['seqs_per_s']:>9,.0f} seq/s  blocks {r['mean_blocks']:.2f}  {r['tflops_per_s']:.1f} TFLOP/s  MFU {mfu}"
    )
    if r["overlap"] is not None:
        line += f"  overlap {'on ' if r['overlap'] else 'off'}  exposed reduce {r['exposed_reduce_s_median'] * 1e3:.1f} ms"
        line += f"  step {r['step_s_median'] * 1e3:.1f} ms"
    return line


if __name__ == "__main__":
    main()
