"""Bad input through the real console script: one line, exit status 2, nothing changed.

Every row of ``ROWS`` runs ``python -m mambapro.cli ...`` in a subprocess and asserts that it
exits with status 2, prints no traceback, prints exactly one line that is not a warning, that
this line names the culprit (the row's pattern), and that the files it could touch (the row's
own folder and the shared inputs: dataset trees, a finished run, stray files) are byte for byte
what they were (snapshot before and after).

Each row is its own test, named after the row (``pytest -k synth-one-camera`` runs one). The
selected rows run two at a time in a module fixture, in the order of their tests, and each test
waits for its own row's result. The shared inputs are hashed once, when the module made them;
each row then hashes them again after it ran (content, so a same-size rewrite within one mtime
tick shows too) and compares with the reference, or, when their file metadata already differed
from the reference as the row started, with a hash taken then.

The rows cover the seven classes of the reliability issue for every command: data that must not
be replaced, file-system errors (a file where a folder goes, read-only folders), values outside
their range, errors of our own code reachable from the CLI, runs refused before their folder
exists, and messages that used to mislead. When the tests run as root the subprocesses run
without the capabilities that let root ignore file permissions (``setpriv``), so the read-only
rows mean the same for root as for anyone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_zygote import Zygote
from conftest import FAST, TinyRun
from mambapro.data import build_dataset
from mambapro.data.synth import generate
from mambapro.files import artefact_kind
from mambapro.retrieval.features import run_extract
from mambapro.retrieval.testing import evaluate_model
from mambapro.train.checkpoint import load_model

SMALL_SYNTH = ["--ids", "4", "--test-ids", "2", "--cameras", "2", "--shots", "2"]
CKPT = "{s}/run/last.ckpt"
TRAIN = ["train", "--config", "demo", "-q", *FAST]
SWEEP = ["sweep", "--config", "demo", "-q", *FAST, "--data-root", "{s}/tree"]
# The demo with the DINOv2 ViT-B/14 encoder, at a size of multiples of its patch of 14.
DINOV2 = [*TRAIN, "model.backbone=dinov2_vitb14", "data.img_size=[56,28]"]

# (id, argv with {s} = shared inputs, {w} = the row's own folder, {q} = a query file;
#  pattern the error line must match; setup of the row's folder: None, or "run" to copy the
#  finished run there, "file:PATH" to write a user's file at PATH, or a name to create as a folder)
ROWS: list[tuple[str, list[str], str, str | None]] = [
    # 1. data that must never be replaced
    (
        "synth-onto-other-synthetic",
        ["synth", "--output", "{s}/tree", *SMALL_SYNTH],
        r"{s}/tree/RGBNT201 already exists \(a synthetic dataset made with seed=5, ids=6",
        None,
    ),
    (
        "train-demo-onto-other-synthetic",
        ["train", "--config", "demo", "--data-root", "{s}/tree", "--output", "{w}/run"],
        r"{s}/tree/RGBNT201 holds a synthetic dataset made with .*refusing to replace it",
        None,
    ),
    (
        "demo-onto-other-synthetic",
        ["demo", "--output", "{w}/demo", "data.root={s}/tree"],
        r"refusing to replace it",
        None,
    ),
    (
        "synth-onto-real-dataset",
        ["synth", "--output", "{s}/panels", "--layout", "rgbnt100", *SMALL_SYNTH],
        r"{s}/panels/RGBNT100/rgbir already exists",
        None,
    ),
    # 2. file-system errors, before any long computation
    (
        "train-output-is-a-file",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{s}/afile"],
        r"--output\) {s}/afile is a file, not a folder",
        None,
    ),
    (
        "train-output-below-a-file",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{s}/afile/run"],
        r"{s}/afile is a file, not a folder",
        None,
    ),
    (
        "train-output-read-only",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{s}/ro/run"],
        r"cannot write in {s}/ro",
        None,
    ),
    (
        "test-output-is-a-file",
        ["test", "--checkpoint", CKPT, "--output", "{s}/afile"],
        r"--output {s}/afile is a file",
        None,
    ),
    (
        "test-output-read-only",
        ["test", "--checkpoint", CKPT, "--output", "{s}/ro/t"],
        r"cannot write in {s}/ro",
        None,
    ),
    (
        "extract-out-below-a-file",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "query",
            "--out",
            "{s}/afile/f.npz",
        ],
        r"{s}/afile is a file, not a folder",
        None,
    ),
    (
        "extract-out-is-a-folder",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "query",
            "--out",
            "{w}/feats.npz",
        ],
        r"--out {w}/feats.npz is a folder",
        "feats.npz",
    ),
    (
        "extract-out-read-only",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "query",
            "--out",
            "{s}/ro/f.npz",
        ],
        r"cannot write in {s}/ro",
        None,
    ),
    (
        "search-out-read-only",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/tree/RGBNT201/test",
            "--out",
            "{s}/ro/r.png",
        ],
        r"cannot write in {s}/ro",
        None,
    ),
    ("synth-out-read-only", ["synth", "--output", "{s}/ro", *SMALL_SYNTH], r"cannot write in {s}/ro", None),
    (
        "synth-out-below-a-file",
        ["synth", "--output", "{s}/afile/x", *SMALL_SYNTH],
        r"{s}/afile is a file, not a folder",
        None,
    ),
    ("demo-output-is-a-file", ["demo", "--output", "{s}/afile"], r"--output {s}/afile is a file", None),
    (
        "demo-read-only-data-root",
        ["demo", "-q", "--output", "{w}/demo", "data.root={s}/ro"],
        r"cannot write in {s}/ro",
        None,
    ),
    (
        "config-unreadable",
        ["config", "--config", "{s}/secret.yaml"],
        r"{s}/secret.yaml: Permission denied",
        None,
    ),
    (
        "check-data-root-is-a-file",
        ["check-data", "--data-root", "{s}/afile"],
        r"dataset folder not found: {s}/afile/RGBNT201",
        None,
    ),
    # 3. values outside their range or choices, refused when the config is loaded
    ("config-negative-epochs", ["config", "train.epochs=-3"], r"'train.epochs' = -3 must be >= 1", None),
    (
        "train-negative-lr",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "train.lr=-1"],
        r"'train.lr' = -1.0 must be > 0",
        None,
    ),
    (
        "config-no-prompt-tokens",
        ["config", "model.prompt_tokens=0"],
        r"'model.prompt_tokens' = 0 must be >= 1",
        None,
    ),
    ("config-negative-seed", ["config", "train.seed=-1"], r"'train.seed' = -1 must be >= 0", None),
    (
        "train-bogus-device",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "train.device=bogus"],
        r"'train.device' = 'bogus' is not a device",
        None,
    ),
    (
        "config-erase-probability",
        ["config", "data.erase_prob=2"],
        r"'data.erase_prob' = 2.0 must be >= 0 and <= 1",
        None,
    ),
    (
        "config-image-size",
        ["config", "data.img_size=[100,64]"],
        r"'data.img_size' = \[100, 64\].*patch size 16",
        None,
    ),
    (
        "config-layer-beyond-depth",
        ["config", "--config", "demo", "model.adapter_layers=[4]"],
        r"'model.adapter_layers' = \[4\]: the tiny backbone has layers 0..3",
        None,
    ),
    (
        "config-schedule-start",
        ["config", "train.schedule_start=2"],
        r"'train.schedule_start' = 2 is not one of: 0, 1",
        None,
    ),
    (
        "config-batch-not-multiple",
        ["config", "data.batch_size=6"],
        r"'data.batch_size' = 6 must be a multiple",
        None,
    ),
    ("config-unknown-key", ["config", "train.epoch=3"], r"unknown key 'train.epoch'", None),
    (
        "config-not-an-integer",
        ["config", "train.epochs=ten"],
        r"'train.epochs' = 'ten' must be an integer",
        None,
    ),
    (
        "test-rerank-lambda",
        ["test", "--checkpoint", CKPT, "--output", "{w}/t", "test.rerank_lambda=3"],
        r"'test.rerank_lambda' = 3.0 must be >= 0 and <= 1",
        None,
    ),
    (
        "search-k-zero",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/tree/RGBNT201/test",
            "--out",
            "{w}/r.png",
            "-k",
            "0",
        ],
        r"-k 0: must be at least 1",
        None,
    ),
    # 4. errors of our own code that a user's input reaches
    (
        "train-more-ids-per-batch-than-exist",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "data.batch_size=16"],
        r"the training set has 4 identities, fewer than the 8 per batch",
        None,
    ),
    (
        "synth-msvr310-one-scene",
        ["synth", "--layout", "msvr310", "--output", "{w}/x", "--scenes", "1"],
        r"needs shots >= 2 and scenes >= 2",
        None,
    ),
    (
        "synth-more-test-ids-than-ids",
        ["synth", "--output", "{w}/x", "--ids", "5", "--test-ids", "10"],
        r"ids = 5 must exceed test_ids = 10",
        None,
    ),
    (
        "synth-one-camera",
        ["synth", "--output", "{w}/x", "--cameras", "1"],
        r"cameras = 1 must be in 2..9 for the rgbnt201 layout",
        None,
    ),
    (
        "test-missing-setting",
        ["test", "--checkpoint", CKPT, "--output", "{w}/t", "--missing", "X"],
        r"unknown missing-modality setting 'X'; choose one of: full, R, N, T, RN, RT, NT",
        None,
    ),
    (
        "test-unknown-modality-subset",
        ["test", "--checkpoint", CKPT, "--output", "{w}/t", "--missing", "NIR:RGB"],
        r"modality subset 'NIR': unknown modality 'NIR'; choose from RGB, NI, TI",
        None,
    ),
    (
        "test-empty-modality-subset",
        ["test", "--checkpoint", CKPT, "--output", "{w}/t", "--missing", "RGB+"],
        r"modality subset 'RGB\+' is empty or has an empty name",
        None,
    ),
    (
        "index-features-missing",
        ["index", "build", "--features", "{s}/nope.npz", "--out", "{w}/g.index"],
        r"--features {s}/nope.npz: no such file",
        None,
    ),
    (
        "index-features-not-features",
        ["index", "build", "--features", "{s}/junk.npz", "--out", "{w}/g.index"],
        r"{s}/junk.npz is not a features file written by `mambapro extract`",
        None,
    ),
    (
        "index-out-read-only",
        ["index", "build", "--features", "{s}/junk.npz", "--out", "{s}/ro/g.index"],
        r"cannot write in {s}/ro",
        None,
    ),
    (
        "search-index-not-an-index",
        ["search", "--checkpoint", CKPT, "--query", "{q}", "--index", "{s}/junk.npz", "--out", "{w}/r.png"],
        r"{s}/junk.npz is not a gallery index written by `mambapro index build`",
        None,
    ),
    (
        "search-gallery-and-index",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/notes.txt",
            "--index",
            "{s}/junk.npz",
            "--out",
            "{w}/r.png",
        ],
        r"give exactly one of --gallery \(a split folder or features .npz\) and --index",
        None,
    ),
    (
        "export-unknown-suffix",
        ["export", "--checkpoint", CKPT, "--out", "{w}/model.bin"],
        r"--out {w}/model.bin: give --format onnx or pt2 \(or name the file .onnx or .pt2\)",
        None,
    ),
    (
        "export-checkpoint-missing",
        ["export", "--checkpoint", "{s}/nope.ckpt", "--out", "{w}/model.pt2"],
        r"--checkpoint {s}/nope.ckpt: no such file",
        None,
    ),
    (
        "export-onnx-hop-scan",
        ["export", "--checkpoint", CKPT, "--out", "{w}/model.onnx", "--scan", "hop"],
        r"--scan hop: the ONNX exporter cannot lower torch's scan operator with a dynamic batch",
        None,
    ),
    (
        "export-out-read-only",
        ["export", "--checkpoint", CKPT, "--out", "{s}/ro/model.pt2"],
        r"cannot write in {s}/ro",
        None,
    ),
    (
        "serve-checkpoint-missing",
        ["serve", "--checkpoint", "{s}/nope.ckpt", "--index", "{s}/junk.npz"],
        r"--checkpoint {s}/nope.ckpt: no such file",
        None,
    ),
    (
        "serve-index-not-an-index",
        ["serve", "--checkpoint", CKPT, "--index", "{s}/junk.npz", "--port", "65000"],
        r"{s}/junk.npz is not a gallery index written by `mambapro index build`",
        None,
    ),
    (
        "serve-port-out-of-range",
        ["serve", "--checkpoint", CKPT, "--index", "{s}/junk.npz", "--port", "70000"],
        r"--port 70000: must be in 1..65535",
        None,
    ),
    (
        "serve-gallery-root-is-a-file",
        ["serve", "--checkpoint", CKPT, "--index", "{s}/junk.npz", "--gallery-root", "{s}/junk.npz"],
        r"--gallery-root {s}/junk.npz: is a file",
        None,
    ),
    (
        "serve-k-zero",
        ["serve", "--checkpoint", CKPT, "--index", "{s}/junk.npz", "-k", "0"],
        r"-k 0: must be in 1..1000",
        None,
    ),
    (
        "serve-upload-limit-under-a-byte",
        ["serve", "--checkpoint", CKPT, "--index", "{s}/junk.npz", "--max-upload-mb", "1e-9"],
        r"--max-upload-mb 1e-09: must be > 0 \(at least one byte\)",
        None,
    ),
    (
        "serve-max-batch-zero",
        ["serve", "--checkpoint", CKPT, "--index", "{s}/junk.npz", "--max-batch", "0"],
        r"--max-batch 0: must be at least 1",
        None,
    ),
    (
        "config-modality-dropout-one",
        ["config", "train.modality_dropout=1"],
        r"'train.modality_dropout' = 1.0 must be >= 0 and < 1",
        None,
    ),
    (
        "train-weights-not-found",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "model.weights={s}/nope.pt"],
        r"weights file not found: {s}/nope.pt",
        None,
    ),
    (
        "train-weights-not-weights",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "model.weights={s}/photo.jpg"],
        r"{s}/photo.jpg: not a",
        None,
    ),
    # a checkpoint of another architecture for a DINO encoder: the backbone, the file, the key
    (
        "train-dinov2-weights-clip-layout",
        [*DINOV2, "--data-root", "{s}/tree", "--output", "{w}/run", "model.weights={s}/clip_layout.pt"],
        r"model\.backbone=dinov2_vitb14: {s}/clip_layout.pt: no DINOv2 encoder weights found "
        r".*first keys: positional_embedding",
        None,
    ),
    (
        "train-dinov2-weights-patch-16",
        [*DINOV2, "--data-root", "{s}/tree", "--output", "{w}/run", "model.weights={s}/dinov3_layout.pt"],
        r"model\.backbone=dinov2_vitb14: {s}/dinov3_layout.pt: 'conv1\.weight' has shape \(768, 3, 16, 16\) "
        r"in the file but the encoder expects \(768, 3, 14, 14\)",
        None,
    ),
    (
        "train-dinov2-weights-not-weights",
        [*DINOV2, "--data-root", "{s}/tree", "--output", "{w}/run", "model.weights={s}/photo.jpg"],
        r"model\.backbone=dinov2_vitb14: {s}/photo.jpg: not a",
        None,
    ),
    (
        "extract-missing-option",
        ["extract", "--checkpoint", CKPT, "--out", "{w}/f.npz"],
        r"the following arguments are required: --data-root, --split",
        None,
    ),
    ("train-unknown-option", ["train", "--bogus"], r"unrecognized arguments: --bogus", None),
    # 5. runs refused before their folder exists (and refused resumes add nothing)
    (
        "train-val-ids-all-training-identities",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "train.select_best=val", "data.val_ids=4"],
        r"'data.val_ids' = 4 must be in 1..3: the training set has 4 identities and keeps at least one",
        None,
    ),
    (
        "train-empty-image",
        [*TRAIN, "--data-root", "{s}/broken", "--output", "{w}/run"],
        r"1 broken triplet.*cannot read image {s}/broken/RGBNT201/train_171/NI/",
        None,
    ),
    (
        "train-cache-too-big-for-memory",
        [
            *TRAIN,
            "--data-root",
            "{s}/tree",
            "--output",
            "{w}/run",
            "data.cache=memory",
            "data.img_size=[65536,65536]",
        ],
        r"data\.cache=memory needs [0-9.]+ GiB for 16 decoded triplets at 65536x65536, but only "
        r".* use data\.cache=disk",
        None,
    ),
    (
        "train-wrong-panel-width",
        [*TRAIN, "data.dataset=RGBNT100", "--data-root", "{s}/panels", "--output", "{w}/run"],
        r"expected three modality panels side by side \(width a multiple of 3\), got 95x",
        None,
    ),
    (
        "train-resume-other-settings",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "--resume", "train.lr=0.5"],
        r"--resume: {w}/run/last.ckpt was written with other settings: train.lr: 0.001 -> 0.5",
        "run",
    ),
    (
        "train-resume-nothing",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/none", "--resume"],
        r"--resume: no checkpoint at {w}/none/last.ckpt",
        None,
    ),
    (
        "train-over-a-run",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run"],
        r"{w}/run already holds a run \(last.ckpt\); pass --resume",
        "run",
    ),
    (
        "check-data-broken",
        ["check-data", "-q", "--data-root", "{s}/broken"],
        r"1 broken triplet\(s\), listed above",
        None,
    ),
    # 7. messages that name the real problem
    (
        "config-yaml-syntax",
        ["config", "--config", "{s}/bad.yaml"],
        r"{s}/bad.yaml:3:\d+: not valid YAML: expected",
        None,
    ),
    (
        "test-checkpoint-is-a-jpeg",
        ["test", "--checkpoint", "{s}/photo.jpg", "--output", "{w}/t"],
        r"{s}/photo.jpg is not a mambapro checkpoint",
        None,
    ),
    (
        "test-checkpoint-missing",
        ["test", "--checkpoint", "{s}/nope.ckpt"],
        r"--checkpoint {s}/nope.ckpt: no such file",
        None,
    ),
    (
        "search-gallery-text-file",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/notes.txt",
            "--out",
            "{w}/r.png",
        ],
        r"--gallery {s}/notes.txt is neither.*split folder or a features .npz",
        None,
    ),
    (
        "search-gallery-junk-npz",
        ["search", "--checkpoint", CKPT, "--query", "{q}", "--gallery", "{s}/junk.npz", "--out", "{w}/r.png"],
        r"{s}/junk.npz is not a features file written by `mambapro extract`",
        None,
    ),
    (
        "test-config-changes-model",
        ["test", "--checkpoint", CKPT, "--config", "{s}/other_model.yaml", "--output", "{w}/t"],
        r"--config {s}/other_model.yaml or the overrides change the model.*model.aggregator: 'ma' -> 'sum'",
        None,
    ),
    (
        "test-override-changes-model",
        ["test", "--checkpoint", CKPT, "--output", "{w}/t", "model.prompt_tokens=8"],
        r"change the model, which comes from the checkpoint: model.prompt_tokens: 4 -> 8",
        None,
    ),
    # analyze: refused before any figure is written
    (
        "analyze-checkpoint-missing",
        ["analyze", "--checkpoint", "{s}/nope.ckpt"],
        r"--checkpoint {s}/nope.ckpt: no such file",
        None,
    ),
    (
        "analyze-compare-missing",
        ["analyze", "--checkpoint", CKPT, "--compare", "{s}/nope.ckpt", "--output", "{w}/a"],
        r"--compare {s}/nope.ckpt: no such file",
        None,
    ),
    (
        "analyze-compare-not-a-checkpoint",
        ["analyze", "--checkpoint", CKPT, "--compare", "{s}/photo.jpg", "--output", "{w}/a"],
        r"{s}/photo.jpg is not a mambapro checkpoint",
        None,
    ),
    (
        "analyze-more-ids-than-the-test-set",
        ["analyze", "--checkpoint", CKPT, "--data-root", "{s}/tree", "--ids", "99"],
        r"--ids 99: the test set \(query \+ gallery\) has only 2 identities",
        None,
    ),
    (
        "analyze-one-id",
        ["analyze", "--checkpoint", CKPT, "--ids", "1", "--output", "{w}/a"],
        r"--ids 1: t-SNE needs at least 2 identities",
        None,
    ),
    (
        "analyze-out-is-a-file",
        ["analyze", "--checkpoint", CKPT, "--output", "{s}/afile"],
        r"--output {s}/afile is a file, not a folder",
        None,
    ),
    (
        "analyze-out-read-only",
        ["analyze", "--checkpoint", CKPT, "--ids", "2", "--output", "{s}/ro/a"],
        r"cannot write in {s}/ro",
        None,
    ),
    # sweep: the whole grid is checked before its first point trains
    (
        "sweep-unknown-key",
        [*SWEEP, "--output", "{w}/sw", "--set", "model.ma_dstate=4,8"],
        r"unknown key 'model.ma_dstate'",
        None,
    ),
    (
        "sweep-no-values",
        [*SWEEP, "--output", "{w}/sw", "--set", "model.ma_d_state="],
        r"--set model.ma_d_state=: no values",
        None,
    ),
    (
        "sweep-key-twice",
        [*SWEEP, "--output", "{w}/sw", "--set", "model.ma_d_state=4", "--set", "model.ma_d_state=8"],
        r"--set model.ma_d_state is given twice",
        None,
    ),
    (
        "sweep-output-is-a-file",
        [*SWEEP, "--output", "{s}/afile", "--set", "model.ma_d_state=4,8"],
        r"--output {s}/afile is a file, not a folder",
        None,
    ),
    (
        "sweep-negative-depth-at-one-point",
        [*SWEEP, "--output", "{w}/sw", "--set", "model.ma_d_state=4,8", "--set", "model.ma_depth=2,-1"],
        r"sweep point model.ma_d_state=4 model.ma_depth=-1: .*'model.ma_depth' = -1 must be >= 1",
        None,
    ),
    # 8. deployment side: an output never replaces an input or a file of another kind
    (
        "index-out-is-its-features",
        ["index", "build", "--features", "{s}/g.npz", "--out", "{s}/g.npz"],
        r"--out {s}/g.npz is the input --features {s}/g.npz; writing there would destroy it",
        None,
    ),
    (
        "index-add-out-is-its-features",
        ["index", "add", "--features", "{s}/g.npz", "--index", "{s}/g.index", "--out", "{s}/g.npz"],
        r"--out {s}/g.npz is the input --features {s}/g.npz",
        None,
    ),
    (
        "index-out-is-a-checkpoint",
        ["index", "build", "--features", "{s}/g.npz", "--out", "{s}/run/last.ckpt"],
        r"--out {s}/run/last.ckpt exists and is a PyTorch checkpoint, not a gallery index .*refusing",
        None,
    ),
    (
        "export-out-is-its-checkpoint",
        ["export", "--checkpoint", CKPT, "--format", "pt2", "--out", CKPT],
        r"--out {s}/run/last.ckpt is the input --checkpoint {s}/run/last.ckpt",
        None,
    ),
    (
        "export-out-links-to-its-checkpoint",
        ["export", "--checkpoint", CKPT, "--out", "{s}/link.pt2"],
        r"--out {s}/link.pt2 is the input --checkpoint {s}/run/last.ckpt \(the same file through a link\)",
        None,
    ),
    (
        "export-onnx-onto-features",
        ["export", "--checkpoint", CKPT, "--format", "onnx", "--out", "{s}/g.npz"],
        r"--out {s}/g.npz exists and is a features file of `mambapro extract`, not an ONNX model",
        None,
    ),
    (
        "extract-out-hard-link-to-checkpoint",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "query",
            "--out",
            "{s}/hard.npz",
        ],
        r"--out {s}/hard.npz is the input --checkpoint {s}/run/last.ckpt \(the same file through a link\)",
        None,
    ),
    (
        "extract-out-onto-an-index",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "query",
            "--out",
            "{s}/i.npz",
        ],
        r"--out {s}/i.npz exists and is a gallery index of `mambapro index`, not a features file",
        None,
    ),
    (
        "search-out-is-the-query-image",
        ["search", "--checkpoint", CKPT, "--query", "{q}", "--gallery", "{s}/g.npz", "--out", "{q}"],
        r"--out {q} is the input --query {q}",
        None,
    ),
    (
        "search-out-onto-a-photo",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/g.npz",
            "--out",
            "{s}/photo.jpg",
        ],
        r"--out {s}/photo.jpg exists and is an image \(not one mambapro wrote\), not a rank-list image",
        None,
    ),
    (
        "search-rankings-onto-a-json-of-ours-not",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/g.npz",
            "--out",
            "{s}/notes.png",
        ],
        r"--out \(its rankings\) {s}/notes.json exists and is a file mambapro did not write",
        None,
    ),
    # 9. embeddings of different models never mix
    (
        "index-add-features-of-another-checkpoint",
        ["index", "add", "--features", "{s}/g_other.npz", "--index", "{s}/g.index", "--out", "{w}/n.index"],
        r"{s}/g_other.npz and the index {s}/g.index hold embeddings of different models \(weights \w{16} vs",
        None,
    ),
    (
        "index-build-from-two-checkpoints",
        ["index", "build", "--features", "{s}/g.npz", "{s}/g_other.npz", "--out", "{w}/n.index"],
        r"{s}/g_other.npz and {s}/g.npz hold embeddings of different models \(weights",
        None,
    ),
    (
        "search-index-of-another-test-feature",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--index",
            "{s}/g.index",
            "--out",
            "{w}/r.png",
            "test.feature=ori",
        ],
        r"--index {s}/g.index and --checkpoint {s}/run/last.ckpt with these test.\* settings hold embeddings "
        r"of different models \(test.feature fuse vs ori",
        None,
    ),
    (
        "search-gallery-of-another-checkpoint",
        [
            "search",
            "--checkpoint",
            "{s}/other.ckpt",
            "--query",
            "{q}",
            "--gallery",
            "{s}/g.npz",
            "--out",
            "{w}/r.png",
        ],
        r"--gallery {s}/g.npz and --checkpoint {s}/other.ckpt .*different models \(weights",
        None,
    ),
    (
        "search-gallery-before-the-bnneck",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/g.npz",
            "--out",
            "{w}/r.png",
            "test.neck_feat=before",
        ],
        r"different models \(test.neck_feat after vs before",
        None,
    ),
    (
        "serve-index-of-another-checkpoint",
        ["serve", "--checkpoint", "{s}/other.ckpt", "--index", "{s}/g.index", "--port", "65000"],
        r"--index {s}/g.index and --checkpoint {s}/other.ckpt .*different models \(weights",
        None,
    ),
    # 10. damaged files
    (
        "index-build-empty-features",
        ["index", "build", "--features", "{s}/empty.npz", "--out", "{w}/n.index"],
        r"{s}/empty.npz is not a features file written by `mambapro extract` \(it is empty: 0 bytes\)",
        None,
    ),
    (
        "index-build-truncated-features",
        ["index", "build", "--features", "{s}/trunc.npz", "--out", "{w}/n.index"],
        r"{s}/trunc.npz: damaged features file .*extract it again",
        None,
    ),
    (
        "index-add-truncated-features",
        ["index", "add", "--features", "{s}/trunc.npz", "--index", "{s}/g.index", "--out", "{w}/n.index"],
        r"{s}/trunc.npz: damaged features file",
        None,
    ),
    (
        "search-gallery-truncated-features",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--gallery",
            "{s}/trunc.npz",
            "--out",
            "{w}/r.png",
        ],
        r"{s}/trunc.npz: damaged features file",
        None,
    ),
    (
        "search-index-truncated",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--index",
            "{s}/trunc.index",
            "--out",
            "{w}/r.png",
        ],
        r"{s}/trunc.index: corrupt gallery index \(truncated or overwritten",
        None,
    ),
    # 11. the decoded-image cache folder
    (
        "train-cache-dir-is-a-file",
        [
            *TRAIN,
            "--data-root",
            "{s}/tree",
            "--output",
            "{w}/run",
            "data.cache=disk",
            "data.cache_dir={s}/afile",
        ],
        r"data\.cache_dir {s}/afile is a file, not a folder",
        None,
    ),
    (
        "train-cache-dir-below-a-file",
        [
            *TRAIN,
            "--data-root",
            "{s}/tree",
            "--output",
            "{w}/run",
            "data.cache=disk",
            "data.cache_dir={s}/afile/c",
        ],
        r"data\.cache_dir {s}/afile/c: {s}/afile is a file, not a folder",
        None,
    ),
    (
        "train-cache-dir-read-only",
        [
            *TRAIN,
            "--data-root",
            "{s}/tree",
            "--output",
            "{w}/run",
            "data.cache=disk",
            "data.cache_dir={s}/ro/c",
        ],
        r"data\.cache_dir {s}/ro/c: cannot write in {s}/ro",
        None,
    ),
    # 12. messages that used to mislead
    (
        "test-missing-unknown-lists-every-form",
        ["test", "--checkpoint", CKPT, "--output", "{w}/t", "--missing", "bogus"],
        r"unknown missing-modality setting 'bogus'; choose one of: full, R, N, T, RN, RT, NT .*"
        r"all \(the 7 settings\), cross \(.*NI\+TI.*QUERY:GALLERY \(e\.g\. TI:RGB\+NI\)",
        None,
    ),
    (
        "test-missing-modality-named-twice",
        ["test", "--checkpoint", CKPT, "--output", "{w}/t", "--missing", "RGB+RGB:TI"],
        r"modality pair 'RGB\+RGB:TI', the query: modality subset 'RGB\+RGB' names RGB twice",
        None,
    ),
    (
        # Point 1's data is fine, point 2's root lacks the layout: refused before point 1 trains.
        "sweep-later-root-without-layout",
        [
            "sweep",
            "--config",
            "demo",
            "-q",
            *FAST,
            "--output",
            "{w}/sw",
            "--set",
            "data.root={s}/tree,{w}/empty",
        ],
        r"sweep point data.root={w}/empty: RGBNT201 dataset folder not found: {w}/empty/RGBNT201",
        "empty",
    ),
    (
        "sweep-zero-seeds",
        [*SWEEP, "--output", "{w}/sw", "--seeds", "0"],
        r"--seeds 0: must be at least 1",
        None,
    ),
    (
        "compare-not-a-run",
        ["compare", "{s}/tree", "{s}/run"],
        r"RUN_A {s}/tree: not a run folder \(no config.yaml or meta.json\)",
        None,
    ),
    (
        "sweep-root-swept-and-flag",
        [*SWEEP, "--output", "{w}/sw", "--set", "data.root={s}/tree,{w}/empty"],
        r"data.root is both swept \(--set\) and given by --data-root {s}/tree; drop one",
        "empty",
    ),
    # dataset spec files (data.dataset=FILE.yaml): one line naming the file and the field
    (
        "config-spec-file-not-found",
        ["config", "data.dataset={w}/nothere.yaml"],
        r"dataset spec file not found: {w}/nothere\.yaml",
        None,
    ),
    (
        "config-spec-file-unreadable",
        ["config", "data.dataset={s}/secret.yaml"],
        r"dataset spec file {s}/secret\.yaml: cannot read it \(Permission denied\)",
        None,
    ),
    (
        "train-spec-file-is-a-folder",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "data.dataset={w}/spec.yaml"],
        r"dataset spec file {w}/spec\.yaml is a folder, not a file",
        "spec.yaml",
    ),
    (
        "train-spec-file-not-yaml",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "data.dataset={s}/bad.yaml"],
        r"dataset spec file {s}/bad\.yaml:\d+:\d+: not valid YAML: ",
        None,
    ),
    (
        "check-data-spec-file-unknown-field",
        ["check-data", "--data-root", "{s}/tree", "data.dataset={s}/other_model.yaml"],
        r"dataset spec file {s}/other_model\.yaml: model: unknown field; the fields are: name, folder",
        None,
    ),
    (
        "config-spec-file-missing-field",
        ["config", f"data.dataset={Path(__file__).parent}/spec_files/missing_field.yaml"],
        r"spec_files/missing_field\.yaml: name_pattern: missing \(a regular expression .*required: name,",
        None,
    ),
    (
        "test-spec-file-bad-regex",
        [
            "test",
            "--checkpoint",
            CKPT,
            "--output",
            "{w}/t",
            f"data.dataset={Path(__file__).parent}/spec_files/bad_regex.yaml",
        ],
        r"spec_files/bad_regex\.yaml: name_pattern: '.*' is not a regular expression: missing \)",
        None,
    ),
    (
        "extract-spec-file-pattern-without-cam",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "query",
            "--out",
            "{w}/f.npz",
            f"data.dataset={Path(__file__).parent}/spec_files/no_cam_group.yaml",
        ],
        r"spec_files/no_cam_group\.yaml: name_pattern: '.*' lacks the named group\(s\) \(\?P<cam>\.\.\.\)",
        None,
    ),
    (
        "sweep-spec-file-one-modality",
        [
            *SWEEP,
            "--output",
            "{w}/sw",
            "--set",
            f"data.dataset=RGBNT201,{Path(__file__).parent}/spec_files/one_modality.yaml",
        ],
        r"spec_files/one_modality\.yaml: modalities: a dataset has 2 to 4 modalities, got 1",
        None,
    ),
    (
        "train-spec-file-same-folder",
        [
            *TRAIN,
            "--data-root",
            "{s}/tree",
            "--output",
            "{w}/run",
            f"data.dataset={Path(__file__).parent}/spec_files/same_folder.yaml",
        ],
        r"spec_files/same_folder\.yaml: modalities\[1\]\.folder: RGB and TI have the same folder 'img'",
        None,
    ),
    (
        "check-data-spec-file-same-letter",
        [
            "check-data",
            "--data-root",
            "{s}/tree",
            f"data.dataset={Path(__file__).parent}/spec_files/same_letter.yaml",
        ],
        r"spec_files/same_letter\.yaml: modalities\[1\]\.letter: TI and Thermal2 have the same letter 'T'",
        None,
    ),
    (
        "config-spec-file-bad-structure",
        ["config", f"data.dataset={Path(__file__).parent}/spec_files/bad_structure.yaml"],
        r"spec_files/bad_structure\.yaml: structure: 'flat' is not one of: modality_folders, side_by_side",
        None,
    ),
    (
        "train-spec-file-bad-img-size",
        [
            *TRAIN,
            "--data-root",
            "{s}/tree",
            "--output",
            "{w}/run",
            f"data.dataset={Path(__file__).parent}/spec_files/bad_img_size.yaml",
        ],
        r"spec_files/bad_img_size\.yaml: img_size: \[256\] must be \[H, W\], two positive integers",
        None,
    ),
    (
        "test-dataset-of-other-modalities",
        [
            "test",
            "-q",
            "--checkpoint",
            CKPT,
            "--dataset",
            "RGBN300",
            "--data-root",
            "{s}/tree",
            "--output",
            "{w}/t",
        ],  # fmt: skip
        r"--dataset RGBN300 has the modalities RGB\+NI, but .*last\.ckpt was trained on RGBNT201 "
        r"with RGB\+NI\+TI",
        None,
    ),
    (
        "test-dataset-unknown",
        ["test", "-q", "--checkpoint", CKPT, "--dataset", "RGBNT999", "--output", "{w}/t"],
        r"'--dataset' = 'RGBNT999' is not one of: RGBNT201, RGBNT100, MSVR310",
        None,
    ),
    # test-time precision (docs/deploy.md, Precision)
    (
        "extract-precision-int4",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "query",
            "--out",
            "{w}/f.npz",
            "--precision",
            "int4",
        ],  # fmt: skip
        r"argument --precision: invalid choice: 'int4' \(choose from '?fp32'?, '?bf16'?, '?int8'?\)",
        None,
    ),
    (
        "search-index-of-another-precision",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--index",
            "{s}/g.index",
            "--out",
            "{w}/r.png",
            "--precision",
            "int8",
        ],  # fmt: skip
        r"--index {s}/g.index holds embeddings made at fp32 and --checkpoint {s}/run/last.ckpt with these "
        r"test.\* settings at int8 \(--precision\): .* or pass --allow-precision-mismatch",
        None,
    ),
    # folder outputs never replace files their command did not write there
    (
        "train-output-beside-own-config",
        [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/project"],
        r"run folder \(train.output, --output\) {w}/project holds config.yaml, which `mambapro train` "
        r"writes there, and is not the output of an earlier `mambapro train`: refusing to replace it",
        "file:project/config.yaml",
    ),
    (
        "test-output-into-run-folder",
        ["test", "-q", "--checkpoint", "{w}/run/last.ckpt", "--output", "{w}/run"],
        r"--output {w}/run holds cmc.png \(and 2 more: report.txt, results.json\), which `mambapro test` "
        r"writes there",
        "run",
    ),
    (
        "sweep-output-onto-own-table",
        [*SWEEP, "--output", "{w}/sw", "--set", "model.ma_d_state=4,8"],
        r"--output {w}/sw holds sweep.csv, which `mambapro sweep` writes there, and is not the output of "
        r"an earlier `mambapro sweep`",
        "file:sw/sweep.csv",
    ),
    (
        "sweep-point-folder-holds-own-config",
        [*SWEEP, "--output", "{w}/sw", "--set", "model.ma_d_state=4,8"],
        r"point model.ma_d_state=8 {w}/sw/model.ma_d_state=8 holds config.yaml, which `mambapro train` "
        r"writes there",
        "file:sw/model.ma_d_state=8/config.yaml",
    ),
    (
        "analyze-output-onto-own-report",
        ["analyze", "-q", "--checkpoint", CKPT, "--output", "{w}/pages"],
        r"--output {w}/pages holds report.html, which `mambapro analyze` writes there",
        "file:pages/report.html",
    ),
    # one missing-modality setting for extract and search (docs/deploy.md, Missing modalities)
    (
        "extract-missing-all",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "gallery",
            "--out",
            "{w}/f.npz",
            "--missing",
            "all",
        ],  # fmt: skip
        r"--missing 'all': give one setting, by the missing modalities' letters \(e\.g\. T\) or the "
        r"modalities present \(e\.g\. RGB\+NI\); all, cross and QUERY:GALLERY are `mambapro test`'s",
        None,
    ),
    (
        "extract-missing-unknown-letter",
        [
            "extract",
            "--checkpoint",
            CKPT,
            "--data-root",
            "{s}/tree",
            "--split",
            "gallery",
            "--out",
            "{w}/f.npz",
            "--missing",
            "X",
        ],  # fmt: skip
        r"--missing: unknown missing-modality setting 'X'; choose one of: full, R, N, T, RN, RT, NT "
        r"\(letters name .*\) or a subset by the modalities present \(e\.g\. NI\+TI\)",
        None,
    ),
    (
        "search-missing-every-modality",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--index",
            "{s}/g.index",
            "--out",
            "{w}/r.png",
            "--missing",
            "RNT",
        ],  # fmt: skip
        r"--missing: unknown missing-modality setting 'RNT'; choose one of: full, R, N, T, RN, RT, NT",
        None,
    ),
    (
        "search-missing-pair",
        [
            "search",
            "--checkpoint",
            CKPT,
            "--query",
            "{q}",
            "--index",
            "{s}/g.index",
            "--out",
            "{w}/r.png",
            "--missing",
            "TI:RGB",
        ],  # fmt: skip
        r"--missing 'TI:RGB': give one setting",
        None,
    ),
    (
        "export-bf16-as-onnx",
        ["export", "--checkpoint", CKPT, "--out", "{w}/m.onnx", "--precision", "bf16"],
        r"--precision bf16 --format onnx: onnxruntime's CPU provider has no bf16 matrix kernels",
        None,
    ),
    (
        "export-min-cosine-above-one",
        ["export", "--checkpoint", CKPT, "--out", "{w}/m.pt2", "--precision", "int8", "--min-cosine", "1.5"],
        r"--min-cosine 1\.5: must be in \(0, 1\]",
        None,
    ),
]
if not torch.cuda.is_available():
    ROWS.append(
        (
            "train-cuda-without-gpu",
            [*TRAIN, "--data-root", "{s}/tree", "--output", "{w}/run", "train.device=cuda"],
            r"'train.device' = 'cuda' but CUDA is not available here",
            None,
        )
    )


def _drop_root_powers() -> list[str]:
    """A command prefix that runs without the capabilities that let root ignore permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: read-only folders would not be read-only")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):  # no 50 MB copy of a checkpoint
            h.update(chunk)
    return h.hexdigest()


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its type and mode and (files, and links to files) its content
    hash. A file reached by several paths (hard and symbolic links) is read once."""
    out = {}
    hashes: dict[tuple[int, int], str] = {}
    for p in sorted(root.rglob("*")):
        mode = p.lstat().st_mode
        if p.is_file():
            st = p.stat()
            key = (st.st_dev, st.st_ino)
            if key not in hashes:
                hashes[key] = _sha256(p)
            what = hashes[key]
        else:
            what = "dir"
        out[str(p.relative_to(root))] = f"{what} {mode:o}"
    return out


def _stat_snapshot(root: Path) -> dict[str, tuple[int, ...]]:
    """Every path under ``root`` with what a change of it would change without reading it: type
    and mode, and for files also inode, size, mtime and ctime (any write or chmod sets ctime)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        key = str(p.relative_to(root))
        if stat.S_ISDIR(st.st_mode):
            out[key] = (st.st_mode,)  # as in _snapshot, a folder's mtime is not compared
        else:
            out[key] = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


@dataclass(frozen=True)
class Reference:
    """The shared inputs as the module made them: their content snapshot and their stat snapshot,
    taken together once. A row whose start finds the same stat snapshot starts from that content,
    so it needs one content snapshot (after it ran), not two."""

    content: dict[str, str]
    stats: dict[str, tuple[int, ...]]


def _shared_before(shared: Path, ref: Reference) -> dict[str, str]:
    """The content snapshot of the shared inputs as a row starts: the reference, unless their
    metadata already differs from it (then their content now, so that a row is blamed only for
    what changed while it ran)."""
    return ref.content if _stat_snapshot(shared) == ref.stats else _snapshot(shared)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_run: TinyRun) -> Path:
    s = tmp_path_factory.mktemp("shared")
    # The session's tiny model, its dataset, features and index (copies: rows must be able to
    # refuse to replace them, and the broken copies below are made from them).
    shutil.copytree(tiny_run.tree, s / "tree")
    shutil.copytree(tiny_run.run, s / "run")
    shutil.copy2(tiny_run.gallery, s / "g.npz")
    shutil.copy2(tiny_run.index, s / "g.index")
    shutil.copytree(s / "tree", s / "broken")
    victim = sorted((s / "broken/RGBNT201/train_171/NI").iterdir())[0]
    victim.write_bytes(b"")
    generate("rgbnt100", s / "panels", seed=5, ids=6, test_ids=2, cameras=2, shots=2)
    victim = sorted((s / "panels/RGBNT100/rgbir/bounding_box_train").iterdir())[0]
    with Image.open(victim) as img:
        img.crop((0, 0, 95, img.height)).save(victim)  # 95 is not three equal panels
    (s / "afile").write_text("a plain file\n")
    (s / "notes.txt").write_text("some notes\n")
    Image.new("RGB", (8, 8)).save(s / "photo.jpg")
    np.save(s / "junk.npy", np.zeros(3))
    (s / "junk.npy").rename(s / "junk.npz")
    (s / "bad.yaml").write_text("train:\n  epochs: [1, 2\n  lr: 3\n")
    (s / "other_model.yaml").write_text("model:\n  aggregator: sum\ntest:\n  batch_size: 8\n")
    (s / "secret.yaml").write_text("train:\n  epochs: 3\n")
    (s / "secret.yaml").chmod(0)
    (s / "ro").mkdir()
    (s / "ro").chmod(0o555)
    # Checkpoints of another architecture for the DINO rows, small: the first keys of OpenAI's
    # CLIP layout, and the embedding of timm's DINOv3 ViT-B/16 (patch 16, not DINOv2's 14).
    clip = {"positional_embedding": torch.zeros(77, 8), "text_projection": torch.zeros(8, 8)}
    clip["visual.conv1.weight"] = torch.zeros(768, 3, 16, 16)
    torch.save(clip, s / "clip_layout.pt")
    dinov3 = {"cls_token": torch.zeros(1, 1, 768), "reg_token": torch.zeros(1, 4, 768)}
    dinov3 |= {
        "patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
        "patch_embed.proj.bias": torch.zeros(768),
    }
    torch.save(dinov3, s / "dinov3_layout.pt")
    _deployment_files(s)
    return s


def _deployment_files(s: Path) -> None:
    """Features, indexes and checkpoints of the deployment rows, made by the real commands (the
    features and the index of the run itself come from ``tiny_run``)."""
    ckpt = s / "run/last.ckpt"
    with contextlib.redirect_stdout(io.StringIO()):
        state = torch.load(ckpt, weights_only=True)
        for value in state["model"].values():  # another model of the same shape
            if value.is_floating_point():
                value.add_(0.01)
        torch.save(state, s / "other.ckpt")
        run_extract(s / "other.ckpt", s / "tree", "gallery", s / "g_other.npz", quiet=True)
    shutil.copy(s / "g.index", s / "i.npz")  # an index under a features file's suffix
    (s / "link.pt2").symlink_to(ckpt)
    os.link(ckpt, s / "hard.npz")
    (s / "notes.json").write_text('{"notes": 1}\n')
    (s / "empty.npz").write_bytes(b"")
    for name in ("g.npz", "g.index"):
        data = (s / name).read_bytes()
        (s / f"trunc{Path(name).suffix}").write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def prefix(shared: Path) -> list[str]:
    """The command prefix of every row (``_drop_root_powers``), checked once."""
    prefix = _drop_root_powers()
    if prefix:  # the read-only folder must really be read-only for the subprocesses
        probe = subprocess.run([*prefix, "touch", str(shared / "ro" / "x")], capture_output=True)
        assert probe.returncode != 0, "setpriv did not drop root's permission override"
    return prefix


#: Runs ``mambapro ARGV`` in a folder.
Runner = Callable[[list[str], Path], subprocess.CompletedProcess]


def _subprocess_runner(prefix: list[str]) -> Runner:
    """``python -m mambapro.cli`` in a process of its own, after ``prefix``."""

    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*prefix, sys.executable, "-m", "mambapro.cli", *argv],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )

    return run


def _run_row(shared: Path, ref: Reference, base: Path, row: tuple, run: Runner) -> str | None:
    """Run one row with ``run``; the description of what went wrong, or None."""
    name, argv, pattern, setup = row
    work = base / name
    work.mkdir()
    if setup == "run":
        shutil.copytree(shared / "run", work / "run")
    elif setup is not None and setup.startswith("file:"):  # a user's own file, in its folder
        own = work / setup.removeprefix("file:")
        own.parent.mkdir(parents=True)
        own.write_text("# the user's own file\n")
    elif setup is not None:
        (work / setup).mkdir()
    query = sorted((shared / "tree/RGBNT201/test/RGB").iterdir())[0]
    subst = {"{s}": str(shared), "{w}": str(work), "{q}": str(query)}

    def fill(text: str, escape: bool = False) -> str:
        for key, value in subst.items():
            text = text.replace(key, re.escape(value) if escape else value)
        return text

    shared_before = _shared_before(shared, ref)
    work_before = _snapshot(work)
    done = run([fill(a) for a in argv], work)
    returncode, stderr = done.returncode, done.stderr
    after = (_snapshot(shared), _snapshot(work))  # content hashes: same-size rewrites show too
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("mambapro: warning:")]
    problems = []
    if returncode != 2:
        problems.append(f"exit status {returncode}")
    if "Traceback" in stderr:
        problems.append("a traceback")
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines")
    elif not re.search(fill(pattern, escape=True), errors[0]):
        problems.append(f"the message does not match {fill(pattern)!r}")
    for label, a, b in (("shared inputs", shared_before, after[0]), ("its folder", work_before, after[1])):
        if a != b:
            changed = sorted(set(a.items()) ^ set(b.items()))[:3]
            problems.append(f"{label} changed: {changed}")
    if problems:
        return f"{name}: {'; '.join(problems)}\n  stderr: {stderr.strip()[-600:]}"
    return None


@pytest.fixture(scope="module")
def row_outcomes(
    request: pytest.FixtureRequest, shared: Path, prefix: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future]]:
    """Every selected row of this session, run two at a time (they are independent), in the
    order the tests run: the row's test waits for its own result only. Each thread runs its rows
    through a :class:`~cli_zygote.Zygote` (started after the prefix): a forked process per row,
    without a Python start and torch import of its own."""
    selected = [
        item.callspec.params["row"]
        for item in request.session.items
        if getattr(item, "function", None) is test_bad_input_is_one_line_exit_2_and_changes_nothing
    ]
    ref = Reference(_snapshot(shared), _stat_snapshot(shared))
    base = tmp_path_factory.mktemp("rows")
    local = threading.local()
    zygotes: list[Zygote] = []

    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        if not hasattr(local, "zygote"):
            local.zygote = Zygote(prefix, env={"COLUMNS": "200"})
            zygotes.append(local.zygote)
        return local.zygote(argv, cwd)

    pool = ThreadPoolExecutor(max_workers=2)
    try:
        yield {row[0]: pool.submit(_run_row, shared, ref, base, row, run) for row in selected}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # rows not reached (-x, an interrupt) never start
        for zygote in zygotes:
            zygote.close()


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    row: tuple, row_outcomes: dict[str, Future]
) -> None:
    failure = row_outcomes[row[0]].result()
    assert failure is None, failure


def test_the_snapshots_see_every_change(tmp_path: Path) -> None:
    """What the rows rely on: after any change to the shared inputs, the content snapshot differs
    from the reference, even a rewrite of the same size whose times are set back."""

    def make() -> tuple[Path, Reference]:
        root = tmp_path / "s"
        shutil.rmtree(root, ignore_errors=True)
        (root / "d").mkdir(parents=True)
        (root / "d/a.bin").write_bytes(b"0123456789")
        os.link(root / "d/a.bin", root / "hard.bin")
        (root / "link.bin").symlink_to(root / "d/a.bin")
        (root / "b.txt").write_text("b\n")
        (root / "b.txt").chmod(0o644)
        return root, Reference(_snapshot(root), _stat_snapshot(root))

    root, ref = make()
    assert _shared_before(root, ref) == ref.content
    assert {ref.content[k].split()[0] for k in ("d/a.bin", "hard.bin", "link.bin")} == {
        hashlib.sha256(b"0123456789").hexdigest()
    }

    def rewrite_in_place() -> None:  # same size, times set back: only the bytes tell
        st = (root / "d/a.bin").stat()
        (root / "d/a.bin").write_bytes(b"0123456780")
        os.utime(root / "d/a.bin", ns=(st.st_atime_ns, st.st_mtime_ns))

    def retarget_link() -> None:
        (root / "link.bin").unlink()
        (root / "link.bin").symlink_to(root / "b.txt")

    changes = {
        "rewrite": rewrite_in_place,
        "chmod": lambda: (root / "b.txt").chmod(0o600),
        "new file": lambda: (root / "d/new").write_text(""),
        "new folder": lambda: (root / "e").mkdir(),
        "removed": lambda: (root / "b.txt").unlink(),
        "link retargeted": retarget_link,
    }
    for what, change in changes.items():
        root, ref = make()
        change()
        assert _snapshot(root) != ref.content, what
        if what != "rewrite":  # (its ctime may fall in the reference's clock tick)
            # A row that starts after a change compares with the changed content.
            assert _shared_before(root, ref) == _snapshot(root), what


def test_a_row_fails_when_the_message_or_the_files_are_wrong(tmp_path: Path) -> None:
    """_run_row itself: a cheap refused command, run after a prefix that changes a file, in a
    process of its own and through the zygote the table uses."""
    s = tmp_path / "s"
    (s / "tree/RGBNT201/test/RGB").mkdir(parents=True)
    (s / "tree/RGBNT201/test/RGB/q.jpg").write_bytes(b"")
    (s / "f").write_text("x")
    for base in ("ok", "ok-zygote", "shared", "own", "msg", "exit"):
        (tmp_path / base).mkdir()
    ref = Reference(_snapshot(s), _stat_snapshot(s))
    row = ("config-negative-epochs", ["config", "train.epochs=-3"], r"'train.epochs' = -3 must be >= 1", None)
    assert _run_row(s, ref, tmp_path / "ok", row, _subprocess_runner([])) is None

    def touching(path: str) -> Runner:  # writes "y" there first (s/f: only its content changes)
        return _subprocess_runner(["sh", "-c", f"printf y > {path}; exec " + '"$@"', "sh"])

    failure = _run_row(s, ref, tmp_path / "shared", row, touching(str(s / "f")))
    assert failure and "shared inputs changed" in failure, failure
    ref = Reference(_snapshot(s), _stat_snapshot(s))
    failure = _run_row(s, ref, tmp_path / "own", (*row[:3], "sub"), touching("sub/g"))
    assert failure and "its folder changed" in failure and "shared" not in failure, failure
    zygote = Zygote()
    try:
        assert _run_row(s, ref, tmp_path / "ok-zygote", row, zygote) is None
        failure = _run_row(s, ref, tmp_path / "msg", (row[0], row[1], "must be >= 2", None), zygote)
        assert failure and "the message does not match" in failure, failure
        failure = _run_row(s, ref, tmp_path / "exit", (row[0], ["config", "-q"], "", None), zygote)
        assert failure and "exit status 0" in failure, failure
    finally:
        zygote.close()


def test_the_rows_cover_every_command_and_class() -> None:
    names = [name for name, _, _, _ in ROWS]
    assert len(set(names)) == len(names), "each row's name is its test id and its folder"
    commands = {argv[0] for _, argv, _, _ in ROWS}
    assert commands >= {
        "config",
        "synth",
        "demo",
        "train",
        "test",
        "extract",
        "search",
        "check-data",
        "index",
        "export",
        "serve",
        "sweep",
        "analyze",
    }
    assert len(ROWS) >= 90


def test_what_used_to_pass_silently_is_said(shared: Path, tmp_path: Path, cli: Zygote) -> None:
    # extract --out without .npz: the file gets the suffix, and the printed path is the file's.
    out = tmp_path / "adir"
    argv = [
        "extract",
        "-q",
        "--checkpoint",
        str(shared / "run/last.ckpt"),
        "--data-root",
        str(shared / "tree"),
        "--split",
        "query",
        "--out",
        str(out),
    ]
    proc = cli(argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"written to {out}.npz") and Path(f"{out}.npz").is_file()
    assert not out.exists()
    # A one-epoch run prints no scheduler warning from timm.
    argv = [*TRAIN, "--data-root", str(shared / "tree"), "--output", str(tmp_path / "one")]
    proc = cli(argv)
    assert proc.returncode == 0, proc.stderr
    assert "annealing" not in proc.stderr and "warning" not in proc.stderr.lower()


def test_queries_without_a_gallery_match_are_counted_aloud(shared: Path) -> None:
    model, cfg, _ = load_model(shared / "run/last.ckpt", extra={"data": {"root": str(shared / "tree")}})
    ds = build_dataset("RGBNT201", shared / "tree")
    lonely = ds.query[0]
    # Keep only the gallery samples of other identities, or of this one from its own camera:
    # that query has no valid match; the others keep theirs.
    gallery = [g for g in ds.gallery if g.pid != lonely.pid or g.camid == lonely.camid]
    n = len(ds.query)
    with pytest.warns(
        UserWarning, match=rf"RGBNT201: (\d+) of {n} queries have no valid match in the gallery"
    ):
        res = evaluate_model(model, cfg, "RGBNT201", ds.query, gallery, torch.device("cpu"))
    expected = sum(not any(g.pid == q.pid and g.camid != q.camid for g in gallery) for q in ds.query)
    assert res.num_skipped == expected >= 1


def test_deployment_files_resolve_from_anywhere_and_tiny_queries_are_said(
    shared: Path, tmp_path: Path, cli: Zygote
) -> None:
    # An index made in one folder, searched from another: the rank list finds every image
    # (paths are stored absolute), with no placeholder warning.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    query = sorted((shared / "tree/RGBNT201/test/RGB").iterdir())[0]
    argv = ["search", "-q", "--checkpoint", str(shared / "run/last.ckpt"), "--query", str(query)]
    argv += ["--index", str(shared / "g.index"), "--out", "r.png", "-k", "3"]
    proc = cli(argv, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    assert (
        artefact_kind(elsewhere / "r.png") == "rank list"
        and artefact_kind(elsewhere / "r.json") == "rankings"
    )
    # The same search again replaces its own rank list and rankings.
    again = cli(argv, cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    # A query of 1x1 images is ranked, with one warning naming it.
    tiny = tmp_path / "tiny/RGBNT201/test"
    for modality in ("RGB", "NI", "TI"):
        (tiny / modality).mkdir(parents=True)
        Image.new("RGB", (1, 1), (90, 90, 90)).save(tiny / modality / query.name)
    argv = [
        "search",
        "-q",
        "--checkpoint",
        str(shared / "run/last.ckpt"),
        "--query",
        str(tiny / "RGB" / query.name),
    ]
    argv += ["--gallery", str(shared / "g.npz"), "--out", str(tmp_path / "t.png")]
    proc = cli(argv)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if line.startswith("mambapro: warning:")]
    assert len(warned) == 1, proc.stderr
    assert f"query image {tiny / 'RGB' / query.name} is 1x1, upscaled more than 4x" in warned[0]
