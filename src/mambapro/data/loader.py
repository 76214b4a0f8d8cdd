"""Torch datasets, collation and the train/test loaders.

The train loader is reproducible whatever ``num_workers``: its batch sampler yields
``(index, item_seed)`` pairs (see :mod:`~mambapro.data.sampler`) and :class:`TripletDataset`
runs the transform under ``torch.random.fork_rng()`` seeded with the item seed, so the decoding
worker, the worker count and the order in which workers finish never change a tensor. The
global RNG of the caller is left untouched.

Batches are dicts (docs/CONTRACTS.md): one ``(B, 3, H, W)`` entry per modality of the dataset,
under its key (``{"RGB": ..., "NI": ..., "TI": ...}`` for the paper's datasets), and ``"pids": (B,)
long, "camids": (B,) long, "sceneids": (B,) long, "paths": list[str]``; ``paths`` holds each
sample's first file (the first modality's file, or RGBNT100's side-by-side file).

Functions that take a dataset accept its spec, a registered name or a spec-file path
(:func:`~mambapro.data.specs.dataset_spec`).
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

from ..modalities import RGB_NI_TI, ModalitySet
from . import synth
from .cache import DecodedCache, build_cache
from .datasets import ReIDDataset, build_dataset
from .io import DatasetError, DatasetRef, Sample, read_triplet
from .sampler import RandomIdentitySampler
from .specs import dataset_spec
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


def droppable(modalities: ModalitySet = RGB_NI_TI) -> tuple[str, ...]:
    """The settings modality dropout draws from: every setting of ``modalities`` but ``full``
    (R, N, T, RN, RT, NT for the paper's three; 2 for two modalities, 14 for four)."""
    return tuple(s for s in modalities.settings if s != "full")


def draw_modality_dropout(item_seed: int, rate: float, modalities: ModalitySet = RGB_NI_TI) -> str:
    """The missing-modality setting a training item gets: ``full`` with probability 1 - ``rate``,
    else one of the settings of ``modalities`` that miss something (:func:`droppable`; the six R,
    N, T, RN, RT, NT for the paper's three), uniformly.

    A pure function of the item seed, from its own stream: the augmentation draws are the same
    whatever the rate, and the worker count changes nothing.
    """
    if rate <= 0:
        return "full"
    rng = np.random.default_rng([item_seed, _DROPOUT_STREAM])
    if rng.random() >= rate:
        return "full"
    choices = droppable(modalities)
    return choices[int(rng.integers(len(choices)))]


#: The settings modality dropout draws from for the paper's modalities (all but ``full``), and
#: its seed stream's tag.
DROPPABLE = droppable(RGB_NI_TI)
_DROPOUT_STREAM = 0x6D6F6461  # "moda"


class TripletDataset(Dataset):
    """Decodes and transforms samples; ``dataset[i]`` or ``dataset[(i, item_seed)]``.

    ``dataset_name``: the dataset (spec, registered name or spec-file path); an item holds one
    tensor per modality of its spec, under the modality's key.

    ``modality_dropout`` (training, ``train.modality_dropout``): with that probability an item
    seeded by the sampler loses some of its modalities (see :func:`draw_modality_dropout`), zeroed
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
        dataset_name: DatasetRef,
        transform: Callable[[Sequence[Any]], Sequence[torch.Tensor]] | None,
        modality_dropout: float = 0.0,
        cache: DecodedCache | None = None,
        raw: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.spec = dataset_spec(dataset_name)
        self.dataset_name = self.spec.name
        self.modalities = self.spec.modalities
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
        images = self.cache[index] if self.cache is not None else read_triplet(s, self.spec)
        keys = self.modalities.keys
        if self.raw:
            tensors = tuple(images) if self.transform is None else self.transform(images)
            dropped = self._dropout(item_seed)
            out_raw: dict[str, Any] = dict(zip(keys, tensors))
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
        dropped = self._dropout(item_seed)
        if dropped != "full":
            tensors = apply_missing(tensors, dropped, self.modalities)
        out: dict[str, Any] = dict(zip(keys, tensors))
        out.update(pid=s.pid, camid=s.camid, sceneid=s.sceneid, path=s.paths[0], dropped=dropped)
        return out

    def _dropout(self, item_seed: int | None) -> str:
        if item_seed is None:
            return "full"
        return draw_modality_dropout(item_seed, self.modality_dropout, self.modalities)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of CPU tensors through numpy: one plain copy per image. torch's own
    multi-threaded copy can take hundreds of milliseconds per batch when its threads compete for
    busy cores (measured on a loaded 2-core machine; numpy: a few ms)."""
    return torch.from_numpy(np.stack([t.numpy() for t in tensors]))


#: An item's entries other than its modality images.
_ITEM_FIELDS = ("pid", "camid", "sceneid", "path", "dropped", "seed")


def collate_triplets(
    items: list[dict[str, Any]], missing: str = "full", modalities: ModalitySet | None = None
) -> dict[str, Any]:
    """Stack items into the batch dict; zero the ``missing`` modalities (a setting of
    ``modalities``; after normalisation). ``modalities`` None: the items' image keys, in their
    order (the paper's set when they are RGB, NI, TI)."""
    if modalities is None:
        keys = tuple(k for k in items[0] if k not in _ITEM_FIELDS)
        modalities = RGB_NI_TI if keys == RGB_NI_TI.keys else ModalitySet.of(keys)
    batch: dict[str, Any] = {m: _stack([it[m] for it in items]) for m in modalities.keys}
    batch["pids"] = torch.tensor([it["pid"] for it in items], dtype=torch.long)
    batch["camids"] = torch.tensor([it["camid"] for it in items], dtype=torch.long)
    batch["sceneids"] = torch.tensor([it["sceneid"] for it in items], dtype=torch.long)
    batch["paths"] = [it["path"] for it in items]
    if "seed" in items[0]:  # data.augment_on=device: uint8 images, augmented in the train step
        batch["seeds"] = torch.tensor([it["seed"] for it in items], dtype=torch.long)
        batch["dropped"] = [it["dropped"] for it in items]
    return apply_missing(batch, missing, modalities) if missing != "full" else batch  # type: ignore[return-value]


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
    spec = dataset.spec
    cache = None
    if data_cfg.cache != "none":
        cache = build_cache(
            dataset.train, spec, img_size, "bicubic", data_cfg.cache, data_cfg.cache_dir, progress
        )
    raw = data_cfg.augment_on == "device"
    if raw:
        transform = None if cache is not None else build_resize_transform(img_size)
    else:
        transform = build_train_transform(data_cfg, img_size, resize=cache is None)
    ds = TripletDataset(dataset.train, spec, transform, modality_dropout, cache=cache, raw=raw)
    return DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=functools.partial(collate_triplets, modalities=spec.modalities),
        **_loader_options(resolve_num_workers(data_cfg.num_workers)),
        # Its own generator: the loader's worker base seed must not consume the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def build_test_loader(
    data_cfg: DataConfig,
    samples: Sequence[Sample],
    dataset_name: DatasetRef,
    img_size: tuple[int, int],
    batch_size: int,
    missing: str = "full",
) -> DataLoader:
    """Loader over ``samples`` in order (resize + normalise), with ``missing`` modalities (a
    setting of the dataset's modalities) zeroed."""
    spec = dataset_spec(dataset_name)
    spec.modalities.missing(missing)  # fail here, naming the value, not inside a worker
    ds = TripletDataset(samples, spec, build_test_transform(data_cfg, img_size))
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=functools.partial(collate_triplets, missing=missing, modalities=spec.modalities),
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
    spec = dataset_spec(data_cfg.dataset)
    if data_cfg.synthetic and generate:
        folder = synth.dataset_dir(spec, data_cfg.root)
        wanted = dataclasses.asdict(data_cfg.synth)
        if (Path(folder) / synth.META_FILE).is_file():
            meta = synth.load_meta(spec, data_cfg.root)
            if (
                meta.get("params") != wanted
                or meta.get("generator_version") != synth.GENERATOR_VERSION
                or synth.meta_modalities(meta) != list(spec.modalities.keys)
            ):
                asked = ", ".join(f"{k}={v}" for k, v in wanted.items())
                if synth.meta_modalities(meta) != list(spec.modalities.keys):
                    asked += f", modalities {spec.modalities}"
                raise DatasetError(
                    f"{folder} holds {synth.describe_tree(folder)} (generator "
                    f"v{meta.get('generator_version')}), not the data.synth settings asked for ({asked}, "
                    f"v{synth.GENERATOR_VERSION}); refusing to replace it: delete it or choose another "
                    "data.root"
                )
        elif not folder.exists():
            synth.generate(spec, data_cfg.root, progress=progress, **wanted)
    return build_dataset(
        spec,
        data_cfg.root,
        skip_broken=data_cfg.skip_broken,
        verify=data_cfg.verify,
        progress=progress,
    )
