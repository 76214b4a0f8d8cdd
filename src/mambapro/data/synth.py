"""Embedded synthetic multi-modal ReID dataset: real images in the exact layout of a dataset's spec.

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

Other modalities
----------------
A dataset's spec names its modalities (2 to 4). RGB, NI and TI are drawn as above whatever the
set (a capture's RGB and TI images are the same for an RGB+TI spec as for the paper's three); any
other modality key gets a deterministic appearance of its own: a grey band in the style of NI and
TI (their scene, glare and ambient temperature) with its own reflectance levels per object zone,
drawn per identity, and its own blur and noise (``synth_render._extra_band``).

Layouts and names
---------------------------
A layout is a dataset's spec (a registered name, a spec-file path or a
:class:`~mambapro.data.specs.DatasetSpec`): its folder, split folders, structure, modality
folders, ``synth_name`` file names, image size and subject say what is written, with one file
per modality, or one side-by-side image with one panel per modality. The registered benchmarks:

* ``rgbnt201``: ``RGBNT201/{train_171,test}/{RGB,NI,TI}/{pid:06d}_cam{c+1}_{scene}_{shot:02d}.jpg``;
  the test folder is both query and gallery.
* ``rgbnt100``: ``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/
  {pid:04d}_c{c+1:03d}_{shot:04d}.jpg`` with RGB, NI, TI side by side (128x768). As in the real
  dataset the query folder holds copies of gallery images (the first shot of each identity and
  camera).
* ``msvr310``: ``msvr310/{bounding_box_train,query3,bounding_box_test}/{pid:04d}/{vis,ni,th}/
  {pid:04d}_s{scene:03d}_v{c}_{shot:03d}.jpg``; query as for ``rgbnt100``.

Modules
-------
This module holds the entry points (:func:`generate`, :func:`summary`, ...) and re-exports the
parts: ``synth_params.py`` (parameters, layouts, checks), ``synth_plan.py`` (identities and
capture conditions), ``synth_render.py`` (pixels of one capture), ``synth_write.py`` (a tree in a
benchmark's folder layout, with its metadata).

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
from pathlib import Path
from typing import Any

from ..errors import DatasetError, check_output_dir
from ..modalities import RGB_NI_TI
from .datasets import build_dataset
from .io import DatasetRef
from .specs import dataset_spec
from .synth_params import (
    GENERATOR_VERSION,
    LAYOUTS,
    META_FILE,
    SynthParams,
    check_params,
    dataset_dir,
    layout_names,
)
from .synth_plan import Capture, Identity, make_identities
from .synth_render import render_capture
from .synth_write import write_tree

# The generator's public names: the entry points below, and what its parts define (imported
# from here by the CLI, the config, the loader and the tests).
__all__ = [
    "GENERATOR_VERSION",
    "LAYOUTS",
    "META_FILE",
    "SynthParams",
    "Capture",
    "Identity",
    "check_params",
    "dataset_dir",
    "describe_tree",
    "generate",
    "layout_names",
    "load_meta",
    "make_identities",
    "meta_modalities",
    "render_capture",
    "summary",
]


def generate(layout: DatasetRef, out: str | Path, *, progress: bool = False, **params: int) -> Path:
    """Write the synthetic dataset in ``layout`` under the data root ``out``; return its folder.

    ``layout``: the dataset whose layout and modalities are written: a registered name (any
    case), a spec-file path or a :class:`~mambapro.data.specs.DatasetSpec`.

    ``params`` are the fields of :class:`SynthParams` (seed, ids, test_ids, cameras, shots,
    scenes), defaults there: ``ids`` identities (``test_ids`` of them for testing), each captured
    ``shots`` times by each of ``cameras`` cameras.

    Nothing is ever replaced: an existing dataset folder at that place (synthetic or not) is
    left alone and is an error naming it. The tree is written under a temporary name next to
    its place and renamed at the end, so an interrupted run leaves no partial dataset.
    """
    spec = dataset_spec(layout)
    p = SynthParams(**params)
    check_params(spec, p)
    final = dataset_dir(spec, out)
    if final.exists():
        raise DatasetError(f"synth: {final} already exists ({describe_tree(final)}); refusing to replace it")
    check_output_dir(final.parent, "synthetic data root")
    final.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        write_tree(spec, p, root, progress)
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
        data = json.loads(meta.read_text())
        params = data.get("params", {})
    except (OSError, ValueError, AttributeError):
        return "a synthetic dataset with an unreadable synth_meta.json"
    made = "a synthetic dataset made with " + ", ".join(f"{k}={v}" for k, v in params.items())
    sensors = meta_modalities(data)
    return made if sensors == list(RGB_NI_TI.keys) else f"{made} of the modalities {'+'.join(sensors)}"


def meta_modalities(meta: dict[str, Any]) -> list[str]:
    """The modality keys of a generated tree, from its metadata (RGB, NI, TI when not recorded)."""
    return list(meta.get("modalities") or RGB_NI_TI.keys)


def load_meta(layout: DatasetRef, out: str | Path) -> dict[str, Any]:
    """The ``synth_meta.json`` written by :func:`generate` (error if the tree is not synthetic)."""
    path = dataset_dir(layout, out) / META_FILE
    if not path.is_file():
        name = layout if isinstance(layout, str) else dataset_spec(layout).layout
        raise FileNotFoundError(f"synth: {path} not found; run `mambapro synth --dataset {name}` first")
    return json.loads(path.read_text())


def summary(layout: DatasetRef, out: str | Path) -> str:
    """A human-readable summary of a generated tree: parameters, nuisance rates, split table."""
    meta = load_meta(layout, out)
    caps = meta["captures"]
    n = max(len(caps), 1)
    rates = ", ".join(
        f"{k.replace('_', ' ')} {100.0 * sum(c[k] for c in caps) / n:.0f}%"
        for k in ("night", "glare", "low_thermal", "occluded")
    )
    p = meta["params"]
    spec = dataset_spec(layout)
    name = spec.name
    ds = build_dataset(spec, out)
    lines = [
        f"synthetic {name} at {dataset_dir(spec, out)} (generator v{meta['generator_version']})",
        "  " + ", ".join(f"{k}={v}" for k, v in p.items()),
        f"  {len(caps)} captures in {meta['seconds']:.1f} s; nuisances: {rates}",
        str(ds),
    ]
    return "\n".join(lines)
