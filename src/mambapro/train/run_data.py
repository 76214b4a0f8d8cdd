"""The data of a run: the parsed (or generated) dataset, its sizes, and the validation split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mambapro.config import Config
from mambapro.data import ReIDDataset, dataset_from_config, split_validation
from mambapro.data.published import warn_published_differences
from mambapro.train.distributed import DistInfo, barrier

__all__ = ["DataBundle", "prepare_data"]


@dataclass
class DataBundle:
    """Everything the trainer needs to know about the data of a run."""

    name: str
    dataset: ReIDDataset  # train split without the held-out validation identities
    num_classes: int
    num_cameras: int
    val_query: list = field(default_factory=list)
    val_gallery: list = field(default_factory=list)

    @property
    def query(self) -> list:
        return self.dataset.query

    @property
    def gallery(self) -> list:
        return self.dataset.gallery

    @property
    def summary(self) -> str:
        return str(self.dataset)


def prepare_data(cfg: Config, dist_info: DistInfo | None = None, quiet: bool = True) -> DataBundle:
    """Parse the dataset, generating the embedded synthetic one first when ``data.synthetic``.

    Under DDP rank 0 parses first (generating if needed) while the other ranks wait, then they
    parse the finished tree.
    """
    dist_info = dist_info or DistInfo()
    ds = dataset_from_config(cfg.data, progress=not quiet) if dist_info.is_main else None
    barrier(dist_info)
    if ds is None:
        ds = dataset_from_config(cfg.data)
    else:
        # The first thing to look at when numbers differ from the paper's: a folder that is not
        # the published dataset (a warning naming the split and the count; synthetic trees pass).
        warn_published_differences(ds)
    val_query: list = []
    val_gallery: list = []
    if cfg.train.select_best == "val":
        train, val_query, val_gallery = split_validation(ds.train, cfg.data.val_ids, cfg.train.seed)
        ds = dataclasses.replace(ds, train=train)
    return DataBundle(
        name=ds.name,
        dataset=ds,
        num_classes=ds.num_train_pids,
        num_cameras=ds.num_train_cams,
        val_query=val_query,
        val_gallery=val_gallery,
    )
