"""Where and in which precision to compute, from the `impl` config section."""

from __future__ import annotations

import ctypes
import platform
from typing import NamedTuple

import torch

from bertpld import distributed as dist
from bertpld.errors import BertpldError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision(NamedTuple):
    """The autocast dtype a run computes in, and why it was chosen (for the run header and env.json)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return next(k for k, v in DTYPES.items() if v == self.dtype)


def resolve_device(name: str) -> torch.device:
    """impl.device -> a torch device ('auto': this rank's GPU if there is one, else the CPU)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertpldError(f"impl.device: {name} asked for, but no CUDA device is available")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", dist.local_rank())
    return dev


def cpu_bf16_support() -> str:
    """The native bf16 matmul instructions of this CPU ('AMX', 'AVX512-BF16'), or '' if none.

    Asked of torch itself (the same queries its own kernels and inductor use); on CPUs other than
    x86, where torch has no such query, the answer is '' and runs stay in fp32. bf16 without
    hardware support is emulated and slower than fp32.
    """
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return ""


def resolve_precision(name: str, device: torch.device) -> Precision:
    """impl.precision -> the autocast dtype, with the reason.

    'auto': bf16 on a GPU; on a CPU bf16 where it has native bf16 matmuls (AMX or AVX512-BF16),
    fp32 elsewhere. An explicit 'fp32', 'bf16' or 'fp16' is taken as asked (fp16 only on CUDA).
    """
    if name == "auto":
        if device.type == "cuda":
            return Precision(torch.bfloat16, "auto: bf16 on GPU")
        native = cpu_bf16_support()
        if native:
            return Precision(torch.bfloat16, f"auto: this CPU has native bf16 matmuls ({native})")
        return Precision(torch.float32, "auto: this CPU has no native bf16 matmuls (no AMX or AVX512-BF16)")
    if name == "fp16" and device.type != "cuda":
        raise BertpldError("impl.precision: fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    if name not in DTYPES:
        raise BertpldError(f"impl.precision: got {name!r}, expected auto, fp32, bf16 or fp16")
    return Precision(DTYPES[name], f"impl.precision={name}")


# glibc's mallopt parameters (malloc.h) and the value bertpld gives both
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HOST_MEMORY_KEPT = 1 << 30


def keep_host_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse; returns what was set ('' where nothing was).

    torch's CPU allocator has no cache: every tensor is a malloc and every free a free. glibc hands
    a block above its mmap threshold (dynamic, 128 KiB to 32 MiB) its own mapping, unmapped again
    when freed, and trims the heap's free top back to the OS; the next step then page-faults the
    same activations in again, zero-filled by the kernel: ~8,000 minor faults per demo step on the
    project's 2-core VM (scripts/bench_host.py, docs/measurements/cpu_host_step_costs_*.json).
    Both thresholds at 1 GiB keep those pages in the process (the price: its resident memory stays
    at its peak). Process-wide; with jemalloc or tcmalloc preloaded this changes nothing they use.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return ""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return ""
    if mallopt(_M_MMAP_THRESHOLD, HOST_MEMORY_KEPT) and mallopt(_M_TRIM_THRESHOLD, HOST_MEMORY_KEPT):
        return "glibc malloc: mmap and trim thresholds 1 GiB"
    return ""
