"""The synthetic generator's parameters and layouts, and the checks that make a usable dataset.

The lowest layer of the generator (``synth.py`` describes the whole): the layout names and their
:class:`~mambapro.data.specs.DatasetSpec`, :class:`SynthParams`, the metadata file name and the
generator version, and :func:`check_params` (which the config also runs on ``data.synth``).

A layout is a dataset: a registered name (any case; registered at any time before it is used),
a spec-file path, or a :class:`~mambapro.data.specs.DatasetSpec` itself. The generator reads
everything from the spec (folders, structure, modalities, file names, image size, subject), so a
new dataset needs no generator code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .io import DatasetRef
from .specs import DATASETS, DatasetSpec, dataset_spec
from .synth_names import synth_name_problem

__all__ = [
    "GENERATOR_VERSION",
    "LAYOUTS",
    "META_FILE",
    "SynthParams",
    "check_params",
    "dataset_dir",
    "layout_names",
]

#: Layouts the generator writes: every dataset registered in ``specs.py``, by its lower-case name
#: (:func:`layout_names` also has those registered later; any spec works, see the module doc).
LAYOUTS = tuple(DATASETS.names())
META_FILE = "synth_meta.json"
# Bumped whenever the images for a given seed change, so a cached tree is regenerated.
GENERATOR_VERSION = 1


@dataclass
class SynthParams:
    """Parameters of the embedded synthetic dataset (``mambapro synth``; ``data.synth``)."""

    seed: int = 0
    ids: int = 40  # total identities; train and test identities are disjoint
    test_ids: int = 20
    cameras: int = 4
    shots: int = 3  # captures per identity and camera
    scenes: int = 3  # capture sessions (the scene of datasets with scenes, MSVR310)


def layout_names() -> tuple[str, ...]:
    """The registered datasets' layout names (lower case), those registered so far included."""
    return tuple(DATASETS.names())


def dataset_dir(layout: DatasetRef, out: str | Path) -> Path:
    """The dataset folder that ``generate(layout, out)`` fills (``out/RGBNT201`` etc.)."""
    return Path(out) / dataset_spec(layout).folder


def _check_names(spec: DatasetSpec, p: SynthParams, prefix: str) -> None:
    """The generated file names must be images that the spec's ``name_pattern`` parses back."""
    if not spec.synth_name:
        raise ConfigError(
            f"{prefix}the {spec.layout} layout has no synth_name: give its spec a file-name template "
            "of synthetic captures that its name_pattern reads back"
        )
    # The first and the last capture of these parameters, by the same check as spec files use.
    captures = [(1, 0, 0, 0), (p.ids, p.cameras - 1, p.shots - 1, (p.shots - 1) % p.scenes)]
    geometry = dict(camera_base=spec.camera_base, max_cameras=spec.max_cameras, has_scenes=spec.has_scenes)
    problem = synth_name_problem(spec.synth_name, spec.name_pattern, captures=captures, **geometry)
    if problem:
        raise ConfigError(
            f"{prefix}the {spec.layout} layout's synth_name {spec.synth_name!r} {problem} "
            f"(name_pattern {spec.name_pattern!r}; cameras count from {spec.camera_base} in names)"
        )


def check_params(layout: DatasetRef, p: SynthParams, prefix: str = "synth: ") -> None:
    """Raise :class:`~mambapro.errors.ConfigError` when ``p`` cannot make a usable ``layout`` set.

    ``prefix`` names where the values came from (``data.synth.`` in a config).
    """
    spec = dataset_spec(layout)

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
    _check_names(spec, p, prefix)
