"""Data: benchmark parsers, the embedded synthetic tri-modal dataset, joint transforms, the
P x K identity sampler and the loaders (see docs/CONTRACTS.md for the batch format)."""

from . import synth
from .datasets import DATASETS, ReIDDataset, build_dataset, samples_at, split_validation, triplet_paths
from .io import DatasetError, ImageReadError, Sample, read_image, read_triplet
from .loader import (
    TripletDataset,
    build_test_loader,
    build_train_loader,
    collate_triplets,
    dataset_from_config,
)
from .sampler import RandomIdentitySampler
from .transforms import (
    MODALITIES,
    TripletTransform,
    apply_missing,
    build_test_transform,
    build_train_transform,
    missing_modalities,
)

__all__ = [
    "DATASETS",
    "MODALITIES",
    "DatasetError",
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
    "collate_triplets",
    "dataset_from_config",
    "missing_modalities",
    "read_image",
    "read_triplet",
    "samples_at",
    "split_validation",
    "synth",
    "triplet_paths",
]
