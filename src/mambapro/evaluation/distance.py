"""Query-gallery distance matrices from features, computed in blocks.

The evaluation protocol ranks by squared Euclidean distance between L2-normalised
features; cosine distance ``1 - cos`` is offered as well (for unit vectors it is exactly half the
squared Euclidean distance, so both rank identically up to rounding).

Design: features are converted once to float32 torch tensors on their own device (numpy
inputs stay on the CPU, CUDA tensors are computed on the GPU), and the (Q, G) result is filled
``block_size`` query rows at a time, so the only temporary is one (block, G) block. The result
is a float32 numpy array on the CPU: (Q, G) x 4 bytes is the irreducible memory cost (8 GB at
20,000 x 100,000).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mambapro.parts import DISTANCES

__all__ = ["compute_distmat", "prepare_features", "pairwise_distance", "paired_distance", "METRICS"]

#: The distances offered (``test.distance``).
METRICS = DISTANCES

#: Entries of the distance matrix computed per block when ``block_size`` is not given.
_BLOCK_ELEMENTS = 1 << 24


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.from_numpy(np.ascontiguousarray(x))
        except TypeError as err:
            raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from err
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_samples, feature_dim), got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.float()
    if not torch.isfinite(t).all():
        row = int(torch.nonzero(~torch.isfinite(t))[0, 0])
        raise ValueError(f"{name} row {row} holds NaN or inf: features must be finite")
    return t


def prepare_features(
    feats: Any, name: str = "feats", metric: str = "euclidean", normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (N, D) features; return them as float32 (L2-normalised where the metric needs it)
    with their squared norms (N,)."""
    if metric not in METRICS:
        raise ValueError(f"metric = {metric!r} is not one of: {', '.join(METRICS)}")
    f = _as_tensor(feats, name)
    if metric == "cosine" or normalize:
        # A zero vector stays zero (eps), so its distance to everything is 1 (cosine) or its
        # squared norm contribution is 0 (euclidean): it is never silently NaN.
        f = F.normalize(f, dim=1)
    return f, (f * f).sum(1)


def pairwise_distance(
    q: torch.Tensor, g: torch.Tensor, qq: torch.Tensor, gg: torch.Tensor, metric: str
) -> torch.Tensor:
    """Distances between prepared features.

    Args:
        q: (b, D) and g: (G, D) outputs of :func:`prepare_features`; qq: (b,), gg: (G,) their
            squared norms.

    Returns:
        (b, G) float32: ``|q|^2 + |g|^2 - 2 q.g`` clamped at 0 (euclidean), or ``1 - q.g``
        clamped to [0, 2] (cosine).
    """
    dot = q @ g.T
    if metric == "cosine":
        # Rounding can push |q.g| of unit vectors past 1; distances stay within [0, 2].
        return (1.0 - dot).clamp_(0.0, 2.0)
    return (qq[:, None] + gg[None, :] - 2.0 * dot).clamp_(min=0.0)


def paired_distance(
    a: torch.Tensor, b: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor, metric: str
) -> torch.Tensor:
    """Distances between aligned rows of prepared features: (P, D), (P, D), (P,), (P,) -> (P,).

    The same formula as :func:`pairwise_distance`, for scattered pairs where a matrix product
    would compute far more than needed.
    """
    dot = (a * b).sum(1)
    if metric == "cosine":
        return (1.0 - dot).clamp_(0.0, 2.0)
    return (aa + bb - 2.0 * dot).clamp_(min=0.0)


def compute_distmat(
    qf: Any,
    gf: Any,
    metric: str = "euclidean",
    normalize: bool = True,
    block_size: int | None = None,
) -> np.ndarray:
    """The (Q, G) distance matrix between query and gallery features.

    Args:
        qf: (Q, D) query features, numpy or torch (any float dtype; computed in float32 on the
            features' device).
        gf: (G, D) gallery features.
        metric: ``"euclidean"`` (squared Euclidean) or ``"cosine"`` (``1 - cos``).
        normalize: L2-normalise features first. Cosine always normalises.
        block_size: query rows per block; ``None`` picks about 16M entries (64 MB) per block.

    Returns:
        (Q, G) float32 numpy array.
    """
    if metric not in METRICS:
        raise ValueError(f"metric = {metric!r} is not one of: {', '.join(METRICS)}")
    q, qq = prepare_features(qf, "query features", metric, normalize)
    g, gg = prepare_features(gf, "gallery features", metric, normalize)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features have dimension {q.shape[1]} but gallery features have {g.shape[1]}")
    if q.device != g.device:
        g, gg = g.to(q.device), gg.to(q.device)
    num_q, num_g = q.shape[0], g.shape[0]
    if block_size is None:
        block_size = max(1, _BLOCK_ELEMENTS // max(num_g, 1))
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    out = np.empty((num_q, num_g), dtype=np.float32)
    with torch.no_grad():
        for a in range(0, num_q, block_size):
            b = min(a + block_size, num_q)
            out[a:b] = pairwise_distance(q[a:b], g, qq[a:b], gg, metric).cpu().numpy()
    return out
