"""Runs ``mambapro`` command lines in forked children of one process that imported torch once.

Most of a short CLI run is the start of Python and the import of torch and the package (seconds
on two cores); a command that is refused costs milliseconds after that. This process pays the
imports once, then serves requests, one JSON line each on stdin (``argv``, ``cwd``, ``stdout``
and ``stderr``: files for the child's output, ``env``: variables to set), by forking a child that runs
:func:`mambapro.cli.main` as ``python -m mambapro.cli`` would, and answers the child's exit
status as one line on stdout. Each child is a process of its own (exit status, signals, global
state and file descriptors as in a real run); this process runs no torch operation, so the
children's OpenMP thread pools start clean (libgomp does not survive a fork after it started).

:class:`Zygote` starts one (``python cli_zygote.py``, after a command prefix such as ``setpriv``
that its children inherit) and runs command lines through it. A child that runs longer than
``TIMEOUT_S`` is killed (SIGALRM: status -14).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

#: What the commands import when they run, loaded once here (optional stacks excluded: they
#: may start threads, and a fork of a threaded process may inherit a held lock).
PRELOAD = (
    "torch",
    "mambapro.cli",
    "mambapro.retrieval.testing",
    "mambapro.retrieval.search",
    "mambapro.retrieval.index",
    "mambapro.retrieval.features",
    "mambapro.train.trainer",
    "mambapro.train.sweep",
    "mambapro.train.demo",
    "mambapro.deploy.export",
    "mambapro.reports.params",
)
TIMEOUT_S = 300


def _child(request: dict) -> int:
    from mambapro.cli import main

    signal.alarm(TIMEOUT_S)
    os.chdir(request["cwd"])
    os.environ.update(request.get("env", {}))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the requests are this process's, not the command's
    os.dup2(os.open(request["stdout"], flags, 0o600), 1)
    os.dup2(os.open(request["stderr"], flags, 0o600), 2)
    sys.argv = ["mambapro", *request["argv"]]
    try:
        return main(request["argv"])
    except SystemExit as exc:  # argparse's usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


class Zygote:
    """A running :func:`serve` process; ``zygote(argv, cwd)`` runs ``mambapro ARGV`` in ``cwd``
    and returns its :class:`subprocess.CompletedProcess` (exit status, stdout, stderr). Not
    thread-safe: one per thread."""

    def __init__(self, prefix: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the CLI zygote did not start (status {self.proc.wait()})")

    def __call__(self, argv: list[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {
                "argv": argv,
                "cwd": str(cwd or Path.cwd()),
                "stdout": str(out),
                "stderr": str(err),
                "env": self.env,
            }
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            status = int(self.proc.stdout.readline())
            texts = [f.read_text() if f.exists() else "" for f in (out, err)]
            return subprocess.CompletedProcess(["mambapro", *argv], status, *texts)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
