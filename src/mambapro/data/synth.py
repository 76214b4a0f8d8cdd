"""Embedded synthetic tri-modal ReID dataset: real JPEGs in the exact layout of a real benchmark.

The generator exists so that every command (training, evaluation, the demo) runs anywhere without
downloads. It is meant to be a *fair small ReID problem*: identity lives in coarse attributes that
show differently in each modality, and every capture is spoiled by nuisances strong enough that
raw pixels do not solve it, while a small network trained on the training identities can learn to
see through them. Train and test identities are disjoint, so a model must learn attributes, not
memorise identities.

Object model
------------
An identity is a person (``rgbnt201`` layout, 256x128 portrait) or a vehicle (``rgbnt100`` and
``msvr310`` layouts, 128x256 landscape per modality) drawn as a few *zones* in object coordinates
``(u, v)`` in ``[0, 1]^2`` (u along the width, v down the height):

* person: head, upper body with arms (zone A), legs (zone B), shoes, an optional bag (zone C);
* vehicle: lower body (zone A), cabin (zone B) with windows, wheels, an optional roof box and a
  side stripe (zone C).

Each identity draws, independently per modality, a small set of discrete attributes. Values come
from small vocabularies, so test identities are new *combinations* of values seen in training.
About a third of the identities are "look-alikes": they copy the attributes of one modality (and
the body shape) from an earlier identity of the same split, so one modality alone cannot tell
them apart and fusing modalities helps.

Model of each modality
----------------------
* **RGB** (visible light): a palette colour per zone (A, B, accent C, with a small per-identity
  tint) and a pattern drawn in the accent colour on zone A (solid, horizontal stripes, vertical
  stripes, checks for persons; solid, side stripe, two-tone, door panel for vehicles). Lit by
  a scene illuminant: daylight level, a per-camera white balance cast and vertical shading. At
  *night* the visible image is nearly dark (gain 0.04-0.12) and dominated by sensor noise.
* **NI** (near infrared, active illumination): ignores colour. Each zone has a reflectance level
  (dyes and fabrics reflect NIR independently of their visible colour) and zone B may carry a
  coarse NIR-only texture (diagonal weave or a large blob pattern). Nuisances: uneven active
  illumination (vignetting), frequent *glare* (a saturated blob from a lamp or headlight).
* **TI** (thermal infrared): a heat signature of warm parts. Persons: warm head and hands, a heat
  level per clothing zone (insulation) and a warm or cold bag. Vehicles: an engine hot spot at the
  front or the rear, warm wheels, a cabin heat level, warm or cold body panels. Nuisances: the
  ambient temperature of the capture sets the contrast; on *low-contrast* captures (warm day)
  the object barely stands out. Thermal images are blurrier than the other two.

Nuisances shared by the three modalities (they are pixel-aligned)
-----------------------------------------------------------------
Per camera: viewpoint preference, white balance, background palette and layout, night rate,
thermal gain, blur and noise level. Per capture: viewpoint (persons: front/back/side; vehicles:
left/right/three-quarter, drawn as a horizontal mirror and a width squash), scale (0.72-1.0) and
shift, illumination, partial occlusion (a pole, a passer-by or a low wall/car in front, with its
own appearance in each modality) in about a third of the captures, background clutter (random
shapes whose colours, reflectances and temperatures overlap with the objects'), Gaussian noise and
blur. Captures are grouped in ``scenes`` sessions (``shot % scenes``); a session shares its time
of day across cameras for one identity, which is what the MSVR310 protocol (same scene is junk)
is about.

Layouts and names
---------------------------
* ``rgbnt201``: ``RGBNT201/{train_171,test}/{RGB,NI,TI}/{pid:06d}_cam{c+1}_{scene}_{shot:02d}.jpg``;
  the test folder is both query and gallery.
* ``rgbnt100``: ``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/
  {pid:04d}_c{c+1:03d}_{shot:04d}.jpg`` with RGB, NI, TI side by side (128x768). As in the real
  dataset the query folder holds copies of gallery images (the first shot of each identity and
  camera).
* ``msvr310``: ``msvr310/{bounding_box_train,query3,bounding_box_test}/{pid:04d}/{vis,ni,th}/
  {pid:04d}_s{scene:03d}_v{c}_{shot:03d}.jpg``; query as for ``rgbnt100``.

Everything is a pure function of ``seed`` and the capture's ``(pid, camera, shot)`` (each capture
has its own ``numpy`` generator), so the output is identical whatever the generation order.
``generate`` also writes ``synth_meta.json`` next to the splits: the parameters, and per capture
the nuisance flags (night, glare, low thermal contrast, occlusion, view), for analysis and tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from ..errors import ConfigError, DatasetError, check_output_dir
from .specs import DATASETS, DatasetSpec

__all__ = [
    "LAYOUTS",
    "META_FILE",
    "SynthParams",
    "Capture",
    "Identity",
    "dataset_dir",
    "generate",
    "load_meta",
    "make_identities",
    "render_capture",
    "summary",
]

#: Layouts the generator writes: every registered dataset, by its lower-case name.
LAYOUTS = tuple(DATASETS.names())
META_FILE = "synth_meta.json"
# Bumped whenever the images for a given seed change, so a cached tree is regenerated.
GENERATOR_VERSION = 1

_JPEG_QUALITY = 92

# Visible palette (sRGB in [0, 1]): well separated hues and lightness, shared by both object kinds.
_PALETTE = np.array(
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
_NIR_LEVELS = np.array([0.15, 0.45, 0.80], dtype=np.float32)
_HEAT_LEVELS = np.array([0.15, 0.5, 0.85], dtype=np.float32)

# Zone codes of the label map.
_BG, _A, _B, _C, _SKIN, _DARK, _WHEEL = range(7)


@dataclass
class SynthParams:
    """Parameters of the embedded synthetic dataset (``mambapro synth``; ``data.synth``)."""

    seed: int = 0
    ids: int = 40  # total identities; train and test identities are disjoint
    test_ids: int = 20
    cameras: int = 4
    shots: int = 3  # captures per identity and camera
    scenes: int = 3  # capture sessions (the scene of datasets with scenes, MSVR310)


def dataset_dir(layout: str, out: str | Path) -> Path:
    """The dataset folder that ``generate(layout, out)`` fills (``out/RGBNT201`` etc.)."""
    return Path(out) / _spec(layout).folder


def _spec(layout: str) -> DatasetSpec:
    """The dataset spec of a layout name (``rgbnt201``, any case)."""
    if str(layout).lower() not in DATASETS:
        raise ConfigError(
            f"unknown synthetic layout {layout!r}; choose one of: {', '.join(DATASETS.names())}"
        )
    return DATASETS.get(str(layout))


# --------------------------------------------------------------------------- identities


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
            colour_a=int(rng.integers(len(_PALETTE))),
            colour_b=int(rng.integers(len(_PALETTE))),
            colour_c=int(rng.integers(len(_PALETTE))),
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


# --------------------------------------------------------------------------- capture conditions


@dataclass(frozen=True)
class _Nuisances:
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


_NUISANCES = _Nuisances()


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


def _camera_params(seed: int, cam: int) -> dict[str, Any]:
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


def _scene_params(seed: int, pid: int, scene: int) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 15485863, pid, scene]))
    return dict(night_bias=float(rng.uniform(-0.15, 0.15)), ambient=float(rng.uniform(0.0, 0.5)))


# --------------------------------------------------------------------------- drawing helpers


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W) or (H, W, 3) float image in [0, 1] (PIL is fast at this)."""
    if sigma < 0.3:
        return img
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    out = Image.fromarray(u8).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(out, dtype=np.float32) / 255.0


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _person_zones(ident: Identity, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label map (H, W) of a person in object coordinates, and the hot-spot mask."""
    half = {0: 0.27, 1: 0.34, 2: 0.30}[ident.kind]
    z = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.int8)
    du = np.abs(u - 0.5)
    legs = _box(u, v, 0.0, 1.0, 0.52, 0.96) & (du <= half - 0.03) & (du >= 0.035)
    z[legs] = _B
    z[legs & (v >= 0.92)] = _DARK
    top = 0.80 if ident.kind == 2 else 0.53  # a long coat covers the thighs
    torso = _box(u, v, 0.0, 1.0, 0.16, top) & (du <= half)
    arms = _box(u, v, 0.0, 1.0, 0.18, 0.50) & (du > half) & (du <= half + 0.09)
    hands = _box(u, v, 0.0, 1.0, 0.50, 0.56) & (du > half) & (du <= half + 0.08)
    z[torso | arms] = _A
    z[hands] = _SKIN
    z[_ellipse(u, v, 0.5, 0.085, 0.14, 0.075)] = _SKIN
    if ident.accessory == 1:  # shoulder bag at one side
        z[_box(u, v, 0.5 + half + 0.02, 0.5 + half + 0.24, 0.32, 0.56)] = _C
    elif ident.accessory == 2:  # hat
        z[_box(u, v, 0.34, 0.66, 0.0, 0.05)] = _C
    if ident.hotspot == 1:
        hot = z == _SKIN
    elif ident.hotspot == 2:
        hot = _ellipse(u, v, 0.5, 0.33, 0.12, 0.06) & (z == _A)
    else:
        hot = np.zeros_like(z, dtype=bool)
    return z, hot


def _vehicle_zones(ident: Identity, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label map (H, W) of a vehicle (side view, front at u = 1) and the engine hot-spot mask."""
    z = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.int8)
    body = _box(u, v, 0.02, 0.98, 0.42, 0.82) & ~(
        ((u < 0.08) | (u > 0.92)) & (v < 0.50)
    )  # rounded corners, coarse
    z[body] = _A
    cab_u0, cab_u1, cab_v0 = {0: (0.26, 0.72, 0.14), 1: (0.04, 0.86, 0.04), 2: (0.46, 0.80, 0.10)}[ident.kind]
    slope = (0.42 - v) * 0.25
    cabin = _box(u, v, 0.0, 1.0, cab_v0, 0.42) & (u >= cab_u0 + slope) & (u <= cab_u1 - slope)
    z[cabin] = _B
    win = cabin & _box(u, v, 0.0, 1.0, cab_v0 + 0.05, 0.38) & (u >= cab_u0 + slope + 0.04)
    win &= u <= cab_u1 - slope - 0.04
    z[win] = _DARK
    if ident.accessory == 2:  # roof box
        mid = 0.5 * (cab_u0 + cab_u1)
        z[_box(u, v, mid - 0.16, mid + 0.16, cab_v0 - 0.09, cab_v0)] = _C
    elif ident.accessory == 1:  # rear spoiler / ladder: a block at the rear top
        z[_box(u, v, 0.02, 0.16, 0.30, 0.42)] = _C
    for cu in (0.2, 0.8):
        z[_ellipse(u, v, cu, 0.82, 0.075, 0.15)] = _WHEEL
    front = _box(u, v, 0.84, 0.98, 0.46, 0.78) & (z == _A)
    rear = _box(u, v, 0.02, 0.16, 0.46, 0.78) & (z == _A)
    hot = {0: front, 1: rear, 2: front | rear}[ident.hotspot]
    return z, hot


def _rgb_pattern(ident: Identity, u: np.ndarray, v: np.ndarray, person: bool) -> np.ndarray:
    """Where the accent colour replaces colour A inside zone A (coarse, survives downsampling)."""
    p = ident.pattern
    if p == 0:
        return np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    if person:
        h = (np.floor(v * 11.0) % 2) == 1
        w = (np.floor(u * 5.0) % 2) == 1
        h, w = np.broadcast_arrays(h, w)
        return {1: h, 2: w, 3: h ^ w}[p]
    if p == 1:  # side stripe
        return _box(u, v, 0.0, 1.0, 0.56, 0.64)
    if p == 2:  # two-tone: lower half of the body
        return _box(u, v, 0.0, 1.0, 0.64, 1.0)
    return _box(u, v, 0.34, 0.62, 0.44, 0.78)  # door panel


def _nir_texture(ident: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    t = ident.nir_texture
    if t == 1:
        return (np.floor((u + v) * 7.0) % 2) == 1
    if t == 2:
        return np.sin(u * 9.0) * np.sin(v * 13.0) > 0.25
    return np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)


# --------------------------------------------------------------------------- rendering


def render_capture(
    ident: Identity,
    layout: str,
    cam: int,
    shot: int,
    *,
    seed: int = SynthParams.seed,
    scenes: int = SynthParams.scenes,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Capture]:
    """Render one pixel-aligned capture of ``ident`` by camera ``cam`` (0-based).

    Returns the RGB, NI and TI images as ``(H, W, 3)`` uint8 arrays (NI and TI are grey in three
    channels, as the real datasets store them) and the capture's nuisance flags.
    """
    spec = _spec(layout)
    person = spec.subject == "person"
    H, W = spec.img_size
    cp = _camera_params(seed, cam)
    scene = shot % scenes
    sp = _scene_params(seed, ident.pid, scene)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 31337, ident.pid, cam, shot]))

    # ---- viewpoint, scale, shift
    view_idx = int(rng.choice(3, p=0.5 * cp["view_pref"] + 0.5 / 3))
    view = (("front", "back", "side") if person else ("left", "right", "three-quarter"))[view_idx]
    mirror = view_idx == 1 or (view_idx == 2 and rng.random() < 0.5)
    squash = rng.uniform(0.58, 0.72) if view_idx == 2 else 1.0
    nz = _NUISANCES
    scale = rng.uniform(*nz.scale)
    if person:
        bh = H * 0.92 * scale * ident.height
        bw = min(W * 0.78 * scale * ident.width * squash, W * 0.98)
    else:
        bw = W * 0.92 * scale * ident.width * squash
        bh = min(H * 0.80 * scale * ident.height, H * 0.96)
    cx = W / 2 + rng.uniform(-0.5, 0.5) * max(W - bw, 0) * nz.shift
    cy = H / 2 + rng.uniform(-0.5, 0.5) * max(H - bh, 0) * nz.shift
    xs = (np.arange(W, dtype=np.float32) + 0.5)[None, :]
    ys = (np.arange(H, dtype=np.float32) + 0.5)[:, None]
    u = (xs - (cx - bw / 2)) / bw
    v = (ys - (cy - bh / 2)) / bh
    if mirror:
        u = 1.0 - u
    zones, hot = (_person_zones if person else _vehicle_zones)(ident, u, v)
    obj = zones != _BG

    # ---- capture conditions
    night = bool(rng.random() < nz.night * np.clip(cp["night_rate"] + sp["night_bias"], 0.05, 0.6))
    glare = bool(rng.random() < nz.glare)
    low_thermal = bool(rng.random() < nz.low_thermal)
    occluded = bool(rng.random() < nz.occlusion)

    # ---- background: per-camera palette, ground plane, clutter shared by the three modalities
    yy = np.broadcast_to(ys / H, (H, W))
    ground = yy > cp["horizon"]
    bg_rgb = np.where(ground[..., None], cp["bg_colours"][0], cp["bg_colours"][1]).astype(np.float32)
    bg_rgb = bg_rgb * (0.85 + 0.3 * yy[..., None])
    bg_nir = np.where(ground, cp["bg_nir"][0], cp["bg_nir"][1]).astype(np.float32)
    bg_tir = np.where(ground, 0.25, 0.15).astype(np.float32)
    for _ in range(int(rng.integers(nz.clutter[0], nz.clutter[1] + 1))):
        cu, cv = rng.uniform(0, W), rng.uniform(0, H)
        ru, rv = rng.uniform(0.05, 0.3) * W, rng.uniform(0.05, 0.3) * H
        if rng.random() < 0.5:
            m = _ellipse(xs, ys, cu, cv, ru, rv)
        else:
            m = _box(xs, ys, cu - ru, cu + ru, cv - rv, cv + rv)
        m = np.broadcast_to(m, (H, W))
        col = _PALETTE[int(rng.integers(len(_PALETTE)))] if rng.random() < 0.5 else rng.uniform(0, 1, 3)
        col = nz.clutter_saturation * col + (1 - nz.clutter_saturation) * col.mean()
        bg_rgb[m] = col
        bg_nir[m] = rng.uniform(0.05, 0.9)
        # Most clutter sits near the ambient temperature; some is warm (lamps, engines, people).
        bg_tir[m] = rng.uniform(0.1, 0.35) if rng.random() < 0.8 else rng.uniform(0.6, 0.9)

    # ---- RGB
    pal = np.clip(_PALETTE + np.asarray(ident.tint, dtype=np.float32), 0.0, 1.0)
    zone_rgb = np.stack(
        [
            np.zeros(3, np.float32),
            pal[ident.colour_a],
            pal[ident.colour_b],
            pal[ident.colour_c],
            np.array([0.80, 0.62, 0.50], np.float32),  # skin
            np.array([0.08, 0.08, 0.10], np.float32),  # shoes / windows
            np.array([0.06, 0.06, 0.06], np.float32),  # tyres
        ]
    )
    rgb = zone_rgb[zones]
    pat = _rgb_pattern(ident, u, v, person) & (zones == _A)
    rgb[pat] = pal[ident.colour_c]
    rgb = np.where(obj[..., None], rgb * (1.05 - 0.25 * np.broadcast_to(v, (H, W))[..., None]), bg_rgb)

    # ---- NI: colour-blind reflectance + NIR-only texture
    zone_nir = np.array(
        [
            0.0,
            _NIR_LEVELS[ident.refl_a],
            _NIR_LEVELS[ident.refl_b],
            _NIR_LEVELS[ident.refl_c],
            0.55,
            0.1,
            0.1,
        ],
        dtype=np.float32,
    )
    nir = zone_nir[zones]
    tex = _nir_texture(ident, u, v) & (zones == _B)
    nir[tex] = np.where(nir[tex] > 0.5, nir[tex] - 0.4, nir[tex] + 0.4)
    nir = np.where(obj, nir, bg_nir)

    # ---- TI: heat of warm parts over the ambient temperature
    body_t = 0.65 if person else 0.45
    zone_tir = np.array(
        [
            0.0,
            body_t * _HEAT_LEVELS[ident.heat_a] + 0.1,
            body_t * _HEAT_LEVELS[ident.heat_b] + 0.1,
            _HEAT_LEVELS[ident.heat_c] * 0.8,
            0.92,  # skin
            0.35,
            0.55 if not person else 0.35,  # warm tyres
        ],
        dtype=np.float32,
    )
    tir = zone_tir[zones]
    tir[hot] = 0.97
    tir = np.where(obj, tir, bg_tir)

    # ---- occlusion: an object in front of the target, with its own appearance in each modality
    if occluded:
        kind = int(rng.integers(3))
        x0, x1 = cx - bw / 2, cx + bw / 2
        y0, y1 = cy - bh / 2, cy + bh / 2
        if kind == 0:  # pole
            pw = rng.uniform(0.12, 0.25) * bw
            px = rng.uniform(x0, x1 - pw)
            m = _box(xs, ys, px, px + pw, 0, H)
        elif kind == 1:  # low wall / parked car
            oh = rng.uniform(0.25, 0.45) * bh
            m = _box(xs, ys, 0, W, y1 - oh, H)
        else:  # passer-by blob at one side
            side = x0 if rng.random() < 0.5 else x1
            m = _ellipse(xs, ys, side, rng.uniform(y0, y1), rng.uniform(0.2, 0.35) * bw, 0.4 * bh)
        m = np.broadcast_to(m, (H, W))
        rgb[m] = rng.uniform(0.0, 1.0, 3)
        nir[m] = rng.uniform(0.05, 0.9)
        tir[m] = rng.uniform(0.1, 0.9)

    # ---- illumination and sensors
    if night:
        light = rng.uniform(0.04, 0.12)
        rgb = rgb * light * cp["cast"] * np.array([1.0, 0.9, 0.7], np.float32)
        rgb_noise = rng.uniform(0.03, 0.06)
    else:
        light = rng.uniform(*nz.light)
        rgb = rgb * light * cp["cast"]
        rgb_noise = cp["noise"] * nz.noise
    r2 = ((xs - rng.uniform(0.3, 0.7) * W) / W) ** 2 + ((ys - rng.uniform(0.3, 0.7) * H) / H) ** 2
    nir = nir * (rng.uniform(0.7, 1.1) * (1.0 - 0.9 * r2))  # uneven active illumination
    if glare:
        gx, gy = rng.uniform(0, W), rng.uniform(0, H)
        gr = rng.uniform(0.06, 0.16) * max(H, W)
        nir = nir + rng.uniform(0.6, 1.2) * np.exp(-(((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * gr * gr)))
    ambient = sp["ambient"] + rng.uniform(-0.1, 0.1) + (0.45 if low_thermal else 0.0) - (0.1 if night else 0)
    ambient = float(np.clip(ambient, 0.0, 0.9))
    contrast = cp["thermal_gain"] * (0.25 if low_thermal else 1.0)
    tir = ambient + contrast * (tir - 0.2) * (1.0 - 0.6 * ambient)

    blur = cp["blur"] + rng.uniform(0.0, 0.8)
    rgb = _blur(np.clip(rgb, 0, 1), blur) + rng.normal(0, rgb_noise, (H, W, 3)).astype(np.float32)
    nir = _blur(np.clip(nir, 0, 1), blur) + rng.normal(0, cp["noise"] * nz.noise, (H, W)).astype(np.float32)
    tir = _blur(np.clip(tir, 0, 1), blur + 1.2) + rng.normal(0, 0.02, (H, W)).astype(np.float32)

    def to_u8(x: np.ndarray) -> np.ndarray:
        x = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
        return x if x.ndim == 3 else np.repeat(x[..., None], 3, axis=2)

    cap = Capture(ident.pid, cam, shot, scene, view, night, glare, low_thermal, occluded)
    return to_u8(rgb), to_u8(nir), to_u8(tir), cap


# --------------------------------------------------------------------------- writing


def _file_name(spec: DatasetSpec, pid: int, cam: int, shot: int, scene: int) -> str:
    return spec.synth_name.format(pid=pid, cam=cam, cam1=cam + 1, scene=scene, scene1=scene + 1, shot=shot)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGB").save(path, quality=_JPEG_QUALITY)


def check_params(layout: str, p: SynthParams, prefix: str = "synth: ") -> None:
    """Raise :class:`~mambapro.errors.ConfigError` when ``p`` cannot make a usable ``layout`` set.

    ``prefix`` names where the values came from (``data.synth.`` in a config).
    """
    spec = _spec(layout)

    def bad(name: str, value: int, rule: str) -> ConfigError:
        return ConfigError(f"{prefix}{name} = {value} {rule}")

    if p.seed < 0:
        raise bad("seed", p.seed, "must be >= 0")
    if p.test_ids < 1:
        raise bad("test_ids", p.test_ids, "must be >= 1")
    if p.ids - p.test_ids < 1:
        raise bad(
            "ids", p.ids, f"must exceed test_ids = {p.test_ids} (train and test identities are disjoint)"
        )
    if not 2 <= p.cameras <= spec.max_cameras:
        raise bad("cameras", p.cameras, f"must be in 2..{spec.max_cameras} for the {spec.layout} layout")
    if p.shots < 1:
        raise bad("shots", p.shots, "must be >= 1")
    if p.scenes < 1 or p.scenes > 999:
        raise bad("scenes", p.scenes, "must be in 1..999")
    if spec.has_scenes and min(p.shots, p.scenes) < 2:
        raise ConfigError(
            f"{prefix}shots = {p.shots}, scenes = {p.scenes}: the {spec.layout} layout needs shots >= 2 "
            "and scenes >= 2 so that queries have matches in another scene"
        )


def generate(layout: str, out: str | Path, *, progress: bool = False, **params: int) -> Path:
    """Write the synthetic dataset in ``layout`` under the data root ``out``; return its folder.

    ``params`` are the fields of :class:`SynthParams` (seed, ids, test_ids, cameras, shots,
    scenes), defaults there: ``ids`` identities (``test_ids`` of them for testing), each captured
    ``shots`` times by each of ``cameras`` cameras.

    Nothing is ever replaced: an existing dataset folder at that place (synthetic or not) is
    left alone and is an error naming it. The tree is written under a temporary name next to
    its place and renamed at the end, so an interrupted run leaves no partial dataset.
    """
    spec = _spec(layout)
    p = SynthParams(**params)
    check_params(layout, p)
    final = dataset_dir(layout, out)
    if final.exists():
        raise DatasetError(f"synth: {final} already exists ({describe_tree(final)}); refusing to replace it")
    check_output_dir(final.parent, "synthetic data root")
    final.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        _write_tree(spec, p, root, progress)
        os.rename(root, final)  # fails rather than replace a folder that appeared meanwhile
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return final


def describe_tree(folder: Path) -> str:
    """What an existing dataset folder is, in a few words, for error messages."""
    meta = folder / META_FILE
    if not meta.is_file():
        return "not a synthetic dataset: a real one, or other files"
    try:
        params = json.loads(meta.read_text()).get("params", {})
    except (OSError, ValueError):
        return "a synthetic dataset with an unreadable synth_meta.json"
    return "a synthetic dataset made with " + ", ".join(f"{k}={v}" for k, v in params.items())


def _write_tree(spec: DatasetSpec, p: SynthParams, root: Path, progress: bool) -> None:
    layout = spec.layout
    seed, ids, test_ids, cameras, shots, scenes = p.seed, p.ids, p.test_ids, p.cameras, p.shots, p.scenes
    t0 = time.perf_counter()
    train_dir, test_dir = spec.splits["train"], spec.splits["gallery"]
    query_dir = None if spec.query_is_gallery else spec.splits["query"]

    identities = make_identities(seed, ids, test_ids)
    jobs = [(ident, cam, shot) for ident in identities for cam in range(cameras) for shot in range(shots)]
    it: Iterator[tuple[Identity, int, int]] = iter(jobs)
    if progress:
        it = iter(tqdm(jobs, desc=f"synth {layout}", unit="capture", disable=None))
    captures = []
    for ident, cam, shot in it:
        rgb, nir, tir, cap = render_capture(ident, layout, cam, shot, seed=seed, scenes=scenes)
        name = _file_name(spec, ident.pid, cam, shot, cap.scene)
        split_dir = root / (train_dir if ident.split == "train" else test_dir)
        to_query = ident.split == "test" and query_dir is not None and shot == 0
        if spec.side_by_side:
            files = [split_dir / name]
            _save(np.concatenate([rgb, nir, tir], axis=1), files[0])
        else:
            sub = split_dir / f"{ident.pid:04d}" if spec.structure == "id_folders" else split_dir
            files = [sub / m / name for m in spec.modality_folders]
            for arr, f in zip((rgb, nir, tir), files):
                _save(arr, f)
        if to_query:
            # The real query folders hold copies of gallery images.
            for f in files:
                q = root / query_dir / f.relative_to(split_dir)
                q.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, q)
        rec = asdict(cap)
        rec.update(split=ident.split, name=name, query=to_query or (ident.split == "test" and not query_dir))
        captures.append(rec)

    meta = {
        "generator_version": GENERATOR_VERSION,
        "layout": layout,
        "params": asdict(p),
        "seconds": round(time.perf_counter() - t0, 3),
        "identities": [asdict(i) for i in identities],
        "captures": captures,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=1))


def load_meta(layout: str, out: str | Path) -> dict[str, Any]:
    """The ``synth_meta.json`` written by :func:`generate` (error if the tree is not synthetic)."""
    path = dataset_dir(layout, out) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"synth: {path} not found; run `mambapro synth --layout {layout}` first")
    return json.loads(path.read_text())


def summary(layout: str, out: str | Path) -> str:
    """A human-readable summary of a generated tree: parameters, nuisance rates, split table."""
    from .datasets import build_dataset

    meta = load_meta(layout, out)
    caps = meta["captures"]
    n = max(len(caps), 1)
    rates = ", ".join(
        f"{k.replace('_', ' ')} {100.0 * sum(c[k] for c in caps) / n:.0f}%"
        for k in ("night", "glare", "low_thermal", "occluded")
    )
    p = meta["params"]
    name = _spec(meta["layout"]).name
    ds = build_dataset(name, out)
    lines = [
        f"synthetic {name} at {dataset_dir(layout, out)} (generator v{meta['generator_version']})",
        "  " + ", ".join(f"{k}={v}" for k, v in p.items()),
        f"  {len(caps)} captures in {meta['seconds']:.1f} s; nuisances: {rates}",
        str(ds),
    ]
    return "\n".join(lines)
