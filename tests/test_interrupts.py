"""SIGINT / SIGTERM during a checkpoint write: the write finishes, then the run stops as usual
(a resumable ``last.ckpt``, exit 130) — through ``train`` and ``sweep``, in a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import TinyRun, fast
from mambapro.cli import main
from mambapro.train.checkpoint import load_checkpoint

# The child slows every torch.save down (and says when one starts), so the signal lands inside
# the write of the epoch checkpoint.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from mambapro.cli import main

    marker = Path(sys.argv[1])
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        marker.write_text("writing")
        time.sleep(1.5)
        real_save(obj, f, *args, **kwargs)

    torch.save = slow_save
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.fixture(scope="module")
def tree(tiny_run: TinyRun) -> Path:
    return tiny_run.tree  # read only: the runs write under tmp_path


def _interrupt_during_first_write(
    argv: list[str], signum: int, tmp_path: Path
) -> subprocess.CompletedProcess:
    marker = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(marker), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started writing a checkpoint"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the 1.5 s write
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_interrupted_while_saving_leaves_a_resumable_checkpoint(tree, tmp_path, signum) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "--config",
        "demo",
        "-q",
        *fast("train.epochs=2"),
        "--data-root",
        str(tree),
        "--output",
        str(run),
    ]
    done = _interrupt_during_first_write(argv, signum, tmp_path)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "RuntimeError" not in done.stderr
    assert (
        f"{signal.Signals(signum).name} received; finishing the write of {run / 'last.ckpt'}" in done.stderr
    )
    assert "resumable checkpoint saved" in done.stdout
    ckpt = load_checkpoint(run / "last.ckpt")  # whole, and a checkpoint of this run
    assert ckpt["epoch"] == 1
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []
    if signum == signal.SIGINT:  # (the checkpoint is the same after either signal)
        assert main([*argv, "--resume"]) == 0
        assert load_checkpoint(run / "last.ckpt")["epoch"] == 2


def test_sweep_interrupted_while_saving_resumes_the_point(tree, tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--config",
        "demo",
        "-q",
        *fast("train.epochs=2"),
        "--data-root",
        str(tree),
        "--output",
        str(out),
        "--set",
        "model.ma_d_state=4",
    ]
    done = _interrupt_during_first_write(argv, signal.SIGINT, tmp_path)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "RuntimeError" not in done.stderr
    (last,) = out.rglob("last.ckpt")
    assert load_checkpoint(last)["epoch"] == 1
    assert main(argv) == 0
    assert "resuming the interrupted run" in capsys.readouterr().out
    assert load_checkpoint(last)["epoch"] == 2
