"""Engine: everything that runs a model. Training, evaluation, feature extraction, search, the
demo and the reports.

Modules, each with one job: ``runtime`` (seed, device, autocast dtype), ``distributed`` (DDP
plumbing), ``data`` (the run's dataset and sizes), ``losses``, ``optim`` (optimiser and
schedule), ``checkpoint`` (atomic save, safe load, model from checkpoint), ``runlog`` (the run
record), ``trainer``, ``features`` (test loader, extraction, features files), ``evaluate``
(metrics under any modality subset, report files), ``search``, ``demo`` and ``report``
(parameter and FLOPs reports). The network itself is :mod:`mambapro.models`.
"""

from mambapro.lazy import lazy_getattr

# Loaded on first use: the CLI imports light modules of this package (the run-folder checks of
# ``runlog``) to refuse bad input before paying for torch.
_LAZY = {
    "run_analyze": "analysis",
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "run_demo": "demo",
    "evaluate_model": "evaluate",
    "run_test": "evaluate",
    "write_report": "evaluate",
    "FeatureSet": "features",
    "extract_features": "features",
    "run_extract": "features",
    "run_search": "search",
    "parameter_report": "report",
    "Trainer": "trainer",
    "TrainingError": "trainer",
    "run_training": "trainer",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "CheckpointError",
    "FeatureSet",
    "Trainer",
    "TrainingError",
    "evaluate_model",
    "extract_features",
    "load_checkpoint",
    "load_model",
    "parameter_report",
    "run_analyze",
    "run_demo",
    "run_extract",
    "run_search",
    "run_test",
    "run_training",
    "save_checkpoint",
    "write_report",
]
