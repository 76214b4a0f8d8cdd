"""Retrieval: test-time features (extraction, the features file and the identity of the model
that made them), the FAISS gallery index, ranking a gallery for queries (``search``) and the
``test`` command (mAP and CMC of a checkpoint under any modality subset).

Names load their torch-based modules on first use.
"""

from mambapro.lazy import lazy_getattr

_LAZY = {
    "FeatureSet": "features",
    "extract_features": "features",
    "run_extract": "features",
    "GalleryIndex": "index",
    "run_index": "index",
    "run_search": "search",
    "evaluate_model": "testing",
    "run_test": "testing",
    "write_report": "testing",
}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = sorted(_LAZY)
