"""Training orchestration: data, model, optimiser, loop, evaluation, checkpoints, run record.

The trainer only orchestrates; the pieces live in ``mambapro.data``, ``mambapro.models``
(the network), ``run_data`` (the run's data), ``losses``, ``optim``, ``checkpoint``,
``mambapro.retrieval.testing`` and ``mambapro.evaluation``.

Reproducibility: the training batches and every augmentation decision are a pure function of
(seed, epoch, position) (see ``mambapro.data``), the model is initialised under the seed, and a
checkpoint stores the position inside the epoch, so an interrupted run resumed with
``--resume`` produces the same metrics as an uninterrupted one on CPU.

Model selection: by default the final epoch is reported (honest). ``train.select_best=val``
keeps the best checkpoint by the mAP of a validation split held out from the training
identities; ``train.select_best=test_set_optimistic`` selects on the test set as the published
recipes do, and every report of such a run says so.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from tqdm.auto import tqdm

from mambapro.config import Config, config_to_dict
from mambapro.data import build_train_loader
from mambapro.data.device_aug import DeviceAugment, OnDevice
from mambapro.data.fingerprint import dataset_fingerprint
from mambapro.data.fingerprint import describe as describe_fingerprint
from mambapro.data.spec_file import is_spec_file, spec_file_record
from mambapro.errors import TrainingError, UserError
from mambapro.models import MambaPro, build_model
from mambapro.retrieval.features import check_model_cameras
from mambapro.retrieval.testing import evaluate_model, write_report
from mambapro.runtime import amp_dtype, eval_amp, resolve_device, seed_everything
from mambapro.train.checkpoint import load_checkpoint, save_checkpoint
from mambapro.train.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from mambapro.train.hooks import Hook, default_hooks
from mambapro.train.losses import ReIDLoss
from mambapro.train.optim import build_optimizer, build_scheduler, step_epoch
from mambapro.train.run_data import prepare_data
from mambapro.train.runlog import RunLogger, changed_settings, check_run_folder

__all__ = ["Trainer", "TrainingError", "run_training"]


# ----------------------------------------------------------------------------- trainer


@dataclass
class TrainState:
    """What a checkpoint restores besides the module/optimiser states."""

    epoch: int = 0  # epoch in progress (0-based)
    iteration: int = 0  # batches of ``epoch`` already done
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    best_metric: float = -1.0
    best_epoch: int = -1


class Trainer:
    """Runs the training loop of one configuration in one output folder.

    :meth:`run_step` is one optimisation step on a batch; :meth:`train_epoch` runs the steps of
    an epoch (resumable inside it); :meth:`fit` runs the epochs, calling ``hooks`` (default:
    :func:`~mambapro.train.hooks.default_hooks` of the config) after each one and after the
    final evaluation.
    """

    def __init__(
        self, cfg: Config, dist_info: DistInfo, quiet: bool = False, hooks: list[Hook] | None = None
    ) -> None:
        self.cfg = cfg
        self.hooks = default_hooks(cfg) if hooks is None else list(hooks)
        self.dist = dist_info
        self.quiet = quiet or not dist_info.is_main
        self.device = resolve_device(cfg.train.device, dist_info.local_rank)
        self.out = Path(cfg.train.output)

        seed_everything(cfg.train.seed)
        self.data = prepare_data(cfg, dist_info, quiet=self.quiet)
        # The dataset as on disk (held-out validation identities counted back into train):
        # recorded in meta.json, the report and every checkpoint (`mambapro test` compares it).
        self.fingerprint = dataset_fingerprint(
            self.data.dataset, held_out=(self.data.val_query, self.data.val_gallery)
        )
        # A spec file's text goes into every checkpoint: the model loads where the file is not.
        dataset = cfg.data.dataset
        self.spec_record = spec_file_record(dataset) if is_spec_file(dataset) else None
        # Before the model: a decoded cache (data.cache) names unreadable images, or refuses a
        # size that does not fit, before anything heavy is built. Draws nothing from the RNG.
        self.train_loader = build_train_loader(
            cfg.data,
            self.data.dataset,
            cfg.img_size(),
            seed=cfg.train.seed,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            iters_per_epoch=cfg.train.iters_per_epoch,
            modality_dropout=cfg.train.modality_dropout,
            progress=not self.quiet,
        )
        # Each batch is moved to the device once, as it is taken from the loader; with
        # data.augment_on=device the loader yields uint8 images, augmented there.
        self.augment = DeviceAugment(cfg.data, cfg.img_size()) if cfg.data.augment_on == "device" else None
        self.train_loader = OnDevice(self.train_loader, self.device, self.augment)
        self.model: MambaPro = build_model(cfg, self.data.num_classes, self.data.num_cameras).to(self.device)
        # The camera table is sized by the training cameras: refuse now, not after training,
        # when a test camera has no row.
        for split in ("query", "gallery"):
            check_model_cameras(self.model, getattr(self.data, split), f"{self.data.name} {split}")
        # The run folder appears only in start_logging(), once nothing can refuse the run any more.
        self.logger = RunLogger(self.out, enabled=False)
        backbone_ids = {id(p) for p in self.model.parameter_parts()["backbone"]}
        self.optimizer = build_optimizer(self.model.named_parameters(), cfg.train, backbone_ids)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.amp = amp_dtype(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.loss_fn = ReIDLoss(
            cfg.train.ce_weight, cfg.train.label_smoothing, cfg.train.triplet_weight, cfg.train.triplet_margin
        )
        self.ddp: nn.Module = self.model
        if dist_info.enabled:
            # static_graph: the same parameters are used at every step, but a few never are
            # (the first layer's residual-prompt block RP_1 exists, as in the paper's parameter
            # count, yet p' = p at l = 1), which plain DDP treats as an error.
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                static_graph=True,
            )
        self.state = TrainState()
        self._step_snapshot: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    # ----------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": s.epoch,
            "iteration": s.iteration,
            "sums": dict(s.sums),
            "best_metric": s.best_metric,
            "best_epoch": s.best_epoch,
            "config": config_to_dict(self.cfg),
            "num_classes": self.data.num_classes,
            "num_cameras": self.data.num_cameras,
            "dataset": self.data.name,
            "dataset_fingerprint": self.fingerprint,
            "modalities": self.model.modalities.to_dict(),
            "img_size": list(self.cfg.img_size()),  # what every image is resized to
            **({"dataset_spec_file": self.spec_record} if self.spec_record else {}),
        }

    def save(self, name: str = "last.ckpt") -> Path | None:
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.checkpoint_state(), self.out / name)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint of this run (see :func:`resumable_checkpoint`)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = TrainState(
            epoch=ckpt["epoch"],
            iteration=ckpt["iteration"],
            sums=defaultdict(float, ckpt["sums"]),
            best_metric=ckpt["best_metric"],
            best_epoch=ckpt["best_epoch"],
        )

    def start_logging(self, extra: dict[str, Any]) -> None:
        """Create the run folder and its record (rank 0); on resume keep the records of the
        epochs already done."""
        self.logger = RunLogger(self.out, enabled=self.dist.is_main)
        self.logger.truncate_after(self.state.epoch)  # epochs 1..state.epoch are done
        self.logger.write_run_info(self.cfg, extra)

    # ----------------------------------------------------------------- loop

    def _snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """RNG state and buffers (BatchNorm statistics) before a step.

        A forward pass already changes them; if the step is interrupted before the optimiser
        update, :meth:`rollback_partial_step` puts them back so that a resumed run replays the
        step from exactly the state an uninterrupted run had.
        """
        return torch.get_rng_state(), {k: v.detach().clone() for k, v in self.model.named_buffers()}

    def rollback_partial_step(self) -> None:
        if self._step_snapshot is None:
            return
        rng, buffers = self._step_snapshot
        torch.set_rng_state(rng)
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])
        self._step_snapshot = None

    def run_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on ``batch`` (on the training device, augmented): forward under
        autocast, the loss, backward through the gradient scaler, clipping (``train.grad_clip``),
        the optimiser step. Returns the step's loss terms and accuracy, averaged over ranks.
        A non-finite loss raises :class:`TrainingError` before any weight changes."""
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            outputs = self.ddp(batch)
            terms = self.loss_fn(outputs, batch["pids"])
        loss = terms["loss"]
        mean_loss = all_reduce_mean(loss.detach(), self.dist)
        if not torch.isfinite(mean_loss):
            s = self.state
            raise TrainingError(
                f"non-finite loss ({mean_loss.item()}) at epoch {s.epoch + 1}, iteration "
                f"{s.iteration + 1}; the last good checkpoint is {self.out / 'last.ckpt'} "
                "(try a lower train.lr, train.grad_clip, or train.amp=off)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            values = {k: float(all_reduce_mean(v.detach().float(), self.dist)) for k, v in terms.items()}
            logits = outputs["fuse" if "fuse" in outputs else next(iter(outputs))][1]
            acc = (logits.argmax(1) == batch["pids"]).float().mean()
            values["acc"] = float(all_reduce_mean(acc, self.dist))
        return values

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """The steps of ``epoch`` from ``state.iteration`` on; the epoch's mean loss terms."""
        s = self.state
        self.ddp.train()
        step_epoch(self.scheduler, epoch, self.cfg.train)
        self.train_loader.batch_sampler.set_epoch(epoch)
        log_every = self.cfg.train.log_period
        bar = tqdm(
            total=len(self.train_loader),
            initial=s.iteration,
            desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
            disable=True if self.quiet else None,  # None: no bar when not a terminal
            leave=False,
            dynamic_ncols=True,
        )
        self.train_loader.batch_sampler.start_batch = s.iteration
        try:
            for batch in self.train_loader:
                self._step_snapshot = self._snapshot()
                step_values = self.run_step(batch)
                # Count the batch as done right after the update so that an interrupt never
                # replays an applied step on resume.
                s.iteration += 1
                self._step_snapshot = None
                for k, v in step_values.items():
                    s.sums[k] += v
                if log_every > 0 and s.iteration % log_every == 0:
                    step = epoch * len(self.train_loader) + s.iteration
                    self.logger.scalars(
                        {**step_values, "lr": self.optimizer.param_groups[0]["lr"]}, step, prefix="iter/"
                    )
                bar.update(1)
                bar.set_postfix(loss=f"{s.sums['loss'] / s.iteration:.3f}")
        finally:
            bar.close()
            self.train_loader.batch_sampler.start_batch = 0
        record = {k: v / max(s.iteration, 1) for k, v in s.sums.items()}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        return record

    def evaluate(self, split: str) -> Any:
        """mAP/CMC on ``test`` or ``val`` (rank 0 only; other ranks get None)."""
        if not self.dist.is_main:
            return None
        if split == "val":
            query, gallery = self.data.val_query, self.data.val_gallery
        else:
            query, gallery = self.data.query, self.data.gallery
        return evaluate_model(
            self.model,
            self.cfg,
            self.cfg.data.dataset,  # a spec file's name is not registered: look it up by its path
            query,
            gallery,
            self.device,
            amp=eval_amp(self.cfg, self.device),
            quiet=self.quiet,
        )

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, each followed by the hooks; then :meth:`finish`."""
        cfg, s = self.cfg, self.state
        while s.epoch < cfg.train.epochs:
            epoch = s.epoch
            t0 = time.perf_counter()
            record = self.train_epoch(epoch)
            record.update(epoch=epoch + 1, seconds=round(time.perf_counter() - t0, 3))
            s.epoch, s.iteration, s.sums = epoch + 1, 0, defaultdict(float)
            for hook in self.hooks:
                hook.after_epoch(self, record)
        return self.finish()

    def check_ranks_in_sync(self) -> bool:
        """All ranks hold identical weights (DDP keeps them so); a mismatch is an error."""
        if not self.dist.enabled:
            return True
        fp = torch.stack(
            [
                torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                for p in self.model.parameters()
            ]
        ).to(self.device)  # NCCL gathers CUDA tensors, gloo CPU ones
        gathered = [torch.zeros_like(fp) for _ in range(self.dist.world_size)]
        tdist.all_gather(gathered, fp)
        if not all(torch.equal(g, fp) for g in gathered):
            raise TrainingError("distributed ranks ended with different weights; the run is not trustworthy")
        return True

    def finish(self) -> dict[str, Any]:
        """Final test-set evaluation of the selected model and the run report (rank 0)."""
        in_sync = self.check_ranks_in_sync()
        barrier(self.dist)
        if not self.dist.is_main:
            return {}
        if self.dist.enabled:
            self.logger.log(
                {"epoch": self.cfg.train.epochs, "ranks_in_sync": in_sync, "world_size": self.dist.world_size}
            )
        select = self.cfg.train.select_best
        label = "final epoch"
        reported = self.out / "last.ckpt"
        if select != "final" and (self.out / "best.ckpt").exists():
            reported = self.out / "best.ckpt"
            self.model.load_state_dict(load_checkpoint(reported)["model"])
            label = (
                f"best epoch {self.state.best_epoch} by validation mAP"
                if select == "val"
                else f"best epoch {self.state.best_epoch} SELECTED ON THE TEST SET (optimistic)"
            )
        res = self.evaluate("test")
        summary = write_report(
            self.out,
            {f"MambaPro ({label})": res},
            title=f"{self.data.name} test set",
            extra={"dataset_fingerprint": self.fingerprint},
            notes=describe_fingerprint(self.fingerprint),
        )
        self.logger.log(
            {
                "epoch": self.cfg.train.epochs,
                "selection": label,
                **{f"test_{k}": v for k, v in res.as_dict().items()},
            }
        )
        result = {"result": res, "label": label, "summary": summary, "analysis": None, "checkpoint": reported}
        for hook in self.hooks:
            hook.after_train(self, result)
        return result


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM like Ctrl-C so schedulers that stop jobs also get a resumable checkpoint."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _checked_output(cfg: Config, resume: bool) -> dict[str, Any] | None:
    """Refuse an output folder that cannot hold this run; the checkpoint to resume, if any."""
    last = check_run_folder(cfg, resume)
    if not resume:
        return None
    ckpt = load_checkpoint(last)
    changed = changed_settings(ckpt["config"], cfg)
    if changed:
        raise TrainingError(
            f"--resume: {last} was written with other settings: {changed}; "
            "resume with the config and overrides of the run"
        )
    return ckpt


def run_training(
    cfg: Config, resume: bool = False, quiet: bool = False, show_data: bool = True
) -> dict[str, Any]:
    """Train ``cfg`` (optionally resuming ``train.output/last.ckpt``) and evaluate on the test set.

    ``show_data=False`` skips printing the dataset table (the demo has printed it already).
    """
    dist_info = init_distributed(cfg.train.device)
    try:
        # Everything that can refuse the run is checked before the run folder is touched, so a
        # refusal leaves the file system as it was.
        ckpt = _checked_output(cfg, resume)
        trainer = Trainer(cfg, dist_info, quiet=quiet)
        if cfg.train.analyze:
            test_ids = {x.pid for x in (*trainer.data.query, *trainer.data.gallery)}
            if len(test_ids) < 2:
                raise UserError(
                    f"train.analyze=true: the t-SNE needs at least 2 test identities; "
                    f"{trainer.data.name} at {cfg.data.root} has {len(test_ids)}"
                )
        if ckpt is not None:
            trainer.restore(ckpt)
            before = ckpt.get("dataset_fingerprint")
            if isinstance(before, dict) and before.get("sha256") != trainer.fingerprint["sha256"]:
                # Resumed on other files: the run's numbers no longer describe one dataset.
                warnings.warn(
                    f"--resume: the dataset at {cfg.data.root} is not the one {cfg.train.output} was "
                    f"trained on so far (files {before.get('files')} -> {trainer.fingerprint['files']}, "
                    "names or sizes differ)",
                    stacklevel=2,
                )
        trainer.start_logging(
            {
                "world_size": dist_info.world_size,
                "device": str(trainer.device),
                "num_classes": trainer.data.num_classes,
                "num_cameras": trainer.data.num_cameras,
                "resumed_from_epoch": trainer.state.epoch if resume else None,
                "dataset_fingerprint": trainer.fingerprint,
            }
        )
        if dist_info.is_main and show_data and not trainer.quiet:
            print(trainer.data.summary, flush=True)
        with _sigterm_as_interrupt():
            try:
                return trainer.fit()
            except KeyboardInterrupt:
                trainer.rollback_partial_step()
                path = trainer.save()
                if path is not None:
                    where = f"epoch {trainer.state.epoch + 1}, batch {trainer.state.iteration}"
                    print(f"\ninterrupted at {where}: resumable checkpoint saved to {path} (use --resume)")
                raise
    finally:
        if "trainer" in locals():
            trainer.logger.close()
        cleanup(dist_info)
