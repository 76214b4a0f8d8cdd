"""The ``mambapro`` argument parser: every sub-command, its options and their help."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from mambapro import __version__
from mambapro.cli.commands import COMMANDS
from mambapro.config import SynthConfig
from mambapro.data.synth import LAYOUTS
from mambapro.deploy.serve_options import MAX_K, ServeOptions
from mambapro.options import EXPORT_FORMATS, PRECISIONS
from mambapro.parts import EXPORT_FORMS

__all__ = ["build_parser"]


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse names the option and the value)."""
    value = int(text)  # ValueError: argparse's "invalid positive_int value: 'x'"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None, help="YAML config file (may name a _base_)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _data_root_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        required=required,
        help="folder holding the dataset folder (data.root)",
    )


def _checkpoint_arg(p: argparse.ArgumentParser, help_: str) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help=help_)


def _precision_arg(p: argparse.ArgumentParser, mismatch: bool = False) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="test-time precision: fp32; bf16 (CPUs with avx512_bf16/amx_bf16); int8 (quantized linear "
        "layers; docs/deploy.md, Precision)",
    )
    if mismatch:
        p.add_argument(
            "--allow-precision-mismatch",
            action="store_true",
            help="search a gallery made at another --precision than the queries",
        )


def _missing_arg(p: argparse.ArgumentParser, whose: str) -> None:
    p.add_argument(
        "--missing",
        default="full",
        metavar="SETTING",
        help=f"modalities {whose} without, zeroed as `test --missing` zeroes them: the missing ones' "
        "letters (T, RN) or the modalities present (RGB+NI); default full",
    )


def _add_old_out(p: argparse.ArgumentParser) -> None:
    # Output folders are --output everywhere; the old spelling gets a line naming the new one
    # (argparse would otherwise take --out as an abbreviation of --output).
    p.add_argument("--out", dest="old_out", type=Path, default=None, help=argparse.SUPPRESS)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mambapro",
        description="MambaPro multi-modal (RGB/NIR/TIR) object re-identification toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"mambapro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=COMMANDS[name])
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        return p

    p = add("demo", "synthetic data -> evaluate untrained -> train tiny model -> evaluate (CPU)")
    p.add_argument("--output", "-o", type=Path, default=None, help="output folder (default runs/demo)")
    _add_config_args(p)

    p = add("train", "train a model")
    _data_root_arg(p)
    p.add_argument("--clip-weights", type=Path, default=None, help="local OpenAI CLIP ViT-B-16.pt")
    p.add_argument("--output", "-o", type=Path, default=None, help="run folder (default: train.output)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.ckpt")
    resume.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue from OUTPUT/last.ckpt if it exists, else start the run (relaunches, "
        "torchrun --max-restarts)",
    )
    _add_config_args(p)

    p = add(
        "sweep",
        "train one run per point of a hyper-parameter grid; sweep.csv and a plot of mAP per key",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a config key and its values (typed like overrides; repeat for a grid of all combinations)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="run every grid point with N seeds (train.seed, train.seed+1, ...); the summary gives "
        "mean ± sample std, min and max over them (sweep_summary.csv)",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="sweep folder: one run folder per point, sweep.csv, sweep.png (rerun to skip/resume points)",
    )
    _data_root_arg(p)
    p.add_argument("--clip-weights", type=Path, default=None, help="local OpenAI CLIP ViT-B-16.pt")
    _add_config_args(p)

    p = add("compare", "what differs between two run folders: config, versions, data, seed, machine, metrics")
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="a run folder (train --output, a sweep point)")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="the run folder to compare it with")

    p = add("check-data", "decode every image of a dataset once and list the broken ones")
    _data_root_arg(p)
    _add_config_args(p)

    p = add("test", "evaluate a checkpoint (mAP, CMC, mINP)")
    _checkpoint_arg(p, "the checkpoint to evaluate (last.ckpt or best.ckpt of a run)")
    _data_root_arg(p)
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="test on another dataset with the same modalities (a registered name or a dataset spec "
        "file, found under --data-root): the report says 'trained on A, tested on B'; cameras the "
        "model never saw get the mean of its learned camera embeddings",
    )
    p.add_argument(
        "--missing",
        default=None,
        help="missing-modality evaluation, by the model's modalities (RGB, NI, TI below): 'all' (the "
        "table of full, -R, -N, -T, -RN, -RT, -NT), "
        "one of R, N, T, RN, RT, NT (the MISSING modalities) or a subset by the modalities PRESENT (e.g. "
        "NI+TI), in query and gallery alike, 'cross' (the 7x7 "
        "any-to-any matrix and heat map), or QUERY:GALLERY naming the modalities PRESENT on each "
        "side, joined by '+' (e.g. TI:RGB+NI: a thermal-only query against an RGB+NIR gallery)",
    )
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    _precision_arg(p)
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="where to write results (default: next to the checkpoint)",
    )
    _add_config_args(p)

    p = add(
        "analyze",
        "figures of checkpoints on their test set: t-SNE, modality alignment before/after MA, "
        "Grad-CAM, rank lists, CMC; report.html",
    )
    _checkpoint_arg(p, "the checkpoint to analyse")
    p.add_argument(
        "--compare", type=Path, nargs="+", default=[], metavar="CKPT", help="checkpoints of the same dataset"
    )
    _data_root_arg(p)
    p.add_argument(
        "--output", "-o", type=Path, default=None, help="output folder (default: analysis/ by the checkpoint)"
    )
    _add_old_out(p)
    p.add_argument(
        "--ids",
        type=int,
        default=None,
        help="test identities in the t-SNE, the same in every panel (default: 20, or all if fewer)",
    )
    p.add_argument("--queries", type=int, default=8, help="queries for Grad-CAM: the best- and worst-AP ones")
    p.add_argument(
        "--missing",
        choices=["all", "cross"],
        default=None,
        help="also the missing-modality table (all) or the any-to-any heat map (cross)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the identity choice and of t-SNE")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (test.* keys)")

    p = add("extract", "extract features of a split to an .npz file")
    _checkpoint_arg(p, "the checkpoint whose test-time features are extracted")
    _data_root_arg(p, required=True)
    p.add_argument(
        "--split", choices=["query", "gallery", "train"], required=True, help="which split of the dataset"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the features file to write (.npz appended if missing)"
    )
    _precision_arg(p)
    _missing_arg(p, "the features are made")
    _add_config_args(p)

    p = add("search", "rank a gallery for a query triplet")
    _checkpoint_arg(p, "the checkpoint that embeds the query (and a gallery folder)")
    p.add_argument("--query", type=Path, required=True, help="a triplet folder or a sample file")
    p.add_argument("--gallery", type=Path, default=None, help="a dataset split folder or features .npz")
    p.add_argument("--index", type=Path, default=None, help="or a gallery index of `mambapro index build`")
    p.add_argument("-k", dest="k", type=int, default=10, help="matches per query")
    p.add_argument(
        "--out", type=Path, default=Path("ranklist.png"), help="the rank-list image (and its .json rankings)"
    )
    _precision_arg(p, mismatch=True)
    _missing_arg(p, "the queries are embedded")
    _add_config_args(p)

    p = add("index", "build or extend a FAISS gallery index of features .npz files (extra: deploy)")
    p.add_argument("action", choices=["build", "add"], help="build a new index, or add captures to one")
    p.add_argument("--features", type=Path, nargs="+", required=True, help="features .npz file(s) of extract")
    p.add_argument("--out", type=Path, required=True, help="the index file (add: updated unless --index)")
    p.add_argument("--index", type=Path, default=None, help="add: the index to extend (default: --out)")
    p.add_argument(
        "--kind",
        choices=["flat", "ivf-pq"],
        default="flat",
        help="flat: exact; ivf-pq: compressed, approximate",
    )
    p.add_argument("--nlist", type=int, default=None, help="ivf-pq: cells (default about 4 sqrt(N))")
    p.add_argument("--m", type=int, default=64, help="ivf-pq: PQ sub-quantizers (must divide the dimension)")
    p.add_argument("--nbits", type=int, default=8, help="ivf-pq: bits per sub-quantizer code")
    p.add_argument("--nprobe", type=int, default=16, help="ivf-pq: cells searched per query")

    p = add(
        "export",
        "write the test-time model as ONNX or torch.export pt2, checked against PyTorch (extra: deploy)",
    )
    _checkpoint_arg(p, "the checkpoint to export")
    p.add_argument("--out", type=Path, required=True, help="the file to write (.onnx or .pt2)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=None, help="default: from --out's suffix")
    p.add_argument(
        "--scan",
        choices=EXPORT_FORMS,
        default="parallel",
        help="how the selective scan is written in the file (docs/deploy.md, Export)",
    )
    p.add_argument("--no-camids", action="store_true", help="no camera-id input (unknown cameras)")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest relative feature difference accepted (fp32)"
    )
    _precision_arg(p)
    p.add_argument(
        "--min-cosine",
        type=float,
        default=0.99,
        help="bf16/int8: smallest feature cosine against the fp32 model accepted on synthetic triplets",
    )
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (test.* keys)")

    p = add(
        "serve",
        "serve searches over a gallery index: POST /search, GET /health, an upload page at / (extra: deploy)",
    )
    _checkpoint_arg(p, "the checkpoint that embeds the queries (the index must come from it)")
    p.add_argument("--index", type=Path, required=True, help="a gallery index of `mambapro index build`")
    p.add_argument(
        "--gallery-root",
        type=Path,
        default=None,
        help="folder the gallery images are served from, read-only (default: the deepest folder "
        "holding all modality files of the captures the index lists); nothing outside it is served",
    )
    serve_defaults = ServeOptions()
    p.add_argument(
        "--host",
        default=serve_defaults.host,
        help="address to bind (default loopback only; the service has no auth)",
    )
    p.add_argument("--port", type=int, default=serve_defaults.port, help="TCP port to listen on")
    p.add_argument(
        "-k",
        dest="k",
        type=int,
        default=serve_defaults.k,
        help=f"matches per query when a request gives no k (1..{MAX_K})",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=serve_defaults.max_upload_mb,
        help="largest accepted image upload",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=serve_defaults.max_batch,
        help="most concurrent queries embedded in one model call",
    )
    _precision_arg(p, mismatch=True)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (test.* keys)")

    p = add("params", "trainable and total parameters per part")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--flops", action="store_true", help="also give per-sample MACs of the backbone and the aggregators"
    )
    p.add_argument(
        "--classes",
        type=positive_int,
        metavar="N",
        help="training identities (the classifiers' width; default: the dataset's published count)",
    )
    p.add_argument(
        "--cameras",
        type=positive_int,
        metavar="N",
        help="training cameras (the camera table; default: the dataset's published count)",
    )
    _add_config_args(p)

    p = add("synth", "write the embedded synthetic dataset in a dataset's layout and modalities")
    synth_defaults = SynthConfig()
    p.add_argument(
        "--dataset",
        "--layout",
        dest="dataset",
        default="RGBNT201",
        metavar="NAME|FILE.yaml",
        help=f"the dataset whose layout to write: a registered one ({', '.join(sorted(LAYOUTS))}; any "
        "case) or a dataset spec file",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("data/synthetic"),
        help="folder the dataset folder is written in",
    )
    _add_old_out(p)
    p.add_argument("--seed", type=int, default=synth_defaults.seed, help="seed of the generator")
    p.add_argument("--ids", type=int, default=synth_defaults.ids, help="identities in total")
    p.add_argument("--test-ids", type=int, default=synth_defaults.test_ids, help="of which test identities")
    p.add_argument("--cameras", type=int, default=synth_defaults.cameras, help="cameras per identity")
    p.add_argument("--shots", type=int, default=synth_defaults.shots, help="captures per identity and camera")
    p.add_argument("--scenes", type=int, default=synth_defaults.scenes, help="scenes (msvr310 layout)")

    p = add(
        "doctor",
        "report the machine, versions, the scan backend auto picks (with its self-check), extras and "
        "datasets, for a bug report",
    )
    p.add_argument(
        "--data-root", type=Path, default=None, help="also check the dataset folders under this folder"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="with --data-root: check only this dataset (default: every registered one found there)",
    )
    p.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")

    p = add("config", "print the resolved configuration")
    _add_config_args(p)
    return parser
