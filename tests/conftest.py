"""Shared test helpers: the small-training config overrides and the opt-in ``one_thread`` fixture.

Test modules import the constants with ``from conftest import FAST`` (``tests`` is on the path:
``pythonpath`` in pyproject.toml) and opt in to the fixture with
``pytestmark = pytest.mark.usefixtures("one_thread")``."""

from __future__ import annotations

import pytest
import torch

# Small, fast training: the demo preset's tiny model on 32x32 inputs, one step per epoch.
FAST = [
    "data.synthetic=false",
    "data.img_size=[32,32]",
    "data.batch_size=4",
    "data.num_instances=2",
    "data.num_workers=0",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.iters_per_epoch=1",
    "test.batch_size=8",
]


#: A model identity as features files and indexes record it (mambapro.retrieval.identity).
IDENTITY = {
    "weights": "0123456789abcdef",
    "feature": "fuse",
    "neck_feat": "before",
    "img_size": [256, 128],
    "modalities": "RGB+NI+TI",
    "checkpoint": "a/last.ckpt",
}


def fast(*changes: str) -> list[str]:
    """FAST with each ``key=value`` of ``changes`` replacing the entry of the same key in place
    (a key FAST lacks is appended)."""
    out = list(FAST)
    keys = [o.split("=", 1)[0] for o in out]
    for change in changes:
        key = change.split("=", 1)[0]
        if key in keys:
            out[keys.index(key)] = change
        else:
            out.append(change)
            keys.append(key)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the whole module. Pytest imports torch before the CLI's main() can
    ask OpenMP for passive waits, so on a busy machine spinning OpenMP workers make tiny models'
    trainings several times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
