"""Data: one spec per benchmark (``specs.py``), their parsers, the embedded synthetic multi-modal
dataset, joint transforms, the P x K identity sampler and the loaders (see docs/CONTRACTS.md for
the batch format). A dataset's modalities (2 to 4) come from its spec; every function that takes
a dataset accepts its spec, a registered name or a spec-file path (:func:`dataset_spec`).

The torch-based parts (loaders, sampler, transforms) load on first use, so that reading a
dataset spec (as the config does for names and image sizes) does not import torch.
"""

from ..lazy import lazy_getattr
from ..modalities import MODALITIES, missing_modalities
from . import synth
from .datasets import (
    DATASETS,
    PARSERS,
    ReIDDataset,
    build_dataset,
    check_cameras,
    samples_at,
    split_validation,
    triplet_paths,
)
from .io import DatasetError, ImageReadError, Sample, read_image, read_triplet
from .specs import DatasetSpec, dataset_spec

_LAZY = {
    "TripletDataset": "loader",
    "build_test_loader": "loader",
    "build_train_loader": "loader",
    "collate_triplets": "loader",
    "dataset_from_config": "loader",
    "RandomIdentitySampler": "sampler",
    "TripletTransform": "transforms",
    "apply_missing": "transforms",
    "build_test_transform": "transforms",
    "build_train_transform": "transforms",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "DATASETS",
    "MODALITIES",
    "PARSERS",
    "DatasetError",
    "DatasetSpec",
    "ImageReadError",
    "RandomIdentitySampler",
    "ReIDDataset",
    "Sample",
    "TripletDataset",
    "TripletTransform",
    "apply_missing",
    "build_dataset",
    "build_test_loader",
    "build_test_transform",
    "build_train_loader",
    "build_train_transform",
    "check_cameras",
    "collate_triplets",
    "dataset_from_config",
    "dataset_spec",
    "missing_modalities",
    "read_image",
    "read_triplet",
    "samples_at",
    "split_validation",
    "synth",
    "triplet_paths",
]
