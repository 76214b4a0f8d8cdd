"""The dataset spec type: the layout, naming, geometry, modalities and protocol of a dataset.

The registered benchmarks (``specs.py``) and the spec files users write (``spec_file.py``)
are both :class:`DatasetSpec` values; nothing else describes a dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..modalities import RGB_NI_TI, ModalitySet

__all__ = ["STRUCTURES", "DatasetSpec"]

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
        modality_folders: one folder name per modality, in ``modalities`` order; empty for
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
        modalities: the dataset's modalities in batch order (:data:`RGB_NI_TI` for the paper's).
        junk_pids: pids in file names that mark junk images (left out, as Market's protocol does).
        published_splits: ``train``/``query``/``gallery`` -> (identities, captures, cameras) as
            the dataset's paper publishes them; None (for all, or one count) where none is published.
        source: where the layout, naming and counts come from (paper, public loader).
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

    modalities: ModalitySet = RGB_NI_TI
    junk_pids: tuple[int, ...] = (-1,)
    published_splits: dict[str, tuple[int | None, int | None, int | None]] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"dataset {self.name}: structure {self.structure!r} is not one of {STRUCTURES}")
        if set(self.splits) != {"train", "query", "gallery"}:
            raise ValueError(f"dataset {self.name}: splits must name train, query and gallery")
        if (self.structure == "side_by_side") != (not self.modality_folders):
            raise ValueError(f"dataset {self.name}: modality folders go with a non-side-by-side structure")
        if self.modality_folders and len(self.modality_folders) != len(self.modalities):
            raise ValueError(
                f"dataset {self.name}: {len(self.modality_folders)} modality folders for the "
                f"{len(self.modalities)} modalities {self.modalities}"
            )
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
