"""The training loop as a step plus an ordered list of hooks; the trainer loads no reporting library."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import fast
from mambapro.config import load_config
from mambapro.data.synth import generate
from mambapro.train.distributed import DistInfo
from mambapro.train.hooks import AnalysisHook, CheckpointHook, EvaluateHook, Hook, LogHook, default_hooks
from mambapro.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_trainer_imports_no_reporting_library() -> None:
    code = (
        "import sys, mambapro.train.trainer; "
        "heavy = ('sklearn', 'pytorch_grad_cam', 'mambapro.reports.analysis'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_default_hooks_follow_the_config() -> None:
    kinds = [type(h) for h in default_hooks(load_config("demo", ["train.analyze=false"]))]
    assert kinds == [EvaluateHook, LogHook, CheckpointHook]
    assert type(default_hooks(load_config("demo", ["train.analyze=true"]))[-1]) is AnalysisHook


class Recorder(Hook):
    def __init__(self, name: str, seen: list) -> None:
        self.name, self.seen = name, seen

    def after_epoch(self, trainer, record) -> None:
        self.seen.append((self.name, trainer.state.epoch, dict(record)))
        record[f"seen_by_{self.name}"] = True  # later hooks see what earlier ones added

    def after_train(self, trainer, result) -> None:
        self.seen.append((self.name, "end", sorted(result)))


def test_hooks_run_in_order_after_each_epoch_and_at_the_end(tmp_path) -> None:
    generate("rgbnt201", tmp_path / "tree", seed=3, ids=6, test_ids=2, cameras=2, shots=2)
    cfg = load_config(
        "demo",
        [*fast("train.epochs=2"), f"data.root={tmp_path / 'tree'}", f"train.output={tmp_path / 'run'}"],
    )
    seen: list = []
    trainer = Trainer(cfg, DistInfo(), quiet=True, hooks=[Recorder("a", seen), Recorder("b", seen)])
    trainer.start_logging({})
    result = trainer.fit()
    trainer.logger.close()
    epochs = [(name, epoch) for name, epoch, _ in seen[:4]]
    assert epochs == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert "seen_by_a" not in seen[0][2] and seen[1][2]["seen_by_a"] is True
    assert {"loss", "acc", "lr", "epoch", "seconds"} <= set(seen[0][2])
    assert seen[4:] == [("a", "end", sorted(result)), ("b", "end", sorted(result))]
    # No CheckpointHook in this list: the loop itself writes no checkpoint.
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_run_step_is_one_update_of_the_trainable_weights(tmp_path) -> None:
    generate("rgbnt201", tmp_path / "tree", seed=3, ids=6, test_ids=2, cameras=2, shots=2)
    cfg = load_config(
        "demo", [*FAST_ONE, f"data.root={tmp_path / 'tree'}", f"train.output={tmp_path / 'run'}"]
    )
    trainer = Trainer(cfg, DistInfo(), quiet=True, hooks=[])
    trainer.model.train()
    batch = next(iter(trainer.train_loader))  # already on the device, augmented
    assert batch["RGB"].dtype == torch.float32 and "seeds" not in batch
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    values = trainer.run_step(batch)
    assert {"loss", "acc"} <= set(values) and all(isinstance(v, float) for v in values.values())
    changed = [
        n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert changed  # the optimiser stepped
    assert trainer.state.iteration == 0  # counting steps is the epoch loop's job


FAST_ONE = fast("data.augment_on=device", "data.cache=memory")
