"""Test-time features: the loader, extraction, the features file, and the ``extract`` command.

``extract`` runs in one process or, under torchrun, in several (any number of nodes): each rank
extracts whole batches of the one-process run (:func:`shard_rows`), rank 0 gathers the rows
(:func:`merge_shards`) and alone writes the file, the same bytes as one process writes.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mambapro.config import Config
from mambapro.data import build_test_loader, check_cameras, dataset_from_config
from mambapro.errors import ConfigError, UserError, short_reason
from mambapro.files import atomic_write
from mambapro.models.precision import apply_precision, autocast_dtype
from mambapro.options import check_extract_options, check_precision
from mambapro.retrieval.gallery import LABELS, GalleryLabels
from mambapro.retrieval.identity import model_identity, model_modalities, stored_identity
from mambapro.runtime import eval_amp
from mambapro.train.checkpoint import load_model
from mambapro.train.distributed import (
    DistInfo,
    cleanup,
    gather_to_main,
    init_distributed,
    rank_device,
    same_on_all_ranks,
)

__all__ = [
    "EvalStep",
    "FeatureSet",
    "check_model_cameras",
    "eval_loader",
    "eval_pass",
    "extract_features",
    "merge_shards",
    "run_extract",
    "shard_rows",
]


@dataclass
class FeatureSet(GalleryLabels):
    """Features of one split: feats (N, F) float32, per-sample labels, and the identity of the
    model that made them (:mod:`mambapro.retrieval.identity`; None when unknown)."""

    feats: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    paths: list[str]
    identity: dict | None = None

    def labelled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(feats, pids, camids, sceneids)``: the input of ``evaluation.evaluate_features``."""
        return self.feats, self.pids, self.camids, self.sceneids

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` file atomically (temporary file + rename); returns ``path``.

        Image paths are stored absolute, so the file (and an index built from it) finds its
        images from any working folder.
        """
        path = Path(path)
        extra = {} if self.identity is None else {"identity": np.asarray(json.dumps(self.identity))}
        with atomic_write(path) as fh:  # a file object: NumPy appends no suffix
            np.savez(fh, feats=self.feats, **self.arrays(), **extra)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a file of :meth:`save`; a missing, damaged or foreign file raises a one-line
        :class:`UserError`, a file without an identity (older mambapro) warns once."""
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"features file {path} is a folder" if path.is_dir() else f"features file not found: {path}"
            )
        bad = f"{path} is not a features file written by `mambapro extract`"
        if path.stat().st_size == 0:
            raise UserError(f"{bad} (it is empty: 0 bytes)")
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            with open(path, "rb") as fh:
                if fh.read(2) == b"PK":  # a zip archive, cut short or overwritten
                    raise UserError(
                        f"{path}: damaged features file (truncated or overwritten: {short_reason(err)}); "
                        "extract it again"
                    ) from None
            raise UserError(f"{bad} ({short_reason(err)})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise UserError(f"{bad} (a bare array)")
        with z:
            missing = {"feats", *LABELS} - set(z.files)
            if missing:
                hint = "; it looks like a gallery index" if {"header", "index"} <= set(z.files) else ""
                raise UserError(
                    f"{path} lacks the arrays {sorted(missing)} of a mambapro features file{hint}"
                )
            try:
                arrays = {k: z[k] for k in ("feats", *LABELS)}
                identity = json.loads(str(z["identity"][()])) if "identity" in z.files else None
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
                # A truncated or overwritten archive fails here, when an array is read.
                raise UserError(
                    f"{path}: damaged features file ({short_reason(err)}); extract it again"
                ) from None
        identity = stored_identity(identity, path, "features file", "extract it again to add it", UserError)
        return cls(
            arrays["feats"],
            arrays["pids"],
            arrays["camids"],
            arrays["sceneids"],
            [str(p) for p in arrays["paths"]],
            identity,
        )


#: ``step(inputs)`` of :func:`eval_pass`: one batch's named outputs, each (B, ...).
EvalStep = Callable[[dict[str, Any]], dict[str, Tensor]]


@torch.no_grad()
def eval_pass(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    desc: str = "extract",
    step: EvalStep | None = None,
) -> tuple[dict[str, np.ndarray], FeatureSet]:
    """Run ``model`` in eval mode over ``loader``: the outputs of ``step`` (default: ``{"test":
    model(inputs)}``) concatenated along the batch, float32, and the :class:`FeatureSet` of the
    ``test`` output with the batches' labels."""
    step = step or (lambda inputs: {"test": model(inputs)})
    was_training = model.training
    model.eval()
    cols: dict[str, list[Tensor]] = {}
    pids, camids, sceneids, paths = [], [], [], []
    try:
        # disable=None: no bar when stderr is not a terminal (logs, CI).
        bar = tqdm(loader, desc=desc, disable=True if quiet else None, leave=False, dynamic_ncols=True)
        for batch in bar:
            inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                outputs = step(inputs)
            for name, value in outputs.items():
                cols.setdefault(name, []).append(value.float().cpu())
            pids.append(batch["pids"])
            camids.append(batch["camids"])
            sceneids.append(batch["sceneids"])
            paths.extend(batch["paths"])
    finally:
        model.train(was_training)
    arrays = {name: torch.cat(values).numpy() for name, values in cols.items()}
    for name, a in arrays.items():
        if len(a) != len(paths):
            raise RuntimeError(f"eval_pass: output '{name}' has {len(a)} rows for {len(paths)} samples")
    labels = (torch.cat(pids).numpy(), torch.cat(camids).numpy(), torch.cat(sceneids).numpy())
    return arrays, FeatureSet(arrays["test"], *labels, paths)


def extract_features(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    desc: str = "extract",
) -> FeatureSet:
    """Run ``model`` in eval mode over ``loader`` and collect its test features."""
    return eval_pass(model, loader, device, amp, quiet, desc)[1]


def eval_loader(cfg: Config, samples: list, dataset_name: str, missing: str = "full") -> Any:
    """Test-time loader (resize + normalise) over ``samples`` with the configured batch size, the
    ``missing`` modalities (a setting of the dataset's modalities: ``T`` for RGB + TI) zeroed."""
    return build_test_loader(
        cfg.data, samples, dataset_name, cfg.img_size(), batch_size=cfg.test.batch_size, missing=missing
    )


def missing_setting(model: nn.Module, missing: str) -> str:
    """The canonical setting of ``--missing`` (extract, search) for ``model``'s modalities, or a
    one-line :class:`~mambapro.errors.ConfigError` naming the option and the choices."""
    try:
        return model_modalities(model).parse_setting(missing)
    except ConfigError as err:
        raise ConfigError(f"--missing: {err}") from None


def check_model_cameras(model: nn.Module, samples: list, what: str) -> None:
    """Name the first sample whose camera id has no row in the model's camera embedding; none is
    refused when the backbone gives cameras it never saw the mean of its learned rows
    (``backbone.unseen_cameras = "mean"``: a cross-dataset test)."""
    backbone = model.backbone
    if backbone.camera_embedding is not None and backbone.unseen_cameras != "mean":
        check_cameras(samples, backbone.num_cameras, what)


def shard_rows(n: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The rows (sample positions) of a split of ``n`` samples that ``rank`` of ``world_size``
    extracts: whole batches of the one-process run, batch ``b`` to rank ``b % world_size``.

    Each rank's rows are full batches in order (only the split's last batch may be short, and it
    comes last), so the rank's loader over them makes exactly the one-process run's batches: a
    sample's feature is computed in the same batch, hence the same numbers, as in one process.
    A rank gets no rows when there are fewer batches than ranks.
    """
    batches = range(rank, -(-n // batch_size), world_size)
    return [i for b in batches for i in range(b * batch_size, min(n, (b + 1) * batch_size))]


#: One rank's share of an extraction, as :func:`gather_to_main` sends it: its rows and, when it
#: has any, their features, pids, camids, sceneids and paths.
Shard = tuple[list[int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]] | None]


def merge_shards(shards: list[Shard], n: int) -> FeatureSet:
    """The :class:`FeatureSet` of all ``n`` rows, in split order, from the ranks' shards."""
    parts = [(rows, arrays) for rows, arrays in shards if rows]
    if len(parts) == 1 and parts[0][0] == list(range(n)):  # one process: no copy
        return FeatureSet(*parts[0][1])
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r, _ in parts])
    order = np.argsort(rows, kind="stable")
    if not np.array_equal(rows[order], np.arange(n)):
        raise RuntimeError(f"merge_shards: the ranks' rows do not cover the {n} samples once each")
    feats, pids, camids, sceneids = (np.concatenate([a[k] for _, a in parts])[order] for k in range(4))
    paths = [p for _, a in parts for p in a[4]]
    return FeatureSet(feats, pids, camids, sceneids, [paths[i] for i in order])


def run_extract(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str,
    out: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    precision: str = "fp32",
    missing: str = "full",
) -> FeatureSet | None:
    """The ``mambapro extract`` command: features of one split to an .npz file (``out`` gets the
    ``.npz`` suffix when it lacks it, as NumPy would add it), computed at ``precision``
    (:mod:`mambapro.models.precision`; the file records it), with the ``missing`` modalities
    zeroed as ``test --missing`` zeroes them (one setting; the file records the modalities
    present: a gallery without thermal images, a night gallery without RGB).

    Under torchrun the ranks share the split (:func:`shard_rows`) and rank 0 writes the file
    that one process would write, byte for byte where the device computes deterministically
    (CPU with the same threads per process); it returns the features there and None on the other
    ranks, which write nothing. Every rank must name the same ``out`` (resolved): otherwise every
    rank refuses before any work.
    """
    out = check_extract_options(checkpoint, out, missing)
    check_precision(precision)
    info = init_distributed()
    try:
        same_on_all_ranks(
            str(out.resolve()), info, "--out", "give every rank the same file (rank 0 alone writes it)"
        )
        quiet = quiet or not info.is_main
        return _extract(checkpoint, data_root, split, out, config, overrides, quiet, info, precision, missing)
    finally:
        cleanup(info)


def _extract(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str,
    out: Path,
    config: str | Path | None,
    overrides: list[str] | None,
    quiet: bool,
    info: DistInfo,
    precision: str,
    missing: str,
) -> FeatureSet | None:
    model, cfg, _ = load_model(
        checkpoint, config, overrides, extra={"data": {"root": str(data_root)}}, device=rank_device(info)
    )
    missing = missing_setting(model, missing)
    identity = model_identity(model, cfg.img_size(), checkpoint, missing=missing, precision=precision)
    model = apply_precision(model, precision)
    device = next(model.parameters()).device
    ds = dataset_from_config(cfg.data, generate=False)
    samples = {"query": ds.query, "gallery": ds.gallery, "train": ds.train}[split]
    check_model_cameras(model, samples, f"{ds.name} {split}")
    rows = shard_rows(len(samples), cfg.test.batch_size, info.rank, info.world_size)
    shard: Shard = (rows, None)
    if rows:
        loader = eval_loader(cfg, [samples[i] for i in rows], ds.spec, missing)
        amp = autocast_dtype(model, eval_amp(cfg, device))
        mine = extract_features(model, loader, device, amp, quiet, split)
        shard = (rows, (mine.feats, mine.pids, mine.camids, mine.sceneids, mine.paths))
    shards = gather_to_main(shard, info)
    if shards is None:  # not rank 0
        return None
    feats = merge_shards(shards, len(samples))
    feats.identity = identity
    feats.save(out)
    at = "" if precision == "fp32" else f" at {precision}"
    if missing != "full":
        zeroed = "+".join(model_modalities(model).missing(missing))
        at += f" from {identity['modalities']} ({zeroed} zeroed)"
    print(f"{len(feats.paths)} {split} features of dimension {feats.feats.shape[1]}{at} written to {out}")
    return feats
