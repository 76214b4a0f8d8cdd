"""One declarative spec per benchmark: everything the package knows about a dataset.

Every other place reads these specs: the parsers (``datasets.py``), the image reader, the
synthetic generator, the config (dataset names, default image size), the evaluation protocol,
the CLI and the parameter report. Adding a dataset is one :class:`DatasetSpec` registered in
:data:`DATASETS`, plus a parser in ``datasets.PARSERS`` only when its folder structure is new;
``docs/CONTRACTS.md`` has a worked example.

Folder structures (``structure``):

* ``modality_folders``: ``SPLIT/{m1,m2,...}/NAME`` (RGBNT201);
* ``side_by_side``: ``SPLIT/NAME``, one image with the modalities as equal panels, left to
  right in the spec's ``modalities`` order (RGBNT100);
* ``id_folders``: ``SPLIT/ID/{m1,m2,...}/NAME`` (MSVR310).

File names are matched by ``name_pattern``, a regular expression with the named groups ``pid``
and ``cam`` and, for datasets with scenes, ``scene``; camera numbers in names start at
``camera_base``. A pid in ``junk_pids`` (-1 unless a spec says otherwise) marks a junk image
(left out, as the market-style protocol does). With identity folders the ``pid`` group may be
optional: a name without one takes its folder's pid (WMVEID863). Any other named group is a
capture condition (WMVEID863's ``night``) that ``mambapro check-data`` counts per split.

``published_splits`` holds the split sizes the dataset's paper gives (identities, captures,
cameras; None where a number is not published); ``data/published.py`` compares a parsed dataset
with them. ``docs/datasets.md`` has every dataset's layout, naming, sizes and sources.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..modalities import ModalitySet
from ..registry import Registry
from .spec_file import is_spec_file, load_spec_file
from .spec_type import STRUCTURES, DatasetSpec

__all__ = ["DATASETS", "DatasetSpec", "STRUCTURES", "dataset_names", "dataset_spec"]

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
        # The query and the gallery are both the whole test set (836 triplets of 30 ids).
        published_splits={"train": (171, 3951, 4), "query": (30, 836, None), "gallery": (30, 836, None)},
        source="Zheng et al., Robust Multi-Modality Person Re-identification, AAAI 2021 (RGBNT201); "
        "layout: 924973292/MambaPro data/datasets/RGBNT201.py",
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
        published_splits={"train": (50, 8675, 8), "query": (50, 1715, None), "gallery": (50, 8575, None)},
        source="Li et al., Multi-Spectral Vehicle Re-Identification: A Challenge, AAAI 2020 (RGBNT100); "
        "layout: 924973292/MambaPro data/datasets/RGBNT100.py",
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
        published_splits={"train": (155, 1032, 8), "query": (52, 591, None), "gallery": (155, 1055, None)},
        source="Zheng et al., Multi-spectral Vehicle Re-identification with Cross-directional Consistency "
        "Network and a High-quality Benchmark, Information Fusion 2023 (MSVR310); layout: "
        "924973292/MambaPro data/datasets/msvr310.py",
    )
)


# WMVEID863 (also distributed as MSVWild863): the dataset authors' loader (FACENet,
# datasets/WMVEID863.py) walks SPLIT/VID/{vis,ni,th}/NAME, takes the pid from the identity
# folder and reads the camera and the night flag as the digits after the first "v" and the
# first "n" of the name (re.search('v+\d'), re.search('n+\d')); its evaluation removes same-pid
# same-camera gallery images (utils/metrics.py eval_func). The lookaheads below read the same
# two digits in any order; the optional leading pid lets generated names carry it too.
WMVEID863 = _register(
    DatasetSpec(
        name="WMVEID863",
        folder="WMVEID863",
        splits={"train": "train", "query": "query", "gallery": "test"},
        structure="id_folders",
        modality_folders=("vis", "ni", "th"),
        name_pattern=r"^(?:(?P<pid>\d+)_)?(?=.*?v(?P<cam>\d))(?=.*?n(?P<night>\d))",
        name_rule="...vC...nN... in its identity folder (camera C 0-7 after the first 'v', "
        "N 1 night / 0 day after the first 'n')",
        camera_base=0,
        max_cameras=8,
        img_size=(128, 256),
        has_scenes=False,
        subject="vehicle",
        synth_name="{pid:04d}_v{cam}_n0_s{scene1:03d}_{shot:03d}.jpg",
        published=(0, 8),  # training identities not published in a source read here
        source="Zheng et al., Flare-Aware Cross-modal Enhancement Network for Multi-spectral Vehicle "
        "Re-identification, Information Fusion 2024 (WMVeID863); layout: Mzq12138/Official-"
        "Implementation-for-Flare-Aware-Cross-modal-Enhancement-for-Multi-spectral-Vehicle-ReID "
        "datasets/WMVEID863.py",
    )
)

# Market1501-MM (Market-1501-RGBNT): Market-1501 with generated NI and TI images, laid out as
# SPLIT/{RGB,NI,TI}/NAME with Market's names (924973292/EDITOR data/datasets/
# market_to_RGBNT201.py). Market's protocol: pid -1 images are junk and left out, pid 0
# (0000, distractors) stay in the gallery as negatives (torchreid market1501.py).
MARKET1501_MM = _register(
    DatasetSpec(
        name="Market1501-MM",
        folder="Market1501-MM",
        splits={"train": "train", "query": "query", "gallery": "gallery"},
        structure="modality_folders",
        modality_folders=("RGB", "NI", "TI"),
        name_pattern=r"^(?P<pid>-1|\d{4})_c(?P<cam>\d)s\d",
        name_rule="PPPP_cCsS_FFFFFF_NN (4-digit pid, -1 for junk, camera 1-6)",
        camera_base=1,
        max_cameras=6,
        img_size=(256, 128),
        has_scenes=False,
        subject="person",
        synth_name="{pid:04d}_c{cam1}s1_{shot:06d}_01.jpg",
        published=(751, 6),
        junk_pids=(-1,),
        # The gallery's 751 identities are Market's 750 test identities and the distractor
        # group 0000; its 15913 images exclude the junk (-1) ones.
        published_splits={"train": (751, 12936, 6), "query": (750, 3368, 6), "gallery": (751, 15913, 6)},
        source="Zheng et al., Scalable Person Re-identification: A Benchmark, ICCV 2015 (Market-1501; "
        "the MM version keeps its images and names); layout: 924973292/EDITOR "
        "data/datasets/market_to_RGBNT201.py",
    )
)

# RGBN300: RGB and NI side by side in one 512x128 image (two 256x128 panels), RGBNT100's
# folders and names (lsh-ahu/ICPL-ReID datasets/RGBN300.py and bases_multi_modal.py).
RGBN300 = _register(
    DatasetSpec(
        name="RGBN300",
        folder="RGBN300/rgbir",
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
        published=(150, 8),
        modalities=ModalitySet.of(("RGB", "NI")),
        published_splits={
            "train": (150, 25200, 8),
            "query": (150, 4985, None),
            "gallery": (150, 24925, None),
        },
        source="Li et al., Multi-Spectral Vehicle Re-Identification: A Challenge, AAAI 2020 (RGBN300); "
        "layout: lsh-ahu/ICPL-ReID datasets/RGBN300.py",
    )
)


def dataset_spec(name: str | Path | DatasetSpec) -> DatasetSpec:
    """The spec registered as ``name`` (any case), or the spec file at ``name`` (``.yaml`` /
    ``.yml``, read once per path and modification time:
    :func:`~mambapro.data.spec_file.load_spec_file`), or ``name`` itself when it is a spec. An
    unknown name is a :class:`~mambapro.errors.ConfigError` naming the choices."""
    if isinstance(name, DatasetSpec):
        return name
    if is_spec_file(name):
        return load_spec_file(name)
    if str(name).lower() not in DATASETS:
        raise ConfigError(
            f"unknown dataset {str(name)!r}; choose one of: {', '.join(dataset_names())} "
            "(or a dataset spec file ending in .yaml or .yml)"
        )
    return DATASETS.get(str(name))


def dataset_names() -> list[str]:
    """Canonical names of the registered datasets, in registration order."""
    return [DATASETS.get(n).name for n in DATASETS.names()]
