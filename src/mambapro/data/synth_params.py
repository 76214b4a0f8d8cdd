"""The synthetic generator's parameters and layouts, and the checks that make a usable dataset.

The lowest layer of the generator (``synth.py`` describes the whole): the layout names and their
:class:`~mambapro.data.specs.DatasetSpec`, :class:`SynthParams`, the metadata file name and the
generator version, and :func:`check_params` (which the config also runs on ``data.synth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .specs import DATASETS, DatasetSpec

__all__ = [
    "GENERATOR_VERSION",
    "LAYOUTS",
    "META_FILE",
    "SynthParams",
    "check_params",
    "dataset_dir",
    "layout_spec",
]

#: Layouts the generator writes: every registered dataset, by its lower-case name.
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


def dataset_dir(layout: str, out: str | Path) -> Path:
    """The dataset folder that ``generate(layout, out)`` fills (``out/RGBNT201`` etc.)."""
    return Path(out) / layout_spec(layout).folder


def layout_spec(layout: str) -> DatasetSpec:
    """The dataset spec of a layout name (``rgbnt201``, any case)."""
    if str(layout).lower() not in DATASETS:
        raise ConfigError(
            f"unknown synthetic layout {layout!r}; choose one of: {', '.join(DATASETS.names())}"
        )
    return DATASETS.get(str(layout))


def check_params(layout: str, p: SynthParams, prefix: str = "synth: ") -> None:
    """Raise :class:`~mambapro.errors.ConfigError` when ``p`` cannot make a usable ``layout`` set.

    ``prefix`` names where the values came from (``data.synth.`` in a config).
    """
    spec = layout_spec(layout)

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
