"""Everything rank-aware goes through here: init, rank queries, rank-0 printing, collectives.

bertpld does not wrap the model in DistributedDataParallel. With PLD every rank draws the same
gates from the step seed (see `bertpld.pld.sample_gates`), so all ranks compute gradients for the
same set of parameters; `GradientReducer` averages exactly those, once per optimizer step, in flat
buckets launched while the last accumulation micro-step's backward is still running (as DDP
overlaps communication with computation). DDP itself would need `find_unused_parameters=True`
(a graph traversal every step) to survive dropped blocks, and would all-reduce on every micro-step
unless told otherwise. See scripts/bench_train.py and scripts/bench_ddp.py for the measured costs.

Host-side agreements (stop decisions, logged sums) go through a separate gloo group on CPU
tensors, so they never wait for the GPU: with NCCL alone, every such scalar would be a device
round trip that drains the GPU's queue once per step.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

_BUCKET_BYTES = 32 * 1024 * 1024
_control: dist.ProcessGroup | None = None  # gloo, for CPU scalars; made by init()


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

    NCCL on GPU, gloo on CPU, plus a gloo group for host values (`all_reduce_max`,
    `all_reduce_sum_host`). Safe to call twice.
    """
    global _control
    timeout = datetime.timedelta(minutes=30)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank())
        backend = "nccl" if device_type == "cuda" else "gloo"
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            # torchrun keeps its key-value store across the restarts of a job: without a prefix of
            # its own, a restarted rank can read the address a rank of the previous attempt
            # published and fail to connect ("Connection refused"), a race seen in tests.
            store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
            store = dist.PrefixStore(f"bertpld-attempt-{attempt}", store)
            dist.init_process_group(
                backend=backend, store=store, rank=rank_, world_size=world, timeout=timeout
            )
    if is_distributed() and _control is None:  # also on gloo, and for a group made by the caller
        _control = dist.new_group(backend="gloo", timeout=timeout)


def shutdown() -> None:
    global _control
    if is_distributed():
        dist.destroy_process_group()
    _control = None


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
    """Max of a Python float over ranks (used to agree on stop decisions; no GPU involved)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return float(t)


def all_reduce_sum_host(t: torch.Tensor) -> torch.Tensor:
    """Sum of a CPU tensor over ranks, in place and returned (no GPU involved)."""
    if is_distributed():
        dist.all_reduce(t, group=_control)
    return t


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GradientReducer:
    """Averages gradients over ranks, overlapping the all-reduce with the last backward.

    Per optimizer step:

        reducer.expect(params)   before the last micro-step's backward: the parameters that
                                 backward will reach (the model's minus PLD's dropped blocks)
        loss.backward()          a hook counts each gradient in as autograd finishes it; a
                                 bucket is launched (async all-reduce) once it is complete
        reducer.finish()         launch what is left, wait, write the averages back

    The gradients to reduce are the ones that exist after that backward: those it reaches plus
    those earlier micro-steps left (a block kept before but dropped now). Every rank derives the
    same list from the shared gates, cuts it into the same ~32 MiB buckets in reverse parameter
    order (roughly the order backward produces gradients) and launches them strictly in bucket
    order, so all ranks issue the same collectives in the same order. A parameter that will get
    no gradient on any rank is never reduced, so PLD's dropped blocks cost nothing and cannot hang.
    Without `expect` (or in one process) `finish` does all the work after backward.

    A gradient that `expect` did not announce, or an announced one that never came, is an error
    raised by `finish` (on every rank alike: the lists are the same everywhere). Buckets are copies
    (one extra gradient-sized buffer until `finish`), made on the stream that produced the gradients:
    forward and backward must run on the default stream, as the trainer's do.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.distributed = is_distributed()
        self._reset()
        if self.distributed:
            for p in self.params:
                p.register_post_accumulate_grad_hook(self._on_grad)

    def _reset(self) -> None:
        self.buckets: list[list[torch.nn.Parameter]] = []
        self.bucket_of: dict[int, int] = {}  # id(param) -> bucket index
        self.missing: list[int] = []  # gradients each bucket still waits for
        self.launched: list[tuple[dist.Work, torch.Tensor, list[torch.nn.Parameter]]] = []
        self.error = ""  # set by a hook, raised by finish()

    def expect(self, reached: Iterable[torch.nn.Parameter]) -> None:
        """Arm the hooks for the coming backward, which computes gradients for `reached`."""
        if not self.distributed:
            return
        if self.buckets:
            raise RuntimeError("GradientReducer: expect() called again before finish()")
        reached_ids = {id(p) for p in reached}
        self._plan([p for p in self.params if id(p) in reached_ids or p.grad is not None])
        for p in self.params:
            if id(p) in self.bucket_of and id(p) not in reached_ids:
                self.missing[self.bucket_of[id(p)]] -= 1  # final already (earlier micro-steps)
        self._launch_ready()

    def finish(self) -> None:
        """Average every existing gradient over ranks (after the last backward), in place."""
        if not self.distributed:
            return
        try:
            if self.error:
                raise RuntimeError(f"GradientReducer: {self.error}")
            if not self.buckets:  # not armed: plan from the gradients that exist now
                self._plan([p for p in self.params if p.grad is not None])
            for b in range(len(self.launched), len(self.buckets)):
                self._launch(b)
            for work, flat, bucket in self.launched:
                work.wait()
                offset = 0
                for p in bucket:
                    p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
        finally:
            for work, _, _ in self.launched:  # after an error: let no collective outlive its buffer
                work.wait()
            self._reset()

    def _plan(self, params: list[torch.nn.Parameter]) -> None:
        self._reset()
        size = 0
        for p in reversed(params):
            if (
                not self.buckets
                or size + p.numel() * p.element_size() > _BUCKET_BYTES
                or p.dtype != self.buckets[-1][0].dtype
            ):
                self.buckets.append([])
                self.missing.append(0)
                size = 0
            self.buckets[-1].append(p)
            self.bucket_of[id(p)] = len(self.buckets) - 1
            self.missing[-1] += 1
            size += p.numel() * p.element_size()

    def _on_grad(self, p: torch.nn.Parameter) -> None:
        if not self.buckets:  # not armed (an earlier accumulation micro-step)
            return
        b = self.bucket_of.get(id(p))
        if b is None or b < len(self.launched):
            self.error = self.error or "a parameter got a gradient that expect() did not announce"
            return
        self.missing[b] -= 1
        self._launch_ready()

    def _launch_ready(self) -> None:
        while len(self.launched) < len(self.buckets) and self.missing[len(self.launched)] == 0:
            self._launch(len(self.launched))

    def _launch(self, b: int) -> None:
        bucket = self.buckets[b]
        if any(p.grad is None for p in bucket):  # a bug in the caller's `reached` list, on every rank
            raise RuntimeError("GradientReducer: a parameter announced by expect() got no gradient")
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        flat /= world_size()
        self.launched.append((dist.all_reduce(flat, async_op=True), flat, bucket))


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
