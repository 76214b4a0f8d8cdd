"""Reports for people to look at: the analysis of checkpoints (t-SNE, modality alignment,
Grad-CAM, rank lists, CMC) and its self-contained HTML page, and the parameter and FLOPs report.

Names load their modules on first use (scikit-learn, grad-cam and matplotlib are heavy).
"""

from mambapro.lazy import lazy_getattr

_LAZY = {
    "run_analyze": "analysis",
    "write_report_page": "page",
    "flops_report": "params",
    "format_parameter_report": "params",
    "parameter_report": "params",
}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = sorted(_LAZY)
