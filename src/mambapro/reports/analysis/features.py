"""The shared feature collection of ``analyze``: one eval pass of a model over the test captures
that keeps every feature the figures read (:class:`AnalysisFeatures`), the mixed patch tokens of
the aggregator's ``mixed_taps`` included."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mambapro.modalities import ModalitySet
from mambapro.retrieval.features import FeatureSet, eval_pass

__all__ = ["AnalysisFeatures", "extract_analysis_features", "mixed_taps"]


@dataclass
class AnalysisFeatures:
    """Everything ``analyze`` reads from one pass of a model over samples.

    ``test`` (N, F) is the model's test feature (what ``model(batch)`` returns in eval mode);
    ``ori`` (N, M·C) and ``fuse`` (N, F') the two heads' pre-BN features (``fuse`` None without
    an aggregator); ``before`` (M, N, C) the modalities' cls tokens (``ori``'s chunks), ``after``
    (M, N, C) the mean of their mixed patch tokens and ``readout`` (M, N, C) the readout's
    per-modality outputs (``fuse``'s chunks), both None without a mixing aggregator; M is the
    number of the model's ``modalities`` (3 for RGB, NI, TI), in their order.
    ``ori_test`` / ``fuse_test`` are the heads' features at test time (after their BatchNorm
    when ``test.neck_feat=after``).
    """

    test: np.ndarray
    ori: np.ndarray
    fuse: np.ndarray | None
    ori_test: np.ndarray
    fuse_test: np.ndarray | None
    before: np.ndarray
    after: np.ndarray | None
    readout: np.ndarray | None
    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    paths: list[str]
    modalities: ModalitySet

    def subset(self, rows: Sequence[int] | np.ndarray) -> AnalysisFeatures:
        rows = np.asarray(rows, dtype=np.int64)

        def take(a: np.ndarray | None, axis: int = 0) -> np.ndarray | None:
            return None if a is None else np.take(a, rows, axis=axis)

        return AnalysisFeatures(
            test=take(self.test),
            ori=take(self.ori),
            fuse=take(self.fuse),
            ori_test=take(self.ori_test),
            fuse_test=take(self.fuse_test),
            before=take(self.before, 1),
            after=take(self.after, 1),
            readout=take(self.readout, 1),
            pids=take(self.pids),
            camids=take(self.camids),
            sceneids=take(self.sceneids),
            paths=[self.paths[i] for i in rows],
            modalities=self.modalities,
        )

    def feature_set(self) -> FeatureSet:
        """The test features as the :class:`FeatureSet` that ``extract_features`` would give."""
        return FeatureSet(self.test, self.pids, self.camids, self.sceneids, list(self.paths))


def mixed_taps(model: nn.Module) -> nn.ModuleList | None:
    """The aggregator's per-modality ``mixed_taps`` (None: the model mixes no patch tokens)."""
    taps = getattr(model.aggregator, "mixed_taps", None) if model.aggregator is not None else None
    return taps if taps is not None and len(taps) == len(model.modalities) else None


def extract_analysis_features(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    desc: str = "features",
) -> AnalysisFeatures:
    """One eval pass of ``model`` over ``loader`` collecting :class:`AnalysisFeatures`."""
    modalities: ModalitySet = model.modalities
    m = len(modalities)
    taps = mixed_taps(model)
    pooled: list[Tensor | None] = [None] * m
    handles = []
    if taps is not None:
        for k, tap in enumerate(taps):

            def hook(_module: nn.Module, _inputs: Any, output: Tensor, k: int = k) -> None:
                pooled[k] = output.float().mean(dim=1)

            handles.append(tap.register_forward_hook(hook))

    def step(inputs: dict[str, Any]) -> dict[str, Tensor]:
        pooled[:] = [None] * m
        feats = model.features(inputs)
        ori_t = model.test_time("ori", feats["ori"])
        out = {"ori": feats["ori"], "ori_t": ori_t}
        if "fuse" in feats:
            out.update(fuse=feats["fuse"], fuse_t=model.test_time("fuse", feats["fuse"]))
        out["test"] = out["ori_t"] if model.test_feature == "ori" else out["fuse_t"]
        if taps is not None and all(p is not None for p in pooled):
            out["after"] = torch.stack(pooled, dim=1)  # (B, M, C)
        return out

    try:
        cols, labelled = eval_pass(model, loader, device, amp, quiet, desc, step)
    finally:
        for h in handles:
            h.remove()

    ori = cols["ori"]
    fuse = cols.get("fuse")
    c = ori.shape[1] // m
    before = np.stack([ori[:, k * c : (k + 1) * c] for k in range(m)])
    after = np.ascontiguousarray(cols["after"].transpose(1, 0, 2)) if "after" in cols else None  # (M, N, C)
    readout = None
    if after is not None and fuse is not None and fuse.shape[1] == m * c:
        readout = np.stack([fuse[:, k * c : (k + 1) * c] for k in range(m)])
    return AnalysisFeatures(
        test=cols["test"],
        ori=ori,
        fuse=fuse,
        ori_test=cols["ori_t"],
        fuse_test=cols.get("fuse_t"),
        before=before,
        after=after,
        readout=readout,
        pids=labelled.pids,
        camids=labelled.camids,
        sceneids=labelled.sceneids,
        paths=labelled.paths,
        modalities=modalities,
    )
