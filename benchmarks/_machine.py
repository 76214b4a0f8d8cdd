"""One line describing the machine a benchmark ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(*libraries: str) -> str:
    """``machine: <cpu>, N CPU cores, <libraries>, torch (threads), numpy, load average at start``."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [f"machine: {cpu_name()}, {os.cpu_count()} CPU cores", *libraries]
    parts += [f"torch {torch.__version__} ({torch.get_num_threads()} threads)", f"numpy {np.__version__}"]
    return ", ".join(parts) + f", load average at start {load:.1f}"
