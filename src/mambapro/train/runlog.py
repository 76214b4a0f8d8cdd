"""What every run records in its output folder: resolved config, seed, versions, metrics.

``config.yaml`` is the full resolved configuration (reloadable with ``--config``),
``meta.json`` the seed, package versions, the machine (CPU model and the instruction-set flags
that change floating-point results, PyTorch's CPU kernel level and threads, the GPU), device,
command line and the dataset fingerprint (:mod:`mambapro.data.fingerprint`), ``metrics.jsonl``
one JSON object per epoch/evaluation, and ``tb/`` TensorBoard scalars.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mambapro.config import Config, config_diff, config_to_dict, dump_config
from mambapro.errors import TrainingError, check_output_dir
from mambapro.files import check_output_folder, claim_output_folder
from mambapro.machine import machine_info
from mambapro.options import RUN_OUTPUTS

__all__ = ["RunLogger", "check_run_folder", "package_versions"]


#: Settings a resumed run may change: where the run and the data are, how many processes read
#: the data, whether decoded images are cached and whether the end writes an analysis report
#: (the numbers depend on none of them).
#: Everything else must be as the run had it.
RESUME_MAY_DIFFER = (
    "train.output",
    "data.root",
    "data.num_workers",
    "data.cache",
    "data.cache_dir",
    "train.analyze",
)


def changed_settings(recorded: dict[str, Any], cfg: Config) -> str | None:
    """The settings in which ``cfg`` differs from a run's ``recorded`` config, beyond
    :data:`RESUME_MAY_DIFFER`, as ``key: old -> new; ...`` (three named); None if none."""
    diff = [
        line
        for line in config_diff(recorded, config_to_dict(cfg))
        if line.split(":", 1)[0] not in RESUME_MAY_DIFFER
    ]
    if not diff:
        return None
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    return "; ".join(diff[:3]) + more


def check_run_folder(cfg: Config, resume: bool) -> Path:
    """Refuse an output folder that cannot hold this run; the checkpoint path of the run.

    Without ``resume`` the folder must hold no run yet, nor any file a run writes that an earlier
    run did not (``--output .`` beside one's own ``config.yaml``); with it, it must hold
    ``last.ckpt``. With ``data.cache=disk`` an explicit ``data.cache_dir`` must be a folder that
    can be written.
    Torch-free, so the CLI refuses before importing torch.
    """
    out = Path(cfg.train.output)
    # A resumed run writes where it wrote before: only a new one is checked for files in its way.
    check_output_folder(out, "run folder (train.output, --output)", "train", () if resume else RUN_OUTPUTS)
    if cfg.data.cache == "disk" and cfg.data.cache_dir:
        # Else the cache build fails only after the run folder exists, with mkdir's "File exists".
        check_output_dir(cfg.data.cache_dir, "data.cache_dir")
    last = out / "last.ckpt"
    if resume and not last.exists():
        raise TrainingError(f"--resume: no checkpoint at {last}")
    if not resume and last.exists():
        raise TrainingError(
            f"{out} already holds a run (last.ckpt); pass --resume to continue it or choose another --output"
        )
    return last


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide the numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("mambapro", "torch", "torchvision", "timm", "numpy", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class RunLogger:
    """Writes the run record; a no-op on non-zero distributed ranks."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.out = Path(out_dir)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        claim_output_folder(self.out, "train")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # tensorboard is a declared dependency; stay usable without it
                self._tb = None

    def write_run_info(self, cfg: Config, extra: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        (self.out / "config.yaml").write_text(dump_config(cfg))
        meta = {
            "seed": cfg.train.seed,
            "versions": package_versions(),
            "platform": platform.platform(),
            "machine": machine_info(),
            "argv": sys.argv,
            **(extra or {}),
        }
        (self.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    def log(self, record: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
        """Append one record to metrics.jsonl and its numbers to TensorBoard."""
        if not self.enabled:
            return
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    self._tb.add_scalar(f"{prefix}{k}", v, step)
            self._tb.flush()

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """TensorBoard scalars only (per-iteration curves; metrics.jsonl keeps per-epoch records)."""
        if not self.enabled or self._tb is None:
            return
        for k, v in values.items():
            self._tb.add_scalar(f"{prefix}{k}", v, step)

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop records of epochs after ``epoch`` (they belong to the lost future)."""
        path = self.out / "metrics.jsonl"
        if not self.enabled or not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if json.loads(line).get("epoch", 0) <= epoch]
        path.write_text("".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
