"""Torch datasets, collation and the train/test loaders.

The train loader is reproducible whatever ``num_workers``: its batch sampler yields
``(index, item_seed)`` pairs (see :mod:`~mambapro.data.sampler`) and :class:`TripletDataset`
runs the transform under ``torch.random.fork_rng()`` seeded with the item seed, so the decoding
worker, the worker count and the order in which workers finish never change a tensor. The
global RNG of the caller is left untouched.

Batches are dicts (docs/CONTRACTS.md): ``{"RGB": (B, 3, H, W), "NI": ..., "TI": ..., "pids": (B,)
long, "camids": (B,) long, "sceneids": (B,) long, "paths": list[str]}``; ``paths`` holds each
sample's first file (the RGB file, or RGBNT100's side-by-side file).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..modalities import MISSING_SETTINGS, MODALITIES, missing_modalities
from . import synth
from .cache import DecodedCache, build_cache
from .datasets import ReIDDataset, build_dataset
from .io import DatasetError, Sample, read_triplet
from .sampler import RandomIdentitySampler
from .transforms import apply_missing, build_resize_transform, build_test_transform, build_train_transform

if TYPE_CHECKING:  # the config imports the data package (dataset specs), not the reverse
    from ..config import DataConfig

__all__ = [
    "TripletDataset",
    "build_test_loader",
    "build_train_loader",
    "collate_triplets",
    "dataset_from_config",
    "resolve_num_workers",
]

#: Most workers ``data.num_workers=auto`` starts (more rarely pays off for three small images).
MAX_AUTO_WORKERS = 8


def resolve_num_workers(value: int | str, cpus: int | None = None) -> int:
    """``data.num_workers``: an integer as it is; ``auto``: the CPUs this process may run on
    (``os.sched_getaffinity``), at most :data:`MAX_AUTO_WORKERS`, and 0 with a single CPU,
    where a worker would only compete with the training process."""
    if not isinstance(value, str):
        return int(value)
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
    return 0 if cpus <= 1 else min(cpus, MAX_AUTO_WORKERS)


def _loader_options(workers: int, persistent: bool = True) -> dict[str, Any]:
    """Worker-dependent DataLoader options of both loaders: pinned memory on CUDA, prefetch, and
    with ``persistent`` workers kept across epochs (the train loader; a test loader runs once)."""
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    if workers > 0:
        opts["prefetch_factor"] = 4
        if persistent:
            opts["persistent_workers"] = True
    return opts


def draw_modality_dropout(item_seed: int, rate: float) -> str:
    """The missing-modality setting a training item gets: ``full`` with probability 1 - ``rate``,
    else one of the six settings that miss something (R, N, T, RN, RT, NT), uniformly.

    A pure function of the item seed, from its own stream: the augmentation draws are the same
    whatever the rate, and the worker count changes nothing.
    """
    if rate <= 0:
        return "full"
    rng = np.random.default_rng([item_seed, _DROPOUT_STREAM])
    if rng.random() >= rate:
        return "full"
    return DROPPABLE[int(rng.integers(len(DROPPABLE)))]


#: The settings modality dropout draws from (all but ``full``), and its seed stream's tag.
DROPPABLE = tuple(s for s in MISSING_SETTINGS if s != "full")
_DROPOUT_STREAM = 0x6D6F6461  # "moda"


class TripletDataset(Dataset):
    """Decodes and transforms samples; ``dataset[i]`` or ``dataset[(i, item_seed)]``.

    ``modality_dropout`` (training, ``train.modality_dropout``): with that probability an item
    seeded by the sampler loses one or two modalities (see :func:`draw_modality_dropout`), zeroed
    after normalisation exactly as ``test --missing`` zeroes them; ``item["dropped"]`` names the
    setting.

    ``cache`` (:class:`~mambapro.data.cache.DecodedCache` of ``samples``): images come from it,
    already resized, and ``transform`` must be built without its resize step. ``raw``
    (``data.augment_on=device``): the transform only resizes (or is the identity on cached
    images), the item keeps its ``seed`` and the dropout is left to the train step.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        dataset_name: str,
        transform: Callable[[Sequence[Any]], Sequence[torch.Tensor]] | None,
        modality_dropout: float = 0.0,
        cache: DecodedCache | None = None,
        raw: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.dataset_name = dataset_name
        self.transform = transform
        self.modality_dropout = modality_dropout
        self.cache = cache
        self.raw = raw
        if cache is not None and len(cache) != len(self.samples):
            raise ValueError(f"the cache holds {len(cache)} triplets, the dataset {len(self.samples)}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, item_seed = key if isinstance(key, tuple) else (key, None)
        s = self.samples[index]
        images = self.cache[index] if self.cache is not None else read_triplet(s, self.dataset_name)
        if self.raw:
            tensors = tuple(images) if self.transform is None else self.transform(images)
            dropped = "full" if item_seed is None else draw_modality_dropout(item_seed, self.modality_dropout)
            out_raw: dict[str, Any] = dict(zip(MODALITIES, tensors))
            out_raw.update(pid=s.pid, camid=s.camid, sceneid=s.sceneid, path=s.paths[0], dropped=dropped)
            out_raw["seed"] = 0 if item_seed is None else item_seed
            return out_raw
        if item_seed is None:
            tensors = self.transform(images)
        else:
            # torchvision draws from the global torch RNG: fork it so the caller's state is kept.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                tensors = self.transform(images)
        dropped = "full" if item_seed is None else draw_modality_dropout(item_seed, self.modality_dropout)
        if dropped != "full":
            tensors = apply_missing(tensors, dropped)
        out: dict[str, Any] = dict(zip(MODALITIES, tensors))
        out.update(pid=s.pid, camid=s.camid, sceneid=s.sceneid, path=s.paths[0], dropped=dropped)
        return out


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of CPU tensors through numpy: one plain copy per image. torch's own
    multi-threaded copy can take hundreds of milliseconds per batch when its threads compete for
    busy cores (measured on a loaded 2-core machine; numpy: a few ms)."""
    return torch.from_numpy(np.stack([t.numpy() for t in tensors]))


def collate_triplets(items: list[dict[str, Any]], missing: str = "full") -> dict[str, Any]:
    """Stack items into the batch dict; zero the ``missing`` modalities (after normalisation)."""
    batch: dict[str, Any] = {m: _stack([it[m] for it in items]) for m in MODALITIES}
    batch["pids"] = torch.tensor([it["pid"] for it in items], dtype=torch.long)
    batch["camids"] = torch.tensor([it["camid"] for it in items], dtype=torch.long)
    batch["sceneids"] = torch.tensor([it["sceneid"] for it in items], dtype=torch.long)
    batch["paths"] = [it["path"] for it in items]
    if "seed" in items[0]:  # data.augment_on=device: uint8 images, augmented in the train step
        batch["seeds"] = torch.tensor([it["seed"] for it in items], dtype=torch.long)
        batch["dropped"] = [it["dropped"] for it in items]
    return apply_missing(batch, missing) if missing != "full" else batch  # type: ignore[return-value]


def build_train_loader(
    data_cfg: DataConfig,
    dataset: ReIDDataset,
    img_size: tuple[int, int],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    iters_per_epoch: int | None = None,
    modality_dropout: float = 0.0,
    progress: bool = False,
) -> DataLoader:
    """P x K train loader over ``dataset.train``; call ``loader.batch_sampler.set_epoch(e)``.
    ``modality_dropout``: see :class:`TripletDataset`.

    ``data.cache`` memory/disk decodes and resizes every training image first (a progress bar
    with ``progress``; unreadable files are one error naming them). ``data.augment_on=device``
    yields uint8 images with ``seeds`` and ``dropped`` for :class:`~mambapro.data.device_aug.DeviceAugment`.

    ``data_cfg.batch_size`` is the global batch; each rank gets ``batch_size / world_size``.
    To train without held-out validation ids, pass ``dataclasses.replace(dataset, train=...)``.
    """
    sampler = RandomIdentitySampler(
        dataset.train,
        batch_size=data_cfg.batch_size,
        num_instances=data_cfg.num_instances,
        seed=seed,
        rank=rank,
        world_size=world_size,
        iters_per_epoch=iters_per_epoch,
    )
    cache = None
    if data_cfg.cache != "none":
        cache = build_cache(
            dataset.train, dataset.name, img_size, "bicubic", data_cfg.cache, data_cfg.cache_dir, progress
        )
    raw = data_cfg.augment_on == "device"
    if raw:
        transform = None if cache is not None else build_resize_transform(img_size)
    else:
        transform = build_train_transform(data_cfg, img_size, resize=cache is None)
    ds = TripletDataset(dataset.train, dataset.name, transform, modality_dropout, cache=cache, raw=raw)
    return DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=collate_triplets,
        **_loader_options(resolve_num_workers(data_cfg.num_workers)),
        # Its own generator: the loader's worker base seed must not consume the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def build_test_loader(
    data_cfg: DataConfig,
    samples: Sequence[Sample],
    dataset_name: str,
    img_size: tuple[int, int],
    batch_size: int,
    missing: str = "full",
) -> DataLoader:
    """Loader over ``samples`` in order (resize + normalise), with ``missing`` modalities zeroed."""
    missing_modalities(missing)  # fail here, naming the value, not inside a worker
    ds = TripletDataset(samples, dataset_name, build_test_transform(data_cfg, img_size))
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=functools.partial(collate_triplets, missing=missing),
        **_loader_options(resolve_num_workers(data_cfg.num_workers), persistent=False),
        generator=torch.Generator().manual_seed(0),
    )


def dataset_from_config(data_cfg: DataConfig, progress: bool = False, generate: bool = True) -> ReIDDataset:
    """Parse ``data_cfg.dataset`` under ``data_cfg.root``.

    With ``data.synthetic=true`` the embedded synthetic dataset is generated there first when the
    dataset folder is absent; a synthetic tree made with the same ``data.synth`` parameters is
    reused, and a real (non-synthetic) dataset folder is used as it is. A synthetic tree made
    with other parameters is never replaced: that is an error naming the folder. ``data.verify`` decodes
    every image first (broken ones are an error, or skipped with ``data.skip_broken``).
    ``generate=False`` (evaluation commands) parses what is there and never writes.
    """
    if data_cfg.synthetic and generate:
        layout = data_cfg.dataset.lower()
        folder = synth.dataset_dir(layout, data_cfg.root)
        wanted = dataclasses.asdict(data_cfg.synth)
        if (Path(folder) / synth.META_FILE).is_file():
            meta = synth.load_meta(layout, data_cfg.root)
            if meta.get("params") != wanted or meta.get("generator_version") != synth.GENERATOR_VERSION:
                asked = ", ".join(f"{k}={v}" for k, v in wanted.items())
                raise DatasetError(
                    f"{folder} holds {synth.describe_tree(folder)} (generator "
                    f"v{meta.get('generator_version')}), not the data.synth settings asked for ({asked}, "
                    f"v{synth.GENERATOR_VERSION}); refusing to replace it: delete it or choose another "
                    "data.root"
                )
        elif not folder.exists():
            synth.generate(layout, data_cfg.root, progress=progress, **wanted)
    return build_dataset(
        data_cfg.dataset,
        data_cfg.root,
        skip_broken=data_cfg.skip_broken,
        verify=data_cfg.verify,
        progress=progress,
    )
