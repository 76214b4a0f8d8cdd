"""P x K identity batch sampler, deterministic and shardable across distributed ranks.

The batches of an epoch follow torchreid's ``RandomIdentitySampler``: each identity's samples are
shuffled and cut into chunks of K (an identity with fewer than K samples is first sampled up to K
*with* replacement; a remainder shorter than K is dropped), then batches of P identities are drawn
without replacement among the identities that still have a chunk, until fewer than P remain. So an
epoch is roughly one pass over the training samples.

Design choices:

* **Pure function of (seed, epoch).** Each epoch uses a generator seeded by ``(seed, epoch)``, and
  every position of the epoch gets an *item seed* from a second generator seeded the same way.
  The sampler yields ``(index, item_seed)`` pairs; :class:`~mambapro.data.loader.TripletDataset`
  seeds the augmentation RNG with the item seed. Batches and augmentations are therefore
  identical whatever the number of loader workers, and whatever the number of ranks.
* **Distributed.** ``batch_size`` is the *global* batch P x K (the paper's 64 = 16 x 4). Every rank
  builds the same global batches and takes its own P / W identities of each (``world_size`` must
  divide P), so the ranks' shares are disjoint, all ranks run the same number of steps, and the
  union over ranks at step i is exactly the single-process batch i.
* ``iters_per_epoch`` fixes the epoch length instead: passes (each seeded by ``(seed, epoch,
  pass)``) are concatenated and truncated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ..errors import ConfigError

__all__ = ["RandomIdentitySampler"]

_SEED_TAG = 0x5A3C  # separates the item-seed stream from the batch stream


class RandomIdentitySampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler of P identities x K instances yielding ``(index, item_seed)`` lists.

    Args:
        samples: training samples (anything with a ``pid``) or plain integer pids.
        batch_size: global batch size P x K over all ranks.
        num_instances: K, samples per identity in a batch.
        seed: base seed; batches are a pure function of ``(seed, epoch)``.
        rank, world_size: this process's share (P / world_size identities of each batch).
        iters_per_epoch: fixed number of batches per epoch (None: one pass over the samples).
    """

    def __init__(
        self,
        samples: Sequence[Any],
        batch_size: int,
        num_instances: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        iters_per_epoch: int | None = None,
    ) -> None:
        if num_instances <= 0 or batch_size <= 0 or batch_size % num_instances != 0:
            raise ValueError(
                f"batch_size = {batch_size} must be a positive multiple of num_instances = {num_instances}"
            )
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank = {rank} must be in 0..world_size-1 (world_size = {world_size})")
        if self.num_pids_per_batch % world_size != 0:
            raise ValueError(
                f"world_size = {world_size} must divide the {self.num_pids_per_batch} identities per batch "
                f"(batch_size = {batch_size}, num_instances = {num_instances})"
            )
        if seed < 0:
            raise ValueError(f"seed = {seed} must be >= 0")
        if iters_per_epoch is not None and iters_per_epoch <= 0:
            raise ValueError(f"iters_per_epoch = {iters_per_epoch} must be positive or None")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.iters_per_epoch = iters_per_epoch
        self.epoch = 0
        # First batch of the epoch to yield: a run resumed mid-epoch skips the batches it has done.
        # ``len()`` stays the full epoch length.
        self.start_batch = 0
        self.index_of_pid: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            self.index_of_pid[int(getattr(s, "pid", s))].append(i)
        self.pids = sorted(self.index_of_pid)
        if len(self.pids) < self.num_pids_per_batch:
            raise ConfigError(
                f"the training set has {len(self.pids)} identities, fewer than the "
                f"{self.num_pids_per_batch} per batch "
                f"(data.batch_size = {batch_size} / data.num_instances = {num_instances}); "
                "lower data.batch_size"
            )
        self._cache: tuple[int, list[list[tuple[int, int]]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _one_pass(self, rng: np.random.Generator) -> list[list[int]]:
        K, P = self.num_instances, self.num_pids_per_batch
        chunks: dict[int, list[list[int]]] = {}
        for pid in self.pids:
            idxs = np.asarray(self.index_of_pid[pid])
            if len(idxs) < K:
                idxs = rng.choice(idxs, size=K, replace=True)
            idxs = rng.permutation(idxs)
            n = len(idxs) // K
            chunks[pid] = [idxs[j * K : (j + 1) * K].tolist() for j in range(n)]
        available = [p for p in self.pids if chunks[p]]
        batches = []
        while len(available) >= P:
            chosen = rng.choice(len(available), size=P, replace=False)
            batch: list[int] = []
            for pid in [available[c] for c in chosen]:
                batch += chunks[pid].pop(0)
            batches.append(batch)
            available = [p for p in available if chunks[p]]
        return batches

    def global_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """All ranks' batches of ``epoch`` as ``(index, item_seed)`` lists of length P x K."""
        if self.iters_per_epoch is None:
            batches = self._one_pass(np.random.default_rng([self.seed, epoch]))
        else:
            batches = []
            n_pass = 0
            while len(batches) < self.iters_per_epoch:
                batches += self._one_pass(np.random.default_rng([self.seed, epoch, n_pass]))
                n_pass += 1
            batches = batches[: self.iters_per_epoch]
        seeds = np.random.default_rng([self.seed, epoch, _SEED_TAG]).integers(
            0, 2**62, size=(len(batches), self.batch_size)
        )
        return [list(zip(b, s.tolist())) for b, s in zip(batches, seeds)]

    def _batches(self) -> list[list[tuple[int, int]]]:
        if self._cache is None or self._cache[0] != self.epoch:
            share = self.batch_size // self.world_size
            lo = self.rank * share
            batches = [b[lo : lo + share] for b in self.global_batches(self.epoch)]
            self._cache = (self.epoch, batches)
        return self._cache[1]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self._batches()[self.start_batch :]

    def __len__(self) -> int:
        return len(self._batches())
