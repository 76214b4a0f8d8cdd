"""Deployment: the test-time model as an ONNX or pt2 file checked against PyTorch (``export``),
and the HTTP search service over a gallery index (``serve``, with its torch-free defaults and
limits in ``serve_options``).

Names load their modules on first use (the web stack and ONNX are the ``deploy`` extra).
"""

from mambapro.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "export": "run_export",
        "serve": "SearchService create_app run_serve",
        "serve_options": "MAX_K ServeOptions",
    },
)
