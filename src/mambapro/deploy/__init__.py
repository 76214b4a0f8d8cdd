"""Deployment: the test-time model as an ONNX or pt2 file checked against PyTorch (``export``),
and the HTTP search service over a gallery index (``serve``, with its torch-free defaults and
limits in ``serve_options``).

Names load their modules on first use (the web stack and ONNX are the ``deploy`` extra).
"""

from mambapro.lazy import lazy_getattr

_LAZY = {
    "run_export": "export",
    "SearchService": "serve",
    "create_app": "serve",
    "run_serve": "serve",
    "MAX_K": "serve_options",
    "ServeOptions": "serve_options",
}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = sorted(_LAZY)
