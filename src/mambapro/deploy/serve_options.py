"""The options of ``mambapro serve`` (where it listens, what it accepts): defaults and limits.

One place for them, torch-free, so the CLI takes its defaults from here and refuses a bad option
before it loads the model, and :mod:`mambapro.deploy.serve` enforces the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

from mambapro.errors import UserError

__all__ = ["MAX_K", "ServeOptions"]

#: The most matches one search may ask for (``-k`` and a request's ``k``).
MAX_K = 1000


@dataclass(frozen=True)
class ServeOptions:
    """How the search service runs; each field is the CLI option of the same name.

    Args:
        host: address to bind; loopback by default (the service has no authentication).
        port: TCP port, 1..65535.
        k: matches per query when a request gives none, 1..:data:`MAX_K`.
        max_upload_mb: largest accepted upload per image file, in MiB (at least one byte).
        max_batch: most waiting queries embedded together in one model call.

    Raises:
        UserError: a value out of range, named with its option.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    k: int = 10
    max_upload_mb: float = 10.0
    max_batch: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: must be in 1..65535")
        if not 1 <= self.k <= MAX_K:
            raise UserError(f"-k {self.k}: must be in 1..{MAX_K}")
        if not self.max_upload_mb * 2**20 >= 1:  # also refuses NaN
            raise UserError(f"--max-upload-mb {self.max_upload_mb}: must be > 0 (at least one byte)")
        if self.max_batch < 1:
            raise UserError(f"--max-batch {self.max_batch}: must be at least 1")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")
