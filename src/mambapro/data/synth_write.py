"""Writing a synthetic tree in the folder layout of a benchmark, with its ``synth_meta.json``.

:func:`write_tree` renders every capture (one image per modality of the spec) and saves it where
the layout's :class:`~mambapro.data.specs.DatasetSpec` puts it: modality folders, identity folders
or one side-by-side image with one panel per modality, the generated file name parsed back by the
spec's name rule, and the query
copies of gallery images that the real datasets hold. ``synth.generate`` calls it on a temporary
folder, renamed into place once complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..modalities import RGB_NI_TI
from .specs import DatasetSpec
from .synth_params import GENERATOR_VERSION, META_FILE, SynthParams
from .synth_plan import Identity, make_identities
from .synth_render import render_capture

__all__ = ["write_tree"]

_JPEG_QUALITY = 92


def _file_name(spec: DatasetSpec, pid: int, cam: int, shot: int, scene: int) -> str:
    return spec.synth_name.format(pid=pid, cam=cam, cam1=cam + 1, scene=scene, scene1=scene + 1, shot=shot)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGB").save(path, quality=_JPEG_QUALITY)


def write_tree(spec: DatasetSpec, p: SynthParams, root: Path, progress: bool) -> None:
    """Render and save every capture of ``p`` in ``spec``'s layout under ``root``, then the metadata."""
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
        *images, cap = render_capture(ident, spec, cam, shot, seed=seed, scenes=scenes)
        name = _file_name(spec, ident.pid, cam, shot, cap.scene)
        split_dir = root / (train_dir if ident.split == "train" else test_dir)
        to_query = ident.split == "test" and query_dir is not None and shot == 0
        if spec.side_by_side:
            files = [split_dir / name]
            _save(np.concatenate(images, axis=1), files[0])
        else:
            sub = split_dir / f"{ident.pid:04d}" if spec.structure == "id_folders" else split_dir
            files = [sub / m / name for m in spec.modality_folders]
            for arr, f in zip(images, files):
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

    # The modalities are recorded when they are not the paper's three (whose metadata is as it was).
    sensors = {} if spec.modalities == RGB_NI_TI else {"modalities": list(spec.modalities.keys)}
    meta = {
        "generator_version": GENERATOR_VERSION,
        "layout": layout,
        **sensors,
        "params": asdict(p),
        "seconds": round(time.perf_counter() - t0, 3),
        "identities": [asdict(i) for i in identities],
        "captures": captures,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=1))
