"""impl.precision: bf16 on CPUs with native bf16 matmuls, fp32 elsewhere, and the reason said."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertpld.device import cpu_bf16_support, resolve_precision
from bertpld.errors import BertpldError

CPU = torch.device("cpu")

WHERE = """
import sys, torch
from bertpld.device import keep_host_memory
said = keep_host_memory() if sys.argv[1] == "keep" else "-"
x = torch.ones(10 << 20)  # 40 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
inside = any(int(lo, 16) <= x.data_ptr() < int(hi, 16) for lo, hi in (r.split("-") for r in heap))
print(said.split()[0], "heap" if inside else "mapping")
"""


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected", "named"),
    [
        (True, False, torch.bfloat16, "AMX"),
        (False, True, torch.bfloat16, "AVX512-BF16"),
        (True, True, torch.bfloat16, "AMX"),
        (False, False, torch.float32, "no native bf16"),
    ],
)
def test_auto_on_cpu_follows_the_hardware(monkeypatch, amx, avx512_bf16, expected, named) -> None:
    # unpatched, on Linux x86: the answer agrees with the CPU's flags (torch answers the queries asked)
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() in ("x86_64", "AMD64") and cpuinfo.is_file():
        flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M).group(1).split())
        native = bool(flags & {"amx_tile", "avx512_bf16"})
        assert (cpu_bf16_support() in ("AMX", "AVX512-BF16")) if native else cpu_bf16_support() == ""
    # the queries are patched where torch has them: a name this torch lacks fails here (raising)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    prec = resolve_precision("auto", CPU)
    assert prec.dtype == expected
    assert prec.name == ("bf16" if expected == torch.bfloat16 else "fp32")
    assert named in prec.reason and prec.reason.startswith("auto")


def test_a_torch_without_the_queries_stays_in_fp32(monkeypatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert cpu_bf16_support() == ""
    assert resolve_precision("auto", CPU).dtype == torch.float32


def test_explicit_precision_is_taken_as_asked(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    bf16 = resolve_precision("bf16", CPU)  # slow without hardware support, but asked for
    assert bf16.dtype == torch.bfloat16 and bf16.reason == "impl.precision=bf16"
    assert resolve_precision("fp32", CPU).dtype == torch.float32
    with pytest.raises(BertpldError, match=r"^impl.precision: fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_auto_on_gpu_is_bf16() -> None:
    prec = resolve_precision("auto", torch.device("cuda", 0))  # a device object; nothing runs on it
    assert prec.dtype == torch.bfloat16 and prec.reason == "auto: bf16 on GPU"


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_kept_host_memory_puts_large_tensors_on_the_heap() -> None:
    """glibc gives a 40 MiB block its own mapping, unmapped (and faulted in again, zero-filled, on
    the next step) when freed; with keep_host_memory it comes from the heap, which is kept."""
    said = {}
    for mode in ("keep", "default"):
        done = subprocess.run([sys.executable, "-c", WHERE, mode], capture_output=True, text=True, check=True)
        said[mode] = done.stdout.split()
    assert said == {"keep": ["glibc", "heap"], "default": ["-", "mapping"]}
