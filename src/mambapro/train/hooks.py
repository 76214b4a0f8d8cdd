"""What happens around the training loop, as an ordered list of hooks (in the spirit of
fast-reid's ``HookBase``).

After every epoch the trainer calls each hook's :meth:`Hook.after_epoch` in order with the
epoch's record (the losses, then whatever earlier hooks added); after the final evaluation it
calls :meth:`Hook.after_train` with the run's result. :func:`default_hooks` is the list a run's
config asks for:

* :class:`EvaluateHook`: periodic evaluation and model selection (``train.eval_period``,
  ``train.select_best``; keeps ``best.ckpt``);
* :class:`LogHook`: the epoch line and the run log (``metrics.jsonl``, TensorBoard);
* :class:`CheckpointHook`: ``last.ckpt`` every ``train.checkpoint_period`` epochs and at the end;
* :class:`AnalysisHook` (``train.analyze=true``): the analysis page of the reported checkpoint.
  The reporting libraries load only when it runs (``mambapro.reports`` exports lazily).

A hook holds no state of the run: what must survive a resume lives in the trainer's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mambapro import reports
from mambapro.config import Config
from mambapro.errors import UserError

if TYPE_CHECKING:
    from mambapro.train.trainer import Trainer

__all__ = ["AnalysisHook", "CheckpointHook", "EvaluateHook", "Hook", "LogHook", "default_hooks"]


class Hook:
    """A step around the training loop; override what you need."""

    def after_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After epoch ``trainer.state.epoch`` (1-based, already advanced) with its ``record``."""

    def after_train(self, trainer: Trainer, result: dict[str, Any]) -> None:
        """After the final test-set evaluation (rank 0 only): ``result`` holds ``result``,
        ``label``, ``summary`` and ``analysis``; a hook may add to it."""


class EvaluateHook(Hook):
    """Evaluation every ``train.eval_period`` epochs; with ``train.select_best`` other than
    ``final`` also at the last epoch, keeping the best epoch's weights as ``best.ckpt``."""

    def after_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        cfg, s = trainer.cfg.train, trainer.state
        is_last = s.epoch == cfg.epochs
        periodic = cfg.eval_period > 0 and s.epoch % cfg.eval_period == 0
        if cfg.select_best != "final" and (periodic or is_last):
            split = "val" if cfg.select_best == "val" else "test"
            res = trainer.evaluate(split)
            if res is not None:
                record.update({f"{split}_{k}": v for k, v in res.as_dict().items()})
                if res.mAP > s.best_metric:
                    s.best_metric, s.best_epoch = res.mAP, s.epoch
                    trainer.save("best.ckpt")
        elif periodic and not is_last:
            res = trainer.evaluate("test")
            if res is not None:
                record.update({f"test_{k}": v for k, v in res.as_dict().items()})


class LogHook(Hook):
    """The epoch's record to the run log and, unless quiet, one printed line (rank 0)."""

    def after_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if not trainer.dist.is_main:
            return
        trainer.logger.log(record, step=trainer.state.epoch, prefix="train/")
        if not trainer.quiet:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            print(f"epoch {trainer.state.epoch}/{trainer.cfg.train.epochs}: {shown}", flush=True)


class CheckpointHook(Hook):
    """``last.ckpt`` every ``train.checkpoint_period`` epochs and after the last one."""

    def after_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        cfg, epoch = trainer.cfg.train, trainer.state.epoch
        if epoch % max(cfg.checkpoint_period, 1) == 0 or epoch == cfg.epochs:
            trainer.save()


class AnalysisHook(Hook):
    """``mambapro analyze`` of the reported checkpoint into ``<output>/analysis``, linked from
    ``report.txt`` and the run log; ``result["analysis"]`` is the page's path."""

    def after_train(self, trainer: Trainer, result: dict[str, Any]) -> None:
        checkpoint: Path = result["checkpoint"]
        out = trainer.out / "analysis"
        try:
            reports.run_analyze(checkpoint, out=out, quiet=trainer.quiet, announce=False)
        except UserError as e:
            done = trainer.out / "report.txt"
            raise UserError(f"the run is complete ({done}), but train.analyze failed: {e}") from e
        page = out / "report.html"
        link = page.relative_to(trainer.out).as_posix()
        with open(trainer.out / "report.txt", "a") as f:
            f.write(f"analysis report ({checkpoint.name}): {link}\n")
        trainer.logger.log({"epoch": trainer.cfg.train.epochs, "analysis_report": link})
        result["analysis"] = page


def default_hooks(cfg: Config) -> list[Hook]:
    """The hooks of a run of ``cfg``, in the order they run."""
    hooks: list[Hook] = [EvaluateHook(), LogHook(), CheckpointHook()]
    if cfg.train.analyze:
        hooks.append(AnalysisHook())
    return hooks
