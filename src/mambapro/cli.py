"""The ``mambapro`` console script.

Every sub-command that builds something takes ``--config FILE`` and trailing dotted overrides
(``key.sub=value``). Heavy imports happen inside the handlers so ``mambapro --help`` is instant.
Errors a user can fix (bad config, bad data, bad checkpoint) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from mambapro import __version__
from mambapro.config import SynthConfig, dump_config, load_config
from mambapro.data.synth import LAYOUTS
from mambapro.deploy.serve_options import MAX_K, ServeOptions
from mambapro.errors import UserError, check_output_dir
from mambapro.files import check_output, npz_path
from mambapro.modalities import parse_missing_request
from mambapro.train.runlog import check_run_folder

__all__ = ["main", "build_parser"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None, help="YAML config file (may name a _base_)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _cfg(args: argparse.Namespace, extra: dict | None = None):
    return load_config(args.config, args.overrides, extra=extra)


# ----------------------------------------------------------------------------- handlers


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(_cfg(args)), end="")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from mambapro.data import build_dataset
    from mambapro.data.synth import generate

    _refuse_old_out(args, "synth")
    start = time.perf_counter()
    root = generate(
        args.layout,
        args.output,
        seed=args.seed,
        ids=args.ids,
        test_ids=args.test_ids,
        cameras=args.cameras,
        shots=args.shots,
        scenes=args.scenes,
        progress=not args.quiet,
    )
    took = time.perf_counter() - start
    dataset = build_dataset(args.layout, args.output)
    print(dataset)
    print(f"synthetic {args.layout} dataset written to {root} in {took:.1f} s")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from mambapro.reports.params import flops_report, parameter_report

    cfg = _cfg(args)
    report = parameter_report(cfg)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        from mambapro.reports.params import format_parameter_report

        print(format_parameter_report(report))
    if args.flops:
        print(flops_report(cfg))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # Refused before the seconds of importing torch: config values, the run folder.
    cfg = _cfg(args, extra=_path_flags(args))
    check_run_folder(cfg, args.resume)

    from mambapro.train.trainer import run_training

    done = run_training(cfg, resume=args.resume, quiet=args.quiet)
    if done:  # rank 0 of a distributed run, or the only process
        print(f"{done['summary']}\nreport: {Path(cfg.train.output) / 'report.txt'}")
        if done["analysis"] is not None:
            print(f"analysis page: {done['analysis']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    # The whole grid is refused before torch loads: every point's config, the point folders.
    check_output_dir(args.output, "--output")
    from mambapro.train.sweep import plan_sweep, run_sweep

    plan = plan_sweep(args.config, args.set, args.output, args.overrides, extra=_path_flags(args))
    run_sweep(plan, quiet=args.quiet)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    _require_file(args.checkpoint, "--checkpoint")
    if args.output is not None:
        check_output_dir(args.output, "--output")
    if args.missing is not None:
        parse_missing_request(args.missing)

    from mambapro.retrieval.testing import run_test

    cfg_extra = _path_flags(args)
    run_test(
        checkpoint=args.checkpoint,
        config=args.config,
        overrides=args.overrides,
        extra=cfg_extra,
        missing=args.missing,
        rerank=args.rerank,
        output=args.output,
        quiet=args.quiet,
    )
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    # --compare takes every following word: key=value overrides after it are overrides.
    _refuse_old_out(args, "analyze")
    overrides = [str(c) for c in args.compare if "=" in str(c) and not c.exists()]
    args.compare = [c for c in args.compare if str(c) not in overrides]
    args.overrides = [*overrides, *args.overrides]
    _require_file(args.checkpoint, "--checkpoint")
    for c in args.compare:
        _require_file(c, "--compare")
    if args.ids is not None and args.ids < 2:
        raise UserError(f"--ids {args.ids}: t-SNE needs at least 2 identities")
    if args.queries < 0:
        raise UserError(f"--queries {args.queries}: must be >= 0")
    out = args.output if args.output is not None else args.checkpoint.parent / "analysis"
    check_output_dir(out, "--output")

    from mambapro.reports.analysis import run_analyze

    run_analyze(
        args.checkpoint,
        compare=args.compare,
        data_root=args.data_root,
        out=out,
        ids=args.ids,
        queries=args.queries,
        missing=args.missing,
        seed=args.seed,
        overrides=args.overrides,
        quiet=args.quiet,
    )
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    _require_file(args.checkpoint, "--checkpoint")
    check_output(npz_path(args.out), "--out", "features", inputs=[("--checkpoint", args.checkpoint)])

    from mambapro.retrieval.features import run_extract

    run_extract(
        checkpoint=args.checkpoint,
        data_root=args.data_root,
        split=args.split,
        out=args.out,
        config=args.config,
        overrides=args.overrides,
        quiet=args.quiet,
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    _require_file(args.checkpoint, "--checkpoint")
    if (args.gallery is None) == (args.index is None):
        raise UserError("give exactly one of --gallery (a split folder or features .npz) and --index")
    if args.index is not None:
        _require_file(args.index, "--index")
    inputs = [
        ("--checkpoint", args.checkpoint),
        ("--query", args.query),
        ("--gallery", args.gallery),
        ("--index", args.index),
    ]
    check_output(args.out, "--out", "rank list", inputs)
    check_output(args.out.with_suffix(".json"), "--out (its rankings)", "rankings", inputs)

    from mambapro.retrieval.search import run_search

    run_search(
        checkpoint=args.checkpoint,
        query=args.query,
        gallery=args.gallery,
        k=args.k,
        out=args.out,
        config=args.config,
        overrides=args.overrides,
        quiet=args.quiet,
        index=args.index,
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    for f in args.features:
        _require_file(f, "--features")
    if args.action == "add":
        _require_file(args.index or args.out, "--index" if args.index else "--out")
    check_output(args.out, "--out", "index", inputs=[("--features", f) for f in args.features])

    from mambapro.retrieval.index import run_index

    run_index(
        args.action,
        args.features,
        args.out,
        kind=args.kind,
        nlist=args.nlist,
        m=args.m,
        nbits=args.nbits,
        nprobe=args.nprobe,
        index=args.index,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _require_file(args.checkpoint, "--checkpoint")
    fmt = args.format or {".onnx": "onnx", ".pt2": "pt2"}.get(args.out.suffix)
    if fmt is None:
        raise UserError(f"--out {args.out}: give --format onnx or pt2 (or name the file .onnx or .pt2)")
    if not args.tolerance > 0:
        raise UserError(f"--tolerance {args.tolerance}: must be > 0")
    check_output(args.out, "--out", fmt, inputs=[("--checkpoint", args.checkpoint)])

    from mambapro.deploy.export import run_export

    run_export(
        args.checkpoint,
        fmt,
        args.out,
        scan=args.scan,
        camids=not args.no_camids,
        tolerance=args.tolerance,
        overrides=args.overrides,
        quiet=args.quiet,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _require_file(args.checkpoint, "--checkpoint")
    _require_file(args.index, "--index")
    if args.gallery_root is not None and not args.gallery_root.is_dir():
        what = "is a file" if args.gallery_root.exists() else "no such folder"
        raise UserError(f"--gallery-root {args.gallery_root}: {what}")
    # Checked here, before the service (and torch) loads.
    options = ServeOptions(
        host=args.host, port=args.port, k=args.k, max_upload_mb=args.max_upload_mb, max_batch=args.max_batch
    )

    from mambapro.deploy.serve import run_serve

    run_serve(
        args.checkpoint,
        args.index,
        gallery_root=args.gallery_root,
        options=options,
        overrides=args.overrides,
        quiet=args.quiet,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_output_dir(args.output, "--output")

    from mambapro.train.demo import run_demo

    run_demo(config=args.config, overrides=args.overrides, output=args.output, quiet=args.quiet)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from mambapro.data import build_dataset

    cfg = _cfg(args, extra=_path_flags(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every broken file is listed below instead
        ds = build_dataset(
            cfg.data.dataset, cfg.data.root, skip_broken=True, verify=True, progress=not args.quiet
        )
    print(ds)
    broken = ds.skipped
    for f, why in broken:
        print(f"  broken: {why if f in why else f'{f}: {why}'}")
    total = len({s.paths for s in (*ds.train, *ds.query, *ds.gallery)})  # query and gallery may share
    if broken:
        raise UserError(f"{ds.name} at {cfg.data.root}: {len(broken)} broken triplet(s), listed above")
    print(f"{ds.name} at {cfg.data.root}: all {total} triplets decode")
    return 0


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


def _add_old_out(p: argparse.ArgumentParser) -> None:
    # Output folders are --output everywhere; the old spelling gets a line naming the new one
    # (argparse would otherwise take --out as an abbreviation of --output).
    p.add_argument("--out", dest="old_out", type=Path, default=None, help=argparse.SUPPRESS)


def _refuse_old_out(args: argparse.Namespace, command: str) -> None:
    if args.old_out is not None:
        raise UserError(f"{command} --out is now --output (an output folder): use --output {args.old_out}")


def _require_file(path: Path, option: str) -> None:
    # Checked before torch is imported: a mistyped path costs no seconds of loading torch.
    if not path.is_file():
        raise UserError(f"{option} {path}: {'is a folder' if path.is_dir() else 'no such file'}")


def _path_flags(args: argparse.Namespace) -> dict:
    extra: dict = {}
    if getattr(args, "data_root", None):
        extra.setdefault("data", {})["root"] = str(args.data_root)
    if getattr(args, "clip_weights", None):
        extra.setdefault("model", {})["weights"] = str(args.clip_weights)
    if getattr(args, "output", None) and args.command == "train":
        extra.setdefault("train", {})["output"] = str(args.output)
    return extra


# ----------------------------------------------------------------------------- parser


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

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        return p

    p = add("demo", cmd_demo, "synthetic data -> evaluate untrained -> train tiny model -> evaluate (CPU)")
    p.add_argument("--output", "-o", type=Path, default=None, help="output folder (default runs/demo)")
    _add_config_args(p)

    p = add("train", cmd_train, "train a model")
    _data_root_arg(p)
    p.add_argument("--clip-weights", type=Path, default=None, help="local OpenAI CLIP ViT-B-16.pt")
    p.add_argument("--output", "-o", type=Path, default=None, help="run folder (default: train.output)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.ckpt")
    _add_config_args(p)

    p = add(
        "sweep",
        cmd_sweep,
        "train one run per point of a hyper-parameter grid; sweep.csv and a plot of mAP per key",
    )
    p.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="KEY=V1,V2,...",
        help="a config key and its values (typed like overrides; repeat for a grid of all combinations)",
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

    p = add("check-data", cmd_check_data, "decode every image of a dataset once and list the broken ones")
    _data_root_arg(p)
    _add_config_args(p)

    p = add("test", cmd_test, "evaluate a checkpoint (mAP, CMC, mINP)")
    _checkpoint_arg(p, "the checkpoint to evaluate (last.ckpt or best.ckpt of a run)")
    _data_root_arg(p)
    p.add_argument(
        "--missing",
        default=None,
        help="missing-modality evaluation: 'all' (the table of full, -R, -N, -T, -RN, -RT, -NT), "
        "one of R, N, T, RN, RT, NT (the MISSING modalities) or a subset by the modalities PRESENT (e.g. "
        "NI+TI), in query and gallery alike, 'cross' (the 7x7 "
        "any-to-any matrix and heat map), or QUERY:GALLERY naming the modalities PRESENT on each "
        "side, joined by '+' (e.g. TI:RGB+NI: a thermal-only query against an RGB+NIR gallery)",
    )
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
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
        cmd_analyze,
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
    p.add_argument("--missing", choices=["all"], default=None, help="also the missing-modality table")
    p.add_argument("--seed", type=int, default=0, help="seed of the identity choice and of t-SNE")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (test.* keys)")

    p = add("extract", cmd_extract, "extract features of a split to an .npz file")
    _checkpoint_arg(p, "the checkpoint whose test-time features are extracted")
    _data_root_arg(p, required=True)
    p.add_argument(
        "--split", choices=["query", "gallery", "train"], required=True, help="which split of the dataset"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the features file to write (.npz appended if missing)"
    )
    _add_config_args(p)

    p = add("search", cmd_search, "rank a gallery for a query triplet")
    _checkpoint_arg(p, "the checkpoint that embeds the query (and a gallery folder)")
    p.add_argument("--query", type=Path, required=True, help="a triplet folder or a sample file")
    p.add_argument("--gallery", type=Path, default=None, help="a dataset split folder or features .npz")
    p.add_argument("--index", type=Path, default=None, help="or a gallery index of `mambapro index build`")
    p.add_argument("-k", dest="k", type=int, default=10, help="matches per query")
    p.add_argument(
        "--out", type=Path, default=Path("ranklist.png"), help="the rank-list image (and its .json rankings)"
    )
    _add_config_args(p)

    p = add(
        "index", cmd_index, "build or extend a FAISS gallery index of features .npz files (extra: deploy)"
    )
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
        cmd_export,
        "write the test-time model as ONNX or torch.export pt2, checked against PyTorch (extra: deploy)",
    )
    _checkpoint_arg(p, "the checkpoint to export")
    p.add_argument("--out", type=Path, required=True, help="the file to write (.onnx or .pt2)")
    p.add_argument("--format", choices=["onnx", "pt2"], default=None, help="default: from --out's suffix")
    p.add_argument(
        "--scan",
        choices=["parallel", "unrolled", "hop"],
        default="parallel",
        help="how the selective scan is written in the file (docs/deploy.md, Export)",
    )
    p.add_argument("--no-camids", action="store_true", help="no camera-id input (unknown cameras)")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest relative feature difference accepted"
    )
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (test.* keys)")

    p = add(
        "serve",
        cmd_serve,
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
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (test.* keys)")

    p = add("params", cmd_params, "trainable and total parameters per part")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--flops", action="store_true", help="also print per-sample MACs of the aggregators")
    _add_config_args(p)

    p = add("synth", cmd_synth, "write the embedded synthetic tri-modal dataset in a dataset's layout")
    synth_defaults = SynthConfig()
    p.add_argument(
        "--layout", choices=sorted(LAYOUTS), default="rgbnt201", help="the dataset layout to write"
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

    p = add("config", cmd_config, "print the resolved configuration")
    _add_config_args(p)
    return parser


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _os_error_message(err: OSError) -> str:
    """``cannot write /x/y: Permission denied`` rather than ``[Errno 13] ...`` and a traceback."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or type(err).__name__
    return f"{where}: {reason}" if where else _one_line(str(err)) or reason


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    # One line per warning, without the source line Python prints by default.
    print(f"mambapro: warning: {_one_line(str(message))}", file=file or sys.stderr)


def _passive_openmp_waits() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the
    environment already sets a policy.

    libgomp (PyTorch's OpenMP on Linux) otherwise keeps the main process's intra-op threads
    spinning between parallel regions, so training holds every core even while it runs Python.
    With as many threads as cores, any other runnable process (the DataLoader workers, another
    job) preempts one of them and every parallel op then waits out a scheduler slice: on the
    2-core demo machine that made a training epoch 2-5x slower and burnt 2-3x the CPU time.
    The policy changes no number (the same threads split the same work). libgomp reads it
    once, when torch is imported, which the handlers do after this runs (this module imports
    no torch).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    _passive_openmp_waits()
    parser = build_parser()
    # Overrides may stand anywhere among the options: argparse takes the positional list once,
    # so the key=value tokens after an option come back as extras and join the overrides.
    args, extras = parser.parse_known_args(argv)
    stray = [a for a in extras if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    warnings.showwarning = _show_warning
    try:
        return args.handler(args)
    except UserError as err:
        print(f"mambapro {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        # File-system failures (permission denied, read-only, no space, a file where a folder
        # should be) are the environment's, not bugs: one line naming the path.
        print(f"mambapro {args.command}: error: {_os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mambapro {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
