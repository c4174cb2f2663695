"""Where and in which precision to compute, from the `impl` config section."""

from __future__ import annotations

import torch

from bertpld import distributed as dist
from bertpld.errors import BertpldError


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


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """impl.precision -> the autocast dtype ('auto': bf16 on GPU, fp32 on CPU)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise BertpldError("impl.precision: fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
