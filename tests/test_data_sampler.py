"""P x K identity sampler: structure, replacement rule, determinism, epochs and rank sharding."""

from __future__ import annotations

from collections import Counter

import pytest

from mambapro.data import RandomIdentitySampler, Sample

# pid -> number of samples; ids 0 and 1 have fewer than K = 4 samples.
COUNTS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 8, 5: 9, 6: 12, 7: 4, 8: 6, 9: 7, 10: 13, 11: 4}


def _samples() -> list[Sample]:
    return [Sample((f"{pid}_{i}",), pid, i % 3, -1) for pid, n in COUNTS.items() for i in range(n)]


def _check_structure(batch: list[tuple[int, int]], samples: list[Sample], P: int, K: int) -> None:
    idx = [i for i, _ in batch]
    assert len(idx) == P * K
    blocks = [idx[j * K : (j + 1) * K] for j in range(P)]
    pids = [samples[b[0]].pid for b in blocks]
    assert len(set(pids)) == P  # P distinct identities ...
    for pid, block in zip(pids, blocks):
        assert {samples[i].pid for i in block} == {pid}  # ... with K instances each
        if COUNTS[pid] >= K:
            assert len(set(block)) == K  # without replacement when the id has enough


def test_pk_structure_and_replacement() -> None:
    samples = _samples()
    sampler = RandomIdentitySampler(samples, batch_size=16, num_instances=4, seed=0)
    used: Counter = Counter()
    small_blocks = 0
    for epoch in range(6):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        epoch_use: Counter = Counter()
        for b in batches:
            _check_structure(b, samples, P=4, K=4)
            epoch_use.update(i for i, _ in b)
            small_blocks += sum(samples[i].pid in (0, 1) for i, _ in b[::4])
        # Ids with >= K samples: each sample at most once per epoch.
        assert all(c == 1 for i, c in epoch_use.items() if COUNTS[samples[i].pid] >= 4)
        used.update(epoch_use)
    # Ids with fewer than K samples still appear, their samples repeated within a batch block.
    assert small_blocks > 0
    assert used[next(i for i, s in enumerate(samples) if s.pid == 0)] >= 4


def test_epoch_is_about_one_pass() -> None:
    samples = _samples()
    K, P = 4, 4
    sampler = RandomIdentitySampler(samples, batch_size=P * K, num_instances=K, seed=1)
    chunks = sum(max(n, K) // K for n in COUNTS.values())  # K-chunks available in one pass
    for epoch in range(5):
        sampler.set_epoch(epoch)
        # At most all chunks; the pass stops only when fewer than P ids have chunks left, and
        # the largest id has 3 chunks, so at most (P - 1) * 3 chunks are left over.
        assert (chunks - (P - 1) * 3) / P <= len(sampler) <= chunks // P


def test_deterministic_per_seed_and_epoch() -> None:
    samples = _samples()

    def batches(seed: int, epoch: int) -> list:
        s = RandomIdentitySampler(samples, 16, 4, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert batches(0, 0) == batches(0, 0)
    assert batches(0, 3) == batches(0, 3)
    assert batches(0, 0) != batches(0, 1)
    assert batches(0, 0) != batches(1, 0)
    seeds = [seed for b in batches(0, 2) for _, seed in b]
    assert len(set(seeds)) == len(seeds)  # every position gets its own augmentation seed


def test_iters_per_epoch() -> None:
    samples = _samples()
    s = RandomIdentitySampler(samples, 16, 4, seed=0, iters_per_epoch=11)
    one_pass = RandomIdentitySampler(samples, 16, 4, seed=0)
    assert len(s) == 11 and len(list(s)) == 11
    for b in s:
        _check_structure(b, samples, 4, 4)
    # The first pass of a fixed-length epoch is the ordinary epoch.
    assert [[i for i, _ in b] for b in list(s)[: len(one_pass)]] == [[i for i, _ in b] for b in one_pass]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_share_each_global_batch(world_size: int) -> None:
    samples = _samples()
    single = RandomIdentitySampler(samples, 16, 4, seed=5)
    ranks = [
        RandomIdentitySampler(samples, 16, 4, seed=5, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
        for step, full in enumerate(single):
            shares = [b[step] for b in per_rank]
            assert all(len(sh) == 16 // world_size for sh in shares)
            # Disjoint ids across ranks, and together exactly the single-process batch.
            pid_sets = [{samples[i].pid for i, _ in sh} for sh in shares]
            assert sum(len(p) for p in pid_sets) == len(set().union(*pid_sets)) == 4
            assert [x for sh in shares for x in sh] == full


def test_invalid_arguments() -> None:
    samples = _samples()
    with pytest.raises(ValueError, match="batch_size = 10 must be a positive multiple of num_instances = 4"):
        RandomIdentitySampler(samples, 10, 4, seed=0)
    with pytest.raises(ValueError, match="world_size = 3 must divide the 4 identities"):
        RandomIdentitySampler(samples, 16, 4, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank = 2 must be in 0..world_size-1"):
        RandomIdentitySampler(samples, 16, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="has 12 identities, fewer than the 16 per batch"):
        RandomIdentitySampler(samples, 64, 4, seed=0)


def test_start_batch_resumes_inside_an_epoch() -> None:
    pids = [i // 3 for i in range(30)]
    s = RandomIdentitySampler(pids, batch_size=8, num_instances=2, seed=4)
    s.set_epoch(2)
    full = list(s)
    s.start_batch = 3
    assert list(s) == full[3:]
    assert len(s) == len(full)  # the epoch's length does not shrink
