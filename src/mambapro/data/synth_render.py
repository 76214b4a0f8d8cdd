"""Pixels of the synthetic generator: one pixel-aligned capture of an identity, one image per
modality of the dataset's spec.

The drawing helpers (zone label maps of a person or a vehicle in object coordinates, the RGB
patterns and NIR textures) and :func:`render_capture`, which lays out the object in the frame,
draws the background and the RGB, NI and TI images and applies the capture's nuisances. The model
of each modality is described in ``synth.py``. A modality other than these three (a spec's own
key) is rendered by :func:`_extra_band`: a grey band in the style of NI and TI, with its own
identity attributes and noise, from generators of its own, so the RGB, NI and TI images of a
capture are the same whichever modalities the spec has.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image, ImageFilter

from .io import DatasetRef
from .specs import dataset_spec
from .synth_params import SynthParams
from .synth_plan import (
    HEAT_LEVELS,
    NIR_LEVELS,
    NUISANCES,
    PALETTE,
    Capture,
    Identity,
    camera_params,
    scene_params,
)

__all__ = ["render_capture"]

# Zone codes of the label map.
_BG, _A, _B, _C, _SKIN, _DARK, _WHEEL = range(7)


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


#: Modality keys drawn as one of the three base renderings (other spellings of RGB, NI, TI).
_BASE_KEYS = {"RGB": "RGB", "VIS": "RGB", "NI": "NI", "NIR": "NI", "TI": "TI", "TIR": "TI"}


def _extra_band(
    key: str,
    ident: Identity,
    cam: int,
    shot: int,
    seed: int,
    zones: np.ndarray,
    visible: np.ndarray,
    nir: np.ndarray,
    tir: np.ndarray,
    blur: float,
) -> np.ndarray:
    """The (H, W) float image of a modality other than RGB, NI and TI: a grey band that mixes the
    capture's NI and TI scenes (so their nuisances carry over: glare, ambient temperature,
    occlusion, clutter) with reflectance levels of its own per zone of the object, drawn per
    identity and key, plus its own blur and noise. ``visible``: the object pixels not occluded.
    A pure function of (seed, identity, camera, shot, key), drawing nothing from the capture's
    generator."""
    tag = zlib.crc32(key.encode())
    own = np.random.default_rng(np.random.SeedSequence([seed, 7919, ident.pid, tag]))
    levels = NIR_LEVELS[own.integers(len(NIR_LEVELS), size=3)]
    zone = np.array([0.0, *levels, 0.6, 0.1, 0.25], dtype=np.float32)
    mix = 0.3 + 0.4 * ((tag >> 8) & 0xFF) / 255.0  # how much of NI (vs TI) the band's scene shows
    rng = np.random.default_rng(np.random.SeedSequence([seed, 31337, ident.pid, cam, shot, tag]))
    scene = mix * nir + (1.0 - mix) * tir
    band = np.where(visible, 0.35 * scene + 0.65 * zone[zones] * rng.uniform(0.8, 1.1), scene)
    band = _blur(np.clip(band, 0, 1), blur + rng.uniform(0.0, 0.6))
    return band + rng.normal(0, 0.03, band.shape).astype(np.float32)


def render_capture(
    ident: Identity,
    layout: DatasetRef,
    cam: int,
    shot: int,
    *,
    seed: int = SynthParams.seed,
    scenes: int = SynthParams.scenes,
) -> tuple[np.ndarray | Capture, ...]:
    """Render one pixel-aligned capture of ``ident`` by camera ``cam`` (0-based).

    ``layout``: the dataset (spec, registered name or spec-file path). Returns one ``(H, W, 3)``
    uint8 image per modality of its spec, in its order (RGB, NI and TI for the paper's datasets;
    NI, TI and any other modality are grey in three channels, as the real datasets store them),
    then the capture's nuisance flags.
    """
    spec = dataset_spec(layout)
    person = spec.subject == "person"
    H, W = spec.img_size
    cp = camera_params(seed, cam)
    scene = shot % scenes
    sp = scene_params(seed, ident.pid, scene)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 31337, ident.pid, cam, shot]))

    # ---- viewpoint, scale, shift
    view_idx = int(rng.choice(3, p=0.5 * cp["view_pref"] + 0.5 / 3))
    view = (("front", "back", "side") if person else ("left", "right", "three-quarter"))[view_idx]
    mirror = view_idx == 1 or (view_idx == 2 and rng.random() < 0.5)
    squash = rng.uniform(0.58, 0.72) if view_idx == 2 else 1.0
    nz = NUISANCES
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
        col = PALETTE[int(rng.integers(len(PALETTE)))] if rng.random() < 0.5 else rng.uniform(0, 1, 3)
        col = nz.clutter_saturation * col + (1 - nz.clutter_saturation) * col.mean()
        bg_rgb[m] = col
        bg_nir[m] = rng.uniform(0.05, 0.9)
        # Most clutter sits near the ambient temperature; some is warm (lamps, engines, people).
        bg_tir[m] = rng.uniform(0.1, 0.35) if rng.random() < 0.8 else rng.uniform(0.6, 0.9)

    # ---- RGB
    pal = np.clip(PALETTE + np.asarray(ident.tint, dtype=np.float32), 0.0, 1.0)
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
            NIR_LEVELS[ident.refl_a],
            NIR_LEVELS[ident.refl_b],
            NIR_LEVELS[ident.refl_c],
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
            body_t * HEAT_LEVELS[ident.heat_a] + 0.1,
            body_t * HEAT_LEVELS[ident.heat_b] + 0.1,
            HEAT_LEVELS[ident.heat_c] * 0.8,
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
    visible = obj
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
        visible = obj & ~m
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
    scene_nir, scene_tir = nir, tir  # before the sensors: what other bands are drawn from
    rgb = _blur(np.clip(rgb, 0, 1), blur) + rng.normal(0, rgb_noise, (H, W, 3)).astype(np.float32)
    nir = _blur(np.clip(nir, 0, 1), blur) + rng.normal(0, cp["noise"] * nz.noise, (H, W)).astype(np.float32)
    tir = _blur(np.clip(tir, 0, 1), blur + 1.2) + rng.normal(0, 0.02, (H, W)).astype(np.float32)

    def to_u8(x: np.ndarray) -> np.ndarray:
        x = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
        return x if x.ndim == 3 else np.repeat(x[..., None], 3, axis=2)

    cap = Capture(ident.pid, cam, shot, scene, view, night, glare, low_thermal, occluded)
    base = {"RGB": rgb, "NI": nir, "TI": tir}
    images = []
    for key in spec.modalities.keys:
        if key.upper() in _BASE_KEYS:
            images.append(to_u8(base[_BASE_KEYS[key.upper()]]))
        else:
            band = _extra_band(key, ident, cam, shot, seed, zones, visible, scene_nir, scene_tir, blur)
            images.append(to_u8(band))
    return (*images, cap)
