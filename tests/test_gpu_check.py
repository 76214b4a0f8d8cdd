"""``benchmarks/gpu_check.sh`` parses, and on a machine without a GPU says so and exits 0 at once.

Not marked ``gpu``: this is the CPU half of the script's contract (CI runs it). The GPU half, its
stages, runs only where ``torch.cuda.is_available()``; there this test is skipped rather than
starting an eight-minute benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def test_gpu_check_parses() -> None:
    proc = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run its stages")
def test_gpu_check_without_gpu_exits_0_quickly(tmp_path: Path) -> None:
    # the test's own interpreter (the venv's), whatever PATH says; run from elsewhere to check
    # that the script finds the repository itself
    env = {**os.environ, "PYTHON": sys.executable}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [BASH, str(SCRIPT)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU here" in proc.stdout and "torch.cuda.is_available() is False" in proc.stdout, proc.stdout
    assert "===" not in proc.stdout  # no stage started
    assert took < 30, f"took {took:.1f} s"
    assert not list(tmp_path.iterdir())  # wrote nothing where it was started
