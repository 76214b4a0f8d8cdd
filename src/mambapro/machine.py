"""What in the machine can change a run's numbers, torch-free: the CPU model and its vector
extensions (``/proc/cpuinfo``), the core count, and, when torch is loaded, its CPU kernel level,
threads and GPU. Recorded in every run's ``meta.json`` and printed by ``mambapro doctor``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "cpu_info", "machine_info"]


#: CPU flags that decide which vector kernels run, and with them the order of floating-point
#: sums: the same code gives slightly different numbers on an AVX-512 and an AVX2-only CPU.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


def cpu_info() -> tuple[str | None, set[str]]:
    """The CPU model and flags of Linux's ``/proc/cpuinfo`` (None and nothing elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def machine_info() -> dict[str, Any]:
    """What in the machine can change a run's numbers: the CPU model, its instruction-set flags
    among :data:`ISA_FLAGS`, the CPU count, and, when torch is loaded, its CPU kernel level
    (``AVX512``, ``AVX2``, ...), intra-op threads and the GPU (None without CUDA)."""
    model, flags = cpu_info()
    info: dict[str, Any] = {
        "cpu": model or platform.processor() or platform.machine(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # only when torch is already loaded: this module is torch-free
    if torch is not None:
        try:
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except AttributeError:  # older torch
            info["torch_cpu_capability"] = None
        info["torch_threads"] = torch.get_num_threads()
        cuda = torch.cuda.is_available()
        info["gpu"] = torch.cuda.get_device_name() if cuda else None
        info["cuda"] = torch.version.cuda if cuda else None
    return info
