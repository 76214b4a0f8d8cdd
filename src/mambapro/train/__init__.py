"""Training: the trainer and its step, losses, optimiser and schedule, checkpoints (atomic save,
safe load, a model from a checkpoint), the run folder and its record, distributed set-up, the
data of a run, hyper-parameter sweeps and the demo.

The torch-based modules load on first use of one of their names, so the CLI can check a run's
settings and folder (``runlog``, ``sweep.plan_sweep``) before paying for torch.
"""

from mambapro.lazy import lazy_getattr

_LAZY = {
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "run_demo": "demo",
    "Trainer": "trainer",
    "TrainingError": "trainer",
    "run_training": "trainer",
}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = sorted(_LAZY)
