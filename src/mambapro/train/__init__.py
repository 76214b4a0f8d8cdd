"""Training: the trainer and its step, losses, optimiser and schedule, checkpoints (atomic save,
safe load, a model from a checkpoint), the run folder and its record, distributed set-up, the
data of a run, hyper-parameter sweeps and the demo.

The torch-based modules load on first use of one of their names, so the CLI can check a run's
settings and folder (``runlog``, ``sweep.plan_sweep``) before paying for torch.
"""

from mambapro.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "checkpoint": "CheckpointError load_checkpoint load_model save_checkpoint",
        "demo": "run_demo",
        "trainer": "Trainer TrainingError run_training",
    },
)
