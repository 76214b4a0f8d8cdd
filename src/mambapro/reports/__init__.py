"""Reports for people to look at: the analysis of checkpoints (t-SNE, modality alignment,
Grad-CAM, rank lists, CMC) and its self-contained HTML page, and the parameter and FLOPs report.

Names load their modules on first use (scikit-learn, grad-cam and matplotlib are heavy).
"""

from mambapro.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "analysis": "run_analyze",
        "page": "write_report_page",
        "params": "flops_report format_parameter_report parameter_report",
    },
)
