"""Low-level operators: the selective scan (Mamba S6) in pure PyTorch, with Triton and mamba-ssm backends."""

from mambapro.ops.selective_scan import (
    SCAN_BACKENDS,
    auto_candidates,
    resolve_backend,
    select_backend,
    selective_scan,
    selective_scan_macs,
)

__all__ = [
    "SCAN_BACKENDS",
    "auto_candidates",
    "resolve_backend",
    "select_backend",
    "selective_scan",
    "selective_scan_macs",
]
