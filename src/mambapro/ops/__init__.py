"""Low-level operators: the selective scan (Mamba S6) in pure PyTorch."""

from mambapro.ops.selective_scan import SCAN_BACKENDS, selective_scan, selective_scan_macs

__all__ = ["SCAN_BACKENDS", "selective_scan", "selective_scan_macs"]
