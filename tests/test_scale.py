"""Beyond one machine (docs/scale.md): distributed extraction, multi-node training, resuming after a
process dies. Every multi-process run is a real launch of PyTorch's own launcher (``python -m
torch.distributed.run``, gloo on CPU) or of ranks joined through the environment it sets, each
process with one thread (``OMP_NUM_THREADS=1``, what torchrun sets for several processes per node)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IDENTITY, fast
from mambapro.retrieval.features import FeatureSet, merge_shards, run_extract, shard_rows

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
#: Two epochs of three steps: the global batch of 8 (4 ids x 2) is split into 2 ids per rank.
TRAIN = [
    "--config",
    "demo",
    "--quiet",
    *fast("data.batch_size=8", "train.epochs=2", "train.iters_per_epoch=3"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, **kw)


def _ok(proc) -> None:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def _two_nodes(out: Path, *extra: str) -> list[subprocess.Popen]:
    """Two torchrun "nodes" of one process each meeting at one c10d rendezvous on 127.0.0.1: the
    multi-node recipe of docs/scale.md, both nodes on this machine."""
    endpoint = f"127.0.0.1:{_free_port()}"
    node = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    cmd = [*TORCHRUN, *node, "-m", "mambapro.cli", "train", "--output", str(out), *TRAIN, *extra]
    return [
        subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]


def _worker_of_rank(agents: list[subprocess.Popen], rank: int) -> int:
    """The pid of the worker that torchrun started with ``RANK=rank`` under one of ``agents``."""
    parents = {a.pid for a in agents}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid in parents and f"RANK={rank}" in (entry / "environ").read_bytes().decode().split("\0"):
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no worker of rank {rank} under the torchrun agents {sorted(parents)}")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mambapro.data.synth import generate

    root = tmp_path_factory.mktemp("scale_tree")
    generate("rgbnt201", root, seed=5, ids=6, test_ids=2, cameras=2, shots=2)  # 4 train ids, 8 test captures
    return root


@pytest.fixture(scope="module")
def reference(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One node, two processes: the run the multi-node and resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("scale_runs") / "one_node"
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "mambapro.cli", "train"]
    _ok(_run([*cmd, "--output", str(out), *TRAIN, f"data.root={tree}"]))
    return out


# ----------------------------------------------------------------------------- sharding


def _arrays(rows: list[int]) -> tuple:
    """A shard whose feature and path name each row."""
    zeros = np.zeros(len(rows), np.int64)
    return np.asarray(rows, np.float32)[:, None], np.asarray(rows), zeros, zeros, [f"p{i}" for i in rows]


@pytest.mark.parametrize(("n", "batch", "world"), [(8, 3, 2), (10, 4, 3), (5, 8, 2), (7, 1, 4), (16, 4, 2)])
def test_shards_are_whole_batches_and_merge_in_split_order(n: int, batch: int, world: int) -> None:
    shards = [shard_rows(n, batch, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    one = [list(range(i, min(n, i + batch))) for i in range(0, n, batch)]  # one process's batches
    for rows in shards:  # re-batched by the rank's loader, the rows are one-process batches
        assert all([rows[i : i + batch] in one for i in range(0, len(rows), batch)])
    # Each row's values tell where it came from; merged, they are in split order.
    sent = [(rows, _arrays(rows) if rows else None) for rows in shards]
    merged = merge_shards(sent[::-1], n)  # in any rank order
    assert merged.feats[:, 0].tolist() == list(range(n)) and merged.paths == [f"p{i}" for i in range(n)]
    with pytest.raises(RuntimeError, match="do not cover"):
        merge_shards([*sent, sent[0]], n)  # rank 0's rows twice


def test_index_build_of_several_features_files_equals_one(tmp_path: Path) -> None:
    """Shards extracted as separate jobs (one features file each) index as the whole split does."""
    pytest.importorskip("faiss")
    from mambapro.retrieval.gallery_index import GalleryIndex
    from mambapro.retrieval.index import run_index

    rng = np.random.default_rng(0)
    n = 40
    whole = FeatureSet(
        rng.standard_normal((n, 16)).astype(np.float32),
        np.arange(n) // 4,
        np.arange(n) % 2,
        np.zeros(n, np.int64),
        [str(tmp_path / f"{i:03d}.jpg") for i in range(n)],
        dict(IDENTITY),
    )
    parts = [(0, 15), (15, 40)]
    for k, (a, b) in enumerate(parts):
        FeatureSet(
            whole.feats[a:b],
            whole.pids[a:b],
            whole.camids[a:b],
            whole.sceneids[a:b],
            whole.paths[a:b],
            whole.identity,
        ).save(tmp_path / f"part{k}.npz")
    whole.save(tmp_path / "whole.npz")
    run_index("build", [tmp_path / "part0.npz", tmp_path / "part1.npz"], tmp_path / "parts.index")
    run_index("build", tmp_path / "whole.npz", tmp_path / "whole.index")
    joined, one = GalleryIndex.load(tmp_path / "parts.index"), GalleryIndex.load(tmp_path / "whole.index")
    assert joined.ntotal == one.ntotal == n and joined.paths == one.paths
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    for a, b in zip(joined.search(queries, 10), one.search(queries, 10)):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- extraction


@pytest.mark.slow
def test_two_process_extract_writes_the_bytes_of_one_process(
    reference: Path, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one-process file is made here, in this process, with one thread as each rank has."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    # test.batch_size=3 over 8 captures: batches of 3, 3, 2; rank 0 extracts the first and the
    # last (5 rows), rank 1 the middle one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_extract(reference / "last.ckpt", tree, "gallery", one / "g.npz", overrides=["test.batch_size=3"])
    finally:
        torch.set_num_threads(threads)
    assert "8 gallery features" in capsys.readouterr().out
    proc = _run(
        [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "mambapro.cli", "extract"]
        + ["--checkpoint", str(reference / "last.ckpt"), "--data-root", str(tree), "--split", "gallery"]
        + ["--out", str(two / "g.npz"), "test.batch_size=3"]
    )
    _ok(proc)
    assert proc.stdout.count("written to") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in two.iterdir()) == ["g.npz"]  # no temporary or per-rank file
    assert (two / "g.npz").read_bytes() == (one / "g.npz").read_bytes()
    fs = FeatureSet.load(two / "g.npz")
    assert len(fs.paths) == 8 and fs.identity["checkpoint"] == str(reference / "last.ckpt")


@pytest.mark.slow
def test_ranks_naming_different_outputs_all_refuse(reference: Path, tree: Path, tmp_path: Path) -> None:
    """``--out f_$RANK.npz``: every rank refuses with one line and exit status 2, nothing is written.

    The two ranks join through the environment torchrun would set (static rendezvous), so that
    each one's exit status is seen: torchrun itself ends the other ranks as soon as one exits."""
    port = str(_free_port())
    cmd = [sys.executable, "-m", "mambapro.cli", "extract", "--checkpoint", str(reference / "last.ckpt")]
    cmd += ["--data-root", str(tree), "--split", "query"]
    procs = []
    for rank in (0, 1):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank)}
        env["LOCAL_RANK"] = str(rank)
        procs.append(
            subprocess.Popen(
                [*cmd, "--out", str(tmp_path / f"f_{rank}.npz")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "mambapro extract: error: --out differs between the ranks"
        )
        assert str(tmp_path / "f_0.npz") in lines[0] and str(tmp_path / "f_1.npz") in lines[0]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_two_nodes_killed_then_resumed_match_one_node(reference: Path, tree: Path, tmp_path: Path) -> None:
    """Two nodes (two torchrun launches, one process each, one c10d rendezvous) train; rank 1 is
    killed (SIGKILL) once epoch 1's checkpoint exists; both nodes are launched again with
    --resume. Every record of the run (each epoch's losses, the final test metrics) equals the one
    of the uninterrupted one-node, two-process run: epoch 1 as the two nodes trained it, epoch 2
    and the test as the resumed two nodes did."""
    out = tmp_path / "two_nodes"
    agents = _two_nodes(out, f"data.root={tree}")
    try:
        while not (out / "last.ckpt").exists():
            assert all(a.poll() is None for a in agents), [a.communicate()[0][-3000:] for a in agents]
            time.sleep(0.005)
        os.kill(_worker_of_rank(agents, 1), signal.SIGKILL)
        logs = [a.communicate(timeout=300)[0] for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert all(a.returncode != 0 for a in agents), logs  # each node's torchrun reports the failure
    # The run was cut inside epoch 2: epoch 1 recorded, no test result.
    assert not (out / "results.json").exists()
    assert [r["epoch"] for r in _records(out)] == [1]
    assert _records(out) == _records(reference)[:1]  # two nodes trained epoch 1 as one node did

    resumed = _two_nodes(out, f"data.root={tree}", "--resume")
    for a in resumed:
        log = a.communicate(timeout=600)[0]
        assert a.returncode == 0, log[-3000:]
    assert _records(out) == _records(reference)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["resumed_from_epoch"] == 1
