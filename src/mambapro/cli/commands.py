"""The sub-commands' handlers: check what can be checked without torch, then hand over.

Each handler refuses bad input with the same torch-free checks the function it runs calls
(:mod:`mambapro.options`, the config, the run-folder checks), and only then imports that
function: a mistyped path or value costs no seconds of loading torch. The functions' parameters
are named after the options, so :func:`_forward` passes them on without a list to keep in step.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
import warnings
from dataclasses import fields
from importlib import import_module
from pathlib import Path
from typing import Any

from mambapro.config import SynthConfig, check_dataset, dump_config, load_config
from mambapro.deploy.serve_options import ServeOptions
from mambapro.errors import UserError, check_output_dir
from mambapro.options import (
    check_analyze_options,
    check_compare_options,
    check_export_options,
    check_extract_options,
    check_index_options,
    check_search_options,
    check_serve_options,
    check_sweep_seeds,
    check_test_options,
)
from mambapro.train.runlog import check_run_folder

__all__ = ["COMMANDS"]


def _forward(target: str, args: argparse.Namespace, **given: Any) -> Any:
    """Import ``module:function`` and call it with ``given`` plus each option of the same name
    as one of its parameters."""
    module, _, name = target.partition(":")
    run = getattr(import_module(module), name)
    names = inspect.signature(run).parameters
    return run(**{k: getattr(args, k) for k in names if k not in given and hasattr(args, k)}, **given)


def _cfg(args: argparse.Namespace):
    return load_config(args.config, args.overrides, extra=path_flags(args))


def path_flags(args: argparse.Namespace) -> dict:
    """The config values given as options (``--data-root``, ``--clip-weights``, train's
    ``--output``), as a nested dict for :func:`~mambapro.config.load_config`."""
    extra: dict = {}
    if getattr(args, "data_root", None):
        extra.setdefault("data", {})["root"] = str(args.data_root)
    if getattr(args, "clip_weights", None):
        extra.setdefault("model", {})["weights"] = str(args.clip_weights)
    if getattr(args, "output", None) and args.command == "train":
        extra.setdefault("train", {})["output"] = str(args.output)
    return extra


def _refuse_old_out(args: argparse.Namespace) -> None:
    if args.old_out is not None:
        raise UserError(
            f"{args.command} --out is now --output (an output folder): use --output {args.old_out}"
        )


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(_cfg(args)), end="")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    _refuse_old_out(args)
    start = time.perf_counter()
    params = {f.name: getattr(args, f.name) for f in fields(SynthConfig)}
    dataset = check_dataset(args.dataset, "--dataset")
    root = import_module("mambapro.data.synth").generate(
        dataset, args.output, progress=not args.quiet, **params
    )
    took = time.perf_counter() - start
    built = import_module("mambapro.data").build_dataset(dataset, args.output)
    print(built)
    print(f"synthetic {built.name} dataset written to {root} in {took:.1f} s")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    params = import_module("mambapro.reports.params")
    report = params.parameter_report(cfg, args.classes, args.cameras)
    if args.json:
        if args.flops:
            report["flops"] = params.flops_data(cfg)
        print(json.dumps(report, indent=2))
        return 0
    print(params.format_parameter_report(report))
    if args.flops:
        print(params.flops_report(cfg))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    # --auto-resume: the same command line starts the run or continues it (a relaunch after a
    # failure, torchrun --max-restarts); every rank sees the same folder, so all decide alike.
    resume = args.resume or (args.auto_resume and (Path(cfg.train.output) / "last.ckpt").is_file())
    check_run_folder(cfg, resume)
    done = _forward("mambapro.train.trainer:run_training", args, cfg=cfg, resume=resume)
    if done:  # rank 0 of a distributed run, or the only process
        print(f"{done['summary']}\nreport: {Path(cfg.train.output) / 'report.txt'}")
        if done["analysis"] is not None:
            print(f"analysis page: {done['analysis']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    # The whole grid is refused before torch loads: every point's config, the point folders.
    check_output_dir(args.output, "--output")
    check_sweep_seeds(args.seeds)
    sweep = import_module("mambapro.train.sweep")
    plan = sweep.plan_sweep(
        args.config, args.set, args.output, args.overrides, extra=path_flags(args), seeds=args.seeds
    )
    sweep.run_sweep(plan, quiet=args.quiet)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    check_compare_options(args.run_a, args.run_b)
    _forward("mambapro.reports.compare:run_compare", args)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    check_test_options(args.checkpoint, args.output, args.missing, args.dataset)
    _forward("mambapro.retrieval.testing:run_test", args, extra=path_flags(args))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    _refuse_old_out(args)
    # --compare takes every following word: key=value overrides after it are overrides.
    overrides = [str(c) for c in args.compare if "=" in str(c) and not c.exists()]
    args.compare = [c for c in args.compare if str(c) not in overrides]
    args.overrides = [*overrides, *args.overrides]
    out = check_analyze_options(
        args.checkpoint, args.compare, args.ids, args.queries, args.missing, args.output
    )
    _forward("mambapro.reports.analysis:run_analyze", args, out=out)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    check_extract_options(args.checkpoint, args.out, args.missing)
    _forward("mambapro.retrieval.features:run_extract", args)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    check_search_options(
        args.checkpoint, args.query, args.gallery, args.index, args.k, args.out, args.missing
    )
    _forward("mambapro.retrieval.search:run_search", args)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    check_index_options(args.action, args.features, args.out, args.index)
    _forward("mambapro.retrieval.index:run_index", args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    fmt = check_export_options(
        args.checkpoint, args.out, args.format, args.tolerance, args.precision, args.min_cosine
    )
    _forward("mambapro.deploy.export:run_export", args, fmt=fmt, camids=not args.no_camids)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    check_serve_options(args.checkpoint, args.index, args.gallery_root)
    # Checked here, before the service (and torch) loads.
    options = ServeOptions(
        host=args.host, port=args.port, k=args.k, max_upload_mb=args.max_upload_mb, max_batch=args.max_batch
    )
    _forward("mambapro.deploy.serve:run_serve", args, options=options)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_output_dir(args.output, "--output")
    _forward("mambapro.train.demo:run_demo", args)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every broken file is listed below instead
        ds = import_module("mambapro.data").build_dataset(
            cfg.data.dataset, cfg.data.root, skip_broken=True, verify=True, progress=not args.quiet
        )
    print(ds)
    for line in import_module("mambapro.data.published").published_report(ds):
        print(line)  # split sizes against the published ones; capture conditions
    broken = ds.skipped
    for f, why in broken:
        print(f"  broken: {why if f in why else f'{f}: {why}'}")
    total = len({s.paths for s in (*ds.train, *ds.query, *ds.gallery)})  # query and gallery may share
    if broken:
        raise UserError(f"{ds.name} at {cfg.data.root}: {len(broken)} broken triplet(s), listed above")
    print(f"{ds.name} at {cfg.data.root}: all {total} triplets decode")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.dataset is not None and args.data_root is None:
        raise UserError("doctor --dataset needs --data-root (the folder holding the dataset folder)")
    return _forward("mambapro.doctor:run_doctor", args)


#: Sub-command name -> handler; the parser (:mod:`mambapro.cli.parser`) gives each its options.
COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "sweep": cmd_sweep,
    "check-data": cmd_check_data,
    "compare": cmd_compare,
    "test": cmd_test,
    "analyze": cmd_analyze,
    "extract": cmd_extract,
    "search": cmd_search,
    "index": cmd_index,
    "export": cmd_export,
    "serve": cmd_serve,
    "params": cmd_params,
    "synth": cmd_synth,
    "config": cmd_config,
    "doctor": cmd_doctor,
}
