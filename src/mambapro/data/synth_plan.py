"""What the synthetic generator draws before any pixel: identities and capture conditions.

The attribute vocabularies (palette, NIR reflectance and heat levels), :class:`Identity` and
:func:`make_identities` (with the look-alikes), the nuisance strengths, the per-camera and
per-scene conditions and the :class:`Capture` flags saved in the metadata. Each draw has its own
seeded ``numpy`` generator, so every value is a pure function of the seed and its indices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "HEAT_LEVELS",
    "NIR_LEVELS",
    "NUISANCES",
    "PALETTE",
    "Capture",
    "Identity",
    "Nuisances",
    "camera_params",
    "make_identities",
    "scene_params",
]

# Visible palette (sRGB in [0, 1]): well separated hues and lightness, shared by both object kinds.
PALETTE = np.array(
    [
        [0.85, 0.12, 0.10],  # red
        [0.95, 0.55, 0.08],  # orange
        [0.92, 0.85, 0.15],  # yellow
        [0.15, 0.62, 0.20],  # green
        [0.10, 0.70, 0.80],  # cyan
        [0.12, 0.22, 0.80],  # blue
        [0.55, 0.20, 0.70],  # purple
        [0.92, 0.92, 0.90],  # white
        [0.10, 0.10, 0.12],  # black
        [0.50, 0.50, 0.52],  # grey
    ],
    dtype=np.float32,
)
NIR_LEVELS = np.array([0.15, 0.45, 0.80], dtype=np.float32)
HEAT_LEVELS = np.array([0.15, 0.5, 0.85], dtype=np.float32)


@dataclass(frozen=True)
class Identity:
    """Attributes of one synthetic identity (indices into the small vocabularies above)."""

    pid: int
    split: str
    # body shape (shared by all modalities)
    width: float
    height: float
    kind: int  # vehicle: 0 sedan, 1 van, 2 pickup; person: 0 slim, 1 broad, 2 long coat
    accessory: int  # 0 none, 1 on the right (mirrored by the view), 2 on the top (roof box/hood)
    # RGB
    colour_a: int
    colour_b: int
    colour_c: int
    pattern: int
    tint: tuple[float, float, float]
    # NIR
    refl_a: int
    refl_b: int
    refl_c: int
    nir_texture: int  # 0 none, 1 diagonal weave, 2 large blobs
    # TIR
    heat_a: int
    heat_b: int
    heat_c: int
    hotspot: int  # person: 0 none, 1 hands warm, 2 chest device; vehicle: 0 front engine, 1 rear, 2 both


def make_identities(seed: int, ids: int, test_ids: int) -> list[Identity]:
    """Draw ``ids`` identities: pids ``1..ids - test_ids`` train, the rest test.

    Look-alikes copy one modality's attributes (and the shape) from an earlier identity of the
    same split, so each modality alone is ambiguous on some pairs.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    out: list[Identity] = []
    num_train = ids - test_ids
    for pid in range(1, ids + 1):
        split = "train" if pid <= num_train else "test"
        a = dict(
            pid=pid,
            split=split,
            width=float(rng.uniform(0.85, 1.15)),
            height=float(rng.uniform(0.9, 1.0)),
            kind=int(rng.integers(3)),
            accessory=int(rng.choice(3, p=[0.4, 0.35, 0.25])),
            colour_a=int(rng.integers(len(PALETTE))),
            colour_b=int(rng.integers(len(PALETTE))),
            colour_c=int(rng.integers(len(PALETTE))),
            pattern=int(rng.integers(4)),
            tint=tuple(float(x) for x in rng.uniform(-0.06, 0.06, 3)),
            refl_a=int(rng.integers(3)),
            refl_b=int(rng.integers(3)),
            refl_c=int(rng.integers(3)),
            nir_texture=int(rng.integers(3)),
            heat_a=int(rng.integers(3)),
            heat_b=int(rng.integers(3)),
            heat_c=int(rng.integers(3)),
            hotspot=int(rng.integers(3)),
        )
        # A look-alike copies attributes from an earlier identity of its split (the first of a
        # split has none to copy).
        same_split = [o for o in out if o.split == split]
        roll = rng.random()
        if same_split and roll < 0.36:
            src = asdict(same_split[int(rng.integers(len(same_split)))])
            group = ("rgb", "nir", "tir")[min(int(roll / 0.12), 2)]
            keys = {
                "rgb": ("colour_a", "colour_b", "colour_c", "pattern", "tint"),
                "nir": ("refl_a", "refl_b", "refl_c", "nir_texture"),
                "tir": ("heat_a", "heat_b", "heat_c", "hotspot"),
            }[group] + ("width", "height", "kind", "accessory")
            for k in keys:
                a[k] = src[k]
        out.append(Identity(**a))
    return out


@dataclass(frozen=True)
class Nuisances:
    """Strength of the per-capture nuisances of the shipped dataset.

    Probabilities are per capture; ranges are uniform draws. ``night`` scales each camera's
    night rate (drawn in 0.15-0.45).
    """

    scale: tuple[float, float] = (0.72, 1.0)  # object size relative to the frame
    shift: float = 0.9  # fraction of the free margin the object may move by
    night: float = 1.0
    glare: float = 0.35
    low_thermal: float = 0.3
    occlusion: float = 0.33
    clutter: tuple[int, int] = (3, 8)  # number of background shapes
    clutter_saturation: float = 0.6  # 1: clutter as colourful as the objects
    light: tuple[float, float] = (0.6, 1.15)  # daylight gain
    noise: float = 1.0  # scales the per-camera sensor noise


NUISANCES = Nuisances()


@dataclass(frozen=True)
class Capture:
    """Nuisance flags of one capture (saved in the metadata for analysis)."""

    pid: int
    camid: int  # 0-based
    shot: int
    scene: int  # 0-based session index (shot % scenes)
    view: str
    night: bool
    glare: bool
    low_thermal: bool
    occluded: bool


def camera_params(seed: int, cam: int) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 104729, cam]))
    return dict(
        cast=rng.uniform(0.8, 1.2, 3).astype(np.float32),
        bg_colours=rng.uniform(0.1, 0.9, (3, 3)).astype(np.float32),
        bg_nir=rng.uniform(0.1, 0.7, 2).astype(np.float32),
        view_pref=rng.dirichlet([1.0, 1.0, 1.0]),
        night_rate=float(rng.uniform(0.15, 0.45)),
        thermal_gain=float(rng.uniform(0.7, 1.0)),
        blur=float(rng.uniform(0.3, 1.2)),
        noise=float(rng.uniform(0.02, 0.05)),
        horizon=float(rng.uniform(0.45, 0.75)),
    )


def scene_params(seed: int, pid: int, scene: int) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 15485863, pid, scene]))
    return dict(night_bias=float(rng.uniform(-0.15, 0.15)), ambient=float(rng.uniform(0.0, 0.5)))
