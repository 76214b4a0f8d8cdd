"""Training identities: relabelling pids ``0..K-1`` and holding out a validation query/gallery."""

from __future__ import annotations

import random
from collections import defaultdict

from ..errors import ConfigError
from .io import Sample

__all__ = ["relabel", "split_validation"]


def relabel(samples: list[Sample]) -> list[Sample]:
    """``samples`` with pids relabelled ``0..K-1`` in sorted order of the original ids."""
    label = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [s._replace(pid=label[s.pid]) for s in samples]


def split_validation(
    train_samples: list[Sample], val_ids: int, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Hold out ``val_ids`` training identities as a validation query/gallery.

    Returns ``(train, val_query, val_gallery)``: the remaining training samples with pids
    relabelled ``0..K-1`` (sorted order), and the held-out samples with their pids unchanged.
    Held-out identities are drawn (seeded) among those seen by at least two cameras when there
    are enough of them. For each held-out identity one sample per camera goes to the query and
    the rest to the gallery, except where a query would be left without a gallery sample from
    another camera (market protocol): such a sample stays in the gallery.
    """
    by_pid: dict[int, list[Sample]] = defaultdict(list)
    for s in train_samples:
        by_pid[s.pid].append(s)
    pids = sorted(by_pid)
    if not 0 < val_ids < len(pids):
        raise ConfigError(
            f"'data.val_ids' = {val_ids} must be in 1..{len(pids) - 1}: the training set has {len(pids)} "
            "identities and keeps at least one"
        )
    rng = random.Random(seed)
    multi = [p for p in pids if len({s.camid for s in by_pid[p]}) >= 2]
    single = [p for p in pids if len({s.camid for s in by_pid[p]}) < 2]
    rng.shuffle(multi)
    rng.shuffle(single)
    held = set((multi + single)[:val_ids])

    query: list[Sample] = []
    gallery: list[Sample] = []
    for pid in sorted(held):
        samples = list(by_pid[pid])
        rng.shuffle(samples)
        by_cam: dict[int, list[Sample]] = defaultdict(list)
        for s in samples:
            by_cam[s.camid].append(s)
        q: list[Sample] = []
        g = list(samples)
        # Cameras with more samples first: they can give one away and still serve as matches.
        for cam in sorted(by_cam, key=lambda c: (-len(by_cam[c]), c)):
            cand = by_cam[cam][0]
            rest = [s for s in g if s is not cand]
            if all(any(r.camid != x.camid for r in rest) for x in (*q, cand)):
                q.append(cand)
                g = rest
        query += q
        gallery += g
    train = relabel([s for s in train_samples if s.pid not in held])
    return train, query, gallery
