"""Shared test helpers: the small-training config overrides, the opt-in ``one_thread`` fixture and
the session's one trained tiny model (``tiny_run``) and the ``cli`` fixture (command lines in
processes of their own, without a torch import each).

Test modules import the constants with ``from conftest import FAST`` (``tests`` is on the path:
``pythonpath`` in pyproject.toml) and opt in to the fixture with
``pytestmark = pytest.mark.usefixtures("one_thread")``."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

# Idle OpenMP workers sleep instead of spinning, as in the CLI (mambapro.cli sets the same default
# before torch loads): libgomp reads this once, when torch is imported, which for the tests is
# here, before any test module. On a busy 2-core machine spinning workers made each tiny
# in-process training about six times slower (40 s instead of 7 s). An explicit choice in the
# environment wins, and the subprocesses of the tests inherit it, as they would from the CLI.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from cli_zygote import Zygote  # noqa: E402

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


@dataclass(frozen=True)
class TinyRun:
    """What ``tiny_run`` made. Shared by every module that asks for it, so read only: a test that
    changes one of these files (or needs a run folder of its own) copies it first."""

    tree: Path  #: a synthetic RGBNT201 dataset folder (seed 5: 6 ids, 2 of them test, 2 cameras, 2 shots)
    run: Path  #: the demo preset trained on ``tree`` with FAST: last.ckpt, config.yaml, metrics, ...
    checkpoint: Path  #: run / "last.ckpt"
    gallery: Path  #: the gallery split's features of that checkpoint (`mambapro extract`)
    index: Path  #: a gallery index built from them (`mambapro index build`)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """One tiny training for the whole session, with its features and index, each made by the
    code of the real command."""
    from mambapro.config import load_config
    from mambapro.data.synth import generate
    from mambapro.retrieval.features import run_extract
    from mambapro.retrieval.index import run_index
    from mambapro.train.trainer import run_training

    root = tmp_path_factory.mktemp("tiny_run")
    made = TinyRun(root / "tree", root / "run", root / "run/last.ckpt", root / "g.npz", root / "g.index")
    generate("rgbnt201", made.tree, seed=5, ids=6, test_ids=2, cameras=2, shots=2)
    run_training(
        load_config("demo", [*FAST, f"data.root={made.tree}", f"train.output={made.run}"]), quiet=True
    )
    with contextlib.redirect_stdout(io.StringIO()):
        run_extract(made.checkpoint, made.tree, "gallery", made.gallery, quiet=True)
        run_index("build", made.gallery, made.index)
    return made


@pytest.fixture(scope="session")
def cli():
    """Runs ``mambapro`` command lines as processes of their own without a Python start and torch
    import each: ``cli(argv, cwd=None)`` -> ``subprocess.CompletedProcess`` (see ``cli_zygote``)."""
    zygote = Zygote(env={"COLUMNS": "200"})
    yield zygote
    zygote.close()


#: The longest test files (see ``--durations``), started first: with the files shared out to two
#: workers (``-n 2 --dist loadfile``), a long file left for the end would run alone on one core.
LONGEST_FIRST = (
    "test_scale.py",
    "test_export.py",
    "test_interrupts.py",
    "test_engine_e2e.py",
    "test_cli_bad_input.py",
    "test_serve.py",
    "test_scan_triton.py",
    "test_analyze.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:  # noqa: ARG001
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
