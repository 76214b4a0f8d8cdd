"""Engine: everything that runs a model. Training, evaluation, feature extraction, search, the
demo and the reports.

Modules, each with one job: ``runtime`` (seed, device, autocast dtype), ``distributed`` (DDP
plumbing), ``data`` (the run's dataset and sizes), ``losses``, ``optim`` (optimiser and
schedule), ``checkpoint`` (atomic save, safe load, model from checkpoint), ``runlog`` (the run
record), ``trainer``, ``features`` (test loader, extraction, features files), ``evaluate``
(metrics under any modality subset, report files), ``search``, ``demo`` and ``report``
(parameter and FLOPs reports). The network itself is :mod:`mambapro.models`.
"""

from mambapro.engine.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from mambapro.engine.demo import run_demo
from mambapro.engine.evaluate import evaluate_model, run_test, write_report
from mambapro.engine.features import FeatureSet, extract_features, run_extract
from mambapro.engine.search import run_search
from mambapro.engine.trainer import Trainer, TrainingError, run_training

__all__ = [
    "CheckpointError",
    "FeatureSet",
    "Trainer",
    "TrainingError",
    "evaluate_model",
    "extract_features",
    "load_checkpoint",
    "load_model",
    "run_demo",
    "run_extract",
    "run_search",
    "run_test",
    "run_training",
    "save_checkpoint",
    "write_report",
]
