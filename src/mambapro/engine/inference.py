"""Feature extraction, evaluation of a model, and the ``test`` / ``extract`` commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mambapro.config import Config, config_to_dict, load_config
from mambapro.engine.checkpoint import CheckpointError, load_checkpoint
from mambapro.errors import UserError

__all__ = [
    "FeatureSet",
    "extract_features",
    "evaluate_model",
    "evaluate_features",
    "load_model",
    "write_report",
    "run_test",
    "run_extract",
    "eval_loader",
    "check_model_cameras",
    "eval_amp",
]


@dataclass
class FeatureSet:
    """Features of one split: feats (N, F) float32 and per-sample labels."""

    feats: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    paths: list[str]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            feats=self.feats,
            pids=self.pids,
            camids=self.camids,
            sceneids=self.sceneids,
            paths=np.asarray(self.paths, dtype=str),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"features file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = {"feats", "pids", "camids", "sceneids", "paths"} - set(z.files)
            if missing:
                raise ValueError(f"{path} lacks the arrays {sorted(missing)} of a mambapro features file")
            return cls(z["feats"], z["pids"], z["camids"], z["sceneids"], [str(p) for p in z["paths"]])


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    desc: str = "extract",
) -> FeatureSet:
    """Run ``model`` in eval mode over ``loader`` and collect its test features."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    feats, pids, camids, sceneids, paths = [], [], [], [], []
    try:
        # disable=None: no bar when stderr is not a terminal (logs, CI).
        bar = tqdm(loader, desc=desc, disable=True if quiet else None, leave=False, dynamic_ncols=True)
        for batch in bar:
            inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                f = model(inputs)
            feats.append(f.float().cpu())
            pids.append(batch["pids"])
            camids.append(batch["camids"])
            sceneids.append(batch["sceneids"])
            paths.extend(batch["paths"])
    finally:
        model.train(was_training)
    return FeatureSet(
        torch.cat(feats).numpy(),
        torch.cat(pids).numpy(),
        torch.cat(camids).numpy(),
        torch.cat(sceneids).numpy(),
        paths,
    )


def evaluate_features(
    q: FeatureSet, g: FeatureSet, cfg: Config, use_scenes: bool, rerank: bool | None = None
):
    """Distances (optionally re-ranked) and the ReID metrics of one query/gallery pair."""
    from mambapro.evaluation import compute_distmat, evaluate, re_ranking

    t = cfg.test
    rerank = t.rerank if rerank is None else rerank
    if rerank:
        distmat = re_ranking(q.feats, g.feats, k1=t.rerank_k1, k2=t.rerank_k2, lambda_value=t.rerank_lambda)
    else:
        distmat = compute_distmat(q.feats, g.feats, metric=t.distance)
    return evaluate(
        distmat,
        q.pids,
        g.pids,
        q.camids,
        g.camids,
        q.sceneids if use_scenes else None,
        g.sceneids if use_scenes else None,
        max_rank=t.max_rank,
    )


def eval_loader(cfg: Config, samples: list, dataset_name: str, missing: str = "full") -> Any:
    """Test-time loader (resize + normalise) over ``samples`` with the configured batch size."""
    from mambapro.data import build_test_loader

    return build_test_loader(
        cfg.data, samples, dataset_name, cfg.img_size(), batch_size=cfg.test.batch_size, missing=missing
    )


def eval_amp(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype at test time: none (fp32, as the release evaluates) unless ``test.amp``,
    then ``train.amp``'s dtype on this device."""
    from mambapro.engine.trainer import amp_dtype

    return amp_dtype(cfg.train.amp, device) if cfg.test.amp else None


def check_model_cameras(model: nn.Module, samples: list, what: str) -> None:
    """Name the first sample whose camera id has no row in the model's camera embedding."""
    from mambapro.data.datasets import check_cameras

    backbone = model.backbone
    if backbone.camera_embedding is not None:
        check_cameras(samples, backbone.num_cameras, what)


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    dataset_name: str,
    query: list,
    gallery: list,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    missing: str | None = None,
    rerank: bool | None = None,
):
    """Extract query and gallery features and evaluate them (market or MSVR310 protocol)."""
    missing = missing or cfg.test.missing
    check_model_cameras(model, query, f"{dataset_name} query")
    check_model_cameras(model, gallery, f"{dataset_name} gallery")
    qf = extract_features(model, eval_loader(cfg, query, dataset_name, missing), device, amp, quiet, "query")
    gf = extract_features(
        model, eval_loader(cfg, gallery, dataset_name, missing), device, amp, quiet, "gallery"
    )
    return evaluate_features(qf, gf, cfg, use_scenes=dataset_name == "MSVR310", rerank=rerank)


def write_report(out_dir: str | Path, rows: dict[str, Any], title: str) -> str:
    """Save results.json, cmc.png and report.txt in ``out_dir``; return the text table."""
    from mambapro.evaluation import format_table, plot_cmc, save_results_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, title=title)
    save_results_json(out / "results.json", rows)
    plot_cmc(out / "cmc.png", {name: r.cmc for name, r in rows.items()})
    (out / "report.txt").write_text(table + "\n")
    return table


def load_model(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict | None = None,
    device: torch.device | None = None,
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild a model from a checkpoint; its stored config is the base for ``config``/overrides.

    Only test-time keys (``data``, ``test``) may differ from the stored configuration: changing
    the model section would not match the stored weights.
    """
    import tempfile

    import yaml

    from mambapro.engine.model import build_model
    from mambapro.engine.trainer import resolve_device

    ckpt = load_checkpoint(checkpoint)
    stored = ckpt["config"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "stored.yaml"
        base.write_text(yaml.safe_dump(stored))
        cfg = load_config(base, overrides, extra=extra)
        if config is not None:
            user = load_config(config)
            merged = config_to_dict(cfg)
            for section in ("data", "test"):
                merged[section] = config_to_dict(user)[section]
            base.write_text(yaml.safe_dump(merged))
            cfg = load_config(base, overrides, extra=extra)
    if config_to_dict(cfg)["model"] != stored["model"]:
        raise CheckpointError(f"{checkpoint}: model.* settings cannot be changed at test time")
    device = device or resolve_device(cfg.train.device)
    # The encoder weights come from the checkpoint, not from model.weights.
    cfg.model.weights = None
    model = build_model(cfg, ckpt["num_classes"], ckpt["num_cameras"])
    cfg.model.weights = stored["model"]["weights"]
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model: {err}") from err
    return model.to(device).eval(), cfg, ckpt


def run_test(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict | None = None,
    missing: str | None = None,
    rerank: bool = False,
    output: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """The ``mambapro test`` command: result table, optional missing-modality table."""
    from mambapro.data import build_dataset
    from mambapro.evaluation import (
        MISSING_SETTINGS,
        format_table,
        missing_label,
        missing_modality_table,
        save_results_json,
    )

    model, cfg, _ = load_model(checkpoint, config, overrides, extra)
    if rerank:
        cfg.test.rerank = True
    device = next(model.parameters()).device
    amp = eval_amp(cfg, device)
    ds = build_dataset(cfg.data.dataset, cfg.data.root, skip_broken=cfg.data.skip_broken)
    out = Path(output) if output is not None else Path(checkpoint).parent / "test"
    use_scenes = ds.name == "MSVR310"
    if missing is not None and missing != "all" and missing not in MISSING_SETTINGS:
        raise UserError(f"--missing {missing!r}: choose all or one of {', '.join(MISSING_SETTINGS)}")
    setting = missing if missing not in (None, "all") else cfg.test.missing
    label = missing_label(setting)
    res = evaluate_model(model, cfg, ds.name, ds.query, ds.gallery, device, amp, quiet, missing=setting)
    title = f"{ds.name} test set" + (" (re-ranked)" if cfg.test.rerank else "")
    table = write_report(out, {label: res}, title=title)
    print(table)
    result: dict[str, Any] = {"result": res, "table": table}
    if missing == "all":

        def loader_factory(m: str):
            return (eval_loader(cfg, ds.query, ds.name, m), eval_loader(cfg, ds.gallery, ds.name, m))

        def extract_fn(loader):
            f = extract_features(model, loader, device, amp, quiet)
            return f.feats, f.pids, f.camids, f.sceneids

        t = cfg.test
        # The row already evaluated above is reused rather than extracted again.
        done = {label: res}
        rows, _ = missing_modality_table(
            extract_fn,
            loader_factory,
            settings=[m for m in MISSING_SETTINGS if missing_label(m) not in done],
            use_scenes=use_scenes,
            metric=t.distance,
            max_rank=t.max_rank,
            rerank=t.rerank,
            k1=t.rerank_k1,
            k2=t.rerank_k2,
            lambda_value=t.rerank_lambda,
        )
        rows = {lab: done[lab] if lab in done else rows[lab] for lab in map(missing_label, MISSING_SETTINGS)}
        mm_table = format_table(
            rows, title=f"{ds.name} test set, missing modalities" + (" (re-ranked)" if t.rerank else "")
        )
        print(mm_table)
        (out / "missing_modality.txt").write_text(mm_table + "\n")
        save_results_json(out / "missing_modality.json", rows)
        result["missing"] = rows
    print(f"results written to {out}")
    return result


def run_extract(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str,
    out: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
) -> FeatureSet:
    """The ``mambapro extract`` command: features of one split to an .npz file."""
    from mambapro.data import build_dataset

    model, cfg, _ = load_model(checkpoint, config, overrides, extra={"data": {"root": str(data_root)}})
    device = next(model.parameters()).device
    ds = build_dataset(cfg.data.dataset, cfg.data.root, skip_broken=cfg.data.skip_broken)
    samples = {"query": ds.query, "gallery": ds.gallery, "train": ds.train}[split]
    check_model_cameras(model, samples, f"{ds.name} {split}")
    loader = eval_loader(cfg, samples, ds.name)
    feats = extract_features(model, loader, device, eval_amp(cfg, device), quiet, split)
    feats.save(out)
    print(f"{len(feats.paths)} {split} features of dimension {feats.feats.shape[1]} written to {out}")
    return feats
