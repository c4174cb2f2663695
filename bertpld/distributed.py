"""Everything rank-aware goes through here: init, rank queries, rank-0 printing, collectives.

bertpld does not wrap the model in DistributedDataParallel. With PLD every rank draws the same
gates from the step seed (see `bertpld.pld.sample_gates`), so all ranks compute gradients for the
same set of parameters; `all_reduce_grads` averages exactly those, once per optimizer step (after
the last accumulation micro-step), in a few flat buckets. DDP would need
`find_unused_parameters=True` (a graph traversal every step) to survive dropped blocks, and would
all-reduce on every micro-step unless told otherwise. See scripts/bench_train.py for the measured cost.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

_BUCKET_BYTES = 32 * 1024 * 1024


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device_type: str) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise.

    NCCL on GPU, gloo on CPU. Safe to call twice.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over ranks (returned; the input is reduced in place)."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size()
    return values


def all_reduce_max(value: float) -> float:
    """Max of a Python float over ranks (used to agree on stop decisions)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over ranks, in place.

    Parameters whose `.grad` is None (blocks that PLD dropped on every micro-step) are skipped;
    every rank skips the same ones because the gates are drawn from the shared step seed.
    Gradients are packed into flat buckets so that a step costs a few collectives, not one per
    tensor; all buckets are launched asynchronously and awaited together.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    n = world_size()
    pending = []
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        flat /= n
        pending.append((dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True), flat, bucket))
    for work, flat, bucket in pending:
        work.wait()
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def check_replicas_equal(module: torch.nn.Module) -> None:
    """Raise if the ranks' copies of `module` differ (they must stay bit-identical).

    A position-weighted float64 checksum of every parameter is gathered from all ranks; one
    collective, run at checkpoints and at the end of training.
    """
    if not is_distributed():
        return
    total = torch.zeros((), dtype=torch.float64, device=next(module.parameters()).device)
    for i, p in enumerate(module.parameters()):
        total += p.detach().double().sum() * (i + 1)
    sums = [torch.zeros_like(total) for _ in range(world_size())]
    dist.all_gather(sums, total)
    values = [float(t) for t in sums]
    if any(v != values[0] for v in values):
        raise RuntimeError(f"model replicas diverged across ranks (parameter checksums {values})")


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    out: list[list[torch.Tensor]] = []
    cur: list[torch.Tensor] = []
    size = 0
    for g in grads:
        if cur and (size + g.numel() * g.element_size() > _BUCKET_BYTES or g.dtype != cur[0].dtype):
            out.append(cur)
            cur, size = [], 0
        cur.append(g)
        size += g.numel() * g.element_size()
    if cur:
        out.append(cur)
    return out


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
