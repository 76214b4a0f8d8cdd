"""Retrieval: test-time features (extraction, the features file and the identity of the model
that made them), the FAISS gallery index (its class, its file and the ``index`` command),
ranking a gallery for queries (``search``) and the ``test`` command (mAP and CMC of a checkpoint
under any modality subset).

Names load their torch-based modules on first use.
"""

from mambapro.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "features": "FeatureSet extract_features run_extract",
        "gallery_index": "GalleryIndex",
        "index": "run_index",
        "search": "run_search",
        "testing": "evaluate_model run_test write_report",
    },
)
