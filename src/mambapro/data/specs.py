"""One declarative spec per benchmark: everything the package knows about a dataset.

Every other place reads these specs: the parsers (``datasets.py``), the image reader, the
synthetic generator, the config (dataset names, default image size), the evaluation protocol,
the CLI and the parameter report. Adding a dataset is one :class:`DatasetSpec` registered in
:data:`DATASETS`, plus a parser in ``datasets.PARSERS`` only when its folder structure is new;
``docs/CONTRACTS.md`` has a worked example.

Folder structures (``structure``):

* ``modality_folders``: ``SPLIT/{m1,m2,m3}/NAME`` (RGBNT201);
* ``side_by_side``: ``SPLIT/NAME``, one image with the three modalities as equal panels, left to
  right in :data:`~mambapro.modalities.MODALITIES` order (RGBNT100);
* ``id_folders``: ``SPLIT/ID/{m1,m2,m3}/NAME`` (MSVR310).

File names are matched by ``name_pattern``, a regular expression with the named groups ``pid``
and ``cam`` and, for datasets with scenes, ``scene``; camera numbers in names start at
``camera_base``. A pid of -1 marks a junk image (left out, as the market-style protocol does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..registry import Registry

__all__ = ["DATASETS", "DatasetSpec", "STRUCTURES", "dataset_names", "dataset_spec"]

STRUCTURES = ("modality_folders", "side_by_side", "id_folders")


@dataclass(frozen=True)
class DatasetSpec:
    """The layout, naming, geometry and protocol of one benchmark.

    Attributes:
        name: canonical name (``RGBNT201``); ``data.dataset`` matches it in any case.
        folder: the dataset's folder under the data root (may contain ``/``).
        splits: ``train``, ``query``, ``gallery`` -> split folder under ``folder`` (query and
            gallery may be the same folder).
        structure: one of :data:`STRUCTURES`.
        modality_folders: the three modality folder names (RGB, NI, TI order); empty for
            ``side_by_side``.
        name_pattern: regex with groups ``pid``, ``cam`` (and ``scene``), searched in file names.
        name_rule: the naming rule in words, for error messages.
        camera_base: the first camera number in names (1 for ``cam1``, 0 for ``v0``).
        max_cameras: cameras the naming allows; a larger number is a broken file name.
        img_size: (H, W) of one modality as the published recipe resizes it.
        has_scenes: evaluation protocol: junk = same pid and same scene (True) or same camera.
        subject: ``person`` or ``vehicle`` (what the synthetic generator draws).
        synth_name: file-name template of generated captures (fields: pid, cam, cam1, scene,
            scene1, shot), which ``name_pattern`` must parse back.
        published: (training identities, training cameras) of the published dataset.
    """

    name: str
    folder: str
    splits: dict[str, str]
    structure: str
    modality_folders: tuple[str, ...]
    name_pattern: str
    name_rule: str
    camera_base: int
    max_cameras: int
    img_size: tuple[int, int]
    has_scenes: bool
    subject: str
    synth_name: str
    published: tuple[int, int]

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"dataset {self.name}: structure {self.structure!r} is not one of {STRUCTURES}")
        if set(self.splits) != {"train", "query", "gallery"}:
            raise ValueError(f"dataset {self.name}: splits must name train, query and gallery")
        if (self.structure == "side_by_side") != (not self.modality_folders):
            raise ValueError(f"dataset {self.name}: modality folders go with a non-side-by-side structure")
        groups = set(re.compile(self.name_pattern).groupindex)
        needed = {"pid", "cam"} | ({"scene"} if self.has_scenes else set())
        if not needed <= groups:
            raise ValueError(
                f"dataset {self.name}: name_pattern lacks the group(s) {sorted(needed - groups)}"
            )

    @property
    def layout(self) -> str:
        """The synthetic layout name (``rgbnt201``): the name in lower case."""
        return self.name.lower()

    @property
    def side_by_side(self) -> bool:
        return self.structure == "side_by_side"

    @property
    def query_is_gallery(self) -> bool:
        return self.splits["query"] == self.splits["gallery"]


#: Dataset specs by name (lower-case keys, so any spelling finds them).
DATASETS: Registry[DatasetSpec] = Registry("datasets")


def _register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.register(spec.name)(spec)
    return spec


RGBNT201 = _register(
    DatasetSpec(
        name="RGBNT201",
        folder="RGBNT201",
        splits={"train": "train_171", "query": "test", "gallery": "test"},
        structure="modality_folders",
        modality_folders=("RGB", "NI", "TI"),
        name_pattern=r"^(?P<pid>\d{6})[^_]*_cam(?P<cam>\d)",
        name_rule="PPPPPP..._camC_... (6-digit pid, camera 1-9)",
        camera_base=1,
        max_cameras=9,
        img_size=(256, 128),
        has_scenes=False,
        subject="person",
        synth_name="{pid:06d}_cam{cam1}_{scene}_{shot:02d}.jpg",
        published=(171, 4),
    )
)

RGBNT100 = _register(
    DatasetSpec(
        name="RGBNT100",
        folder="RGBNT100/rgbir",
        splits={"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
        structure="side_by_side",
        modality_folders=(),
        name_pattern=r"(?P<pid>[-\d]+)_c(?P<cam>[-\d]+)",
        name_rule="PID_cCAM... (camera 1-8)",
        camera_base=1,
        max_cameras=8,
        img_size=(128, 256),
        has_scenes=False,
        subject="vehicle",
        synth_name="{pid:04d}_c{cam1:03d}_{shot:04d}.jpg",
        published=(50, 8),
    )
)

MSVR310 = _register(
    DatasetSpec(
        name="MSVR310",
        folder="msvr310",
        splits={"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"},
        structure="id_folders",
        modality_folders=("vis", "ni", "th"),
        name_pattern=r"^(?P<pid>\d{4})_s(?P<scene>\d{3})_v(?P<cam>\d)",
        name_rule="PPPP_sSSS_vC... (4-digit pid, 3-digit scene, camera 0-7)",
        camera_base=0,
        max_cameras=8,
        img_size=(128, 256),
        has_scenes=True,
        subject="vehicle",
        synth_name="{pid:04d}_s{scene1:03d}_v{cam}_{shot:03d}.jpg",
        published=(155, 8),
    )
)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (any case); ``KeyError`` naming the choices otherwise."""
    return DATASETS.get(str(name))


def dataset_names() -> list[str]:
    """Canonical names of the registered datasets, in registration order."""
    return [DATASETS.get(n).name for n in DATASETS.names()]
