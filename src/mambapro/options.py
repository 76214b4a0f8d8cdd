"""The checks of the commands' options, shared by the CLI and the functions that run them.

Torch-free, so the CLI refuses bad input before it pays for loading torch, and a caller of the
Python functions (``run_search``, ``run_analyze``, ``run_export``) gets the same one-line
:class:`UserError` as a user of the command line: one function per option, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mambapro.config import check_dataset
from mambapro.data.spec_file import is_spec_file
from mambapro.data.spec_type import DatasetSpec
from mambapro.data.specs import dataset_spec
from mambapro.errors import UserError
from mambapro.files import check_output, check_output_folder, npz_path
from mambapro.machine import cpu_info

__all__ = [
    "BF16_FLAGS",
    "EXPORT_FORMATS",
    "EXPORT_SUFFIXES",
    "PRECISIONS",
    "check_analyze_options",
    "check_export_options",
    "check_extract_options",
    "check_index_options",
    "check_min_cosine",
    "check_precision",
    "check_search_options",
    "check_compare_options",
    "check_dataset_option",
    "check_serve_options",
    "check_sweep_seeds",
    "check_test_options",
    "check_tolerance",
    "export_format",
    "precision_support_error",
    "require_file",
]

#: File suffix -> export format, the default of ``export --format``.
EXPORT_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
#: The export formats, ``export --format``.
EXPORT_FORMATS = tuple(EXPORT_SUFFIXES.values())


#: Test-time precisions, ``--precision`` (:mod:`mambapro.models.precision`).
PRECISIONS = ("fp32", "bf16", "int8")
#: CPU flags of native bf16 arithmetic, any one suffices: x86's AVX-512-BF16 and AMX-BF16, and
#: Arm's BF16 extension (``bf16`` in /proc/cpuinfo's Features).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def check_precision(precision: str) -> str:
    """``--precision``: one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: must be one of {', '.join(PRECISIONS)}")
    return precision


def precision_support_error(precision: str, cpu: tuple[str | None, set[str]] | None = None) -> str | None:
    """Why this CPU (``cpu``: its model and flags, default :func:`~mambapro.machine.cpu_info`)
    cannot run ``precision`` natively, or None. Only bf16 needs a CPU feature; a CPU whose flags
    are unknown (no /proc/cpuinfo) is given the benefit of the doubt."""
    if precision != "bf16":
        return None
    model, flags = cpu_info() if cpu is None else cpu
    if not flags or flags & set(BF16_FLAGS):
        return None
    return (
        f"--precision bf16: this CPU ({model or 'unknown model'}) has no native bf16 (none of the flags "
        f"{', '.join(BF16_FLAGS[:2])}); torch would emulate it, slower than fp32: use --precision int8 "
        "or fp32"
    )


def check_min_cosine(min_cosine: float) -> float:
    """``export --min-cosine``: the smallest feature cosine against fp32 accepted, in (0, 1]."""
    if not 0 < min_cosine <= 1:
        raise UserError(f"--min-cosine {min_cosine}: must be in (0, 1]")
    return min_cosine


def require_file(path: str | Path, option: str) -> Path:
    """``path`` as a :class:`Path` if it is a file; else ``OPTION PATH: no such file`` (or ``is a
    folder``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{option} {p}: {'is a folder' if p.is_dir() else 'no such file'}")
    return p


def check_analyze_options(
    checkpoint: str | Path,
    compare: Sequence[str | Path],
    ids: int | None,
    queries: int,
    missing: str | None,
    out: str | Path | None,
) -> Path:
    """Check ``mambapro analyze``'s options; returns the output folder (default: ``analysis/``
    beside the checkpoint)."""
    require_file(checkpoint, "--checkpoint")
    for c in compare:
        require_file(c, "--compare")
    if missing not in (None, "all", "cross"):
        raise UserError(
            f"--missing {missing}: analyze supports 'all' (the missing-modality table) and 'cross' "
            "(the any-to-any matrix)"
        )
    if queries < 0:
        raise UserError(f"--queries {queries}: must be >= 0")
    if ids is not None and ids < 2:
        raise UserError(f"--ids {ids}: t-SNE needs at least 2 identities")
    folder = Path(out) if out is not None else Path(checkpoint).parent / "analysis"
    return check_output_folder(folder, "--output", "analyze", ANALYSIS_OUTPUTS)


def check_search_options(
    checkpoint: str | Path,
    query: str | Path,
    gallery: str | Path | None,
    index: str | Path | None,
    k: int,
    out: str | Path,
    missing: str = "full",
) -> list[tuple[str, str | Path | None]]:
    """Check ``mambapro search``'s options: the checkpoint, ``-k``, ``--missing``, exactly one gallery source,
    and the rank-list image ``out`` and its ``.json`` rankings as outputs; returns the inputs
    (option, path) that no output may replace."""
    require_file(checkpoint, "--checkpoint")
    if k < 1:
        raise UserError(f"-k {k}: must be at least 1")
    check_one_setting(missing)
    if (gallery is None) == (index is None):
        raise UserError("give exactly one of --gallery (a split folder or features .npz) and --index")
    if index is not None:
        require_file(index, "--index")
    inputs = [("--checkpoint", checkpoint), ("--query", query), ("--gallery", gallery), ("--index", index)]
    check_output(out, "--out", "rank list", inputs)
    check_output(Path(out).with_suffix(".json"), "--out (its rankings)", "rankings", inputs)
    return inputs


def check_extract_options(checkpoint: str | Path, out: str | Path, missing: str = "full") -> Path:
    """Check ``mambapro extract``'s options; returns the features file (``.npz`` appended when
    missing, as NumPy would)."""
    require_file(checkpoint, "--checkpoint")
    check_one_setting(missing)
    return check_output(npz_path(out), "--out", "features", inputs=[("--checkpoint", checkpoint)])


def check_one_setting(missing: str) -> str:
    """``--missing`` of ``extract`` and ``search``: one setting. The forms that name several
    (``all``, ``cross``, ``QUERY:GALLERY``: ``test``'s) are refused here, before torch; the
    setting itself is checked against the checkpoint's modalities once they are known."""
    key = str(missing).strip()
    if key.lower() in ("all", "cross") or ":" in key:
        raise UserError(
            f"--missing {missing!r}: give one setting, by the missing modalities' letters (e.g. T) or "
            "the modalities present (e.g. RGB+NI); all, cross and QUERY:GALLERY are `mambapro test`'s"
        )
    return key


def check_index_options(
    action: str, features: Sequence[str | Path], out: str | Path, index: str | Path | None
) -> Path:
    """Check ``mambapro index``'s options: the features files, the index to extend (``add``) and
    the index file to write; returns ``out``."""
    if action not in ("build", "add"):
        raise UserError(f"index action {action!r}: must be build or add")
    for f in features:
        require_file(f, "--features")
    if action == "add":
        require_file(index or out, "--index" if index else "--out")
    return check_output(out, "--out", "index", inputs=[("--features", f) for f in features])


def export_format(out: str | Path, fmt: str | None) -> str:
    """The export format: ``fmt`` if given, else from ``out``'s suffix (``.onnx``, ``.pt2``)."""
    if fmt is not None:
        if fmt not in EXPORT_FORMATS:
            raise UserError(f"--format {fmt}: must be one of {', '.join(EXPORT_FORMATS)}")
        return fmt
    found = EXPORT_SUFFIXES.get(Path(out).suffix)
    if found is None:
        raise UserError(f"--out {out}: give --format onnx or pt2 (or name the file .onnx or .pt2)")
    return found


def check_tolerance(tolerance: float) -> float:
    """``export --tolerance``: the largest relative feature difference accepted, > 0."""
    if not tolerance > 0:
        raise UserError(f"--tolerance {tolerance}: must be > 0")
    return tolerance


def check_export_options(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str | None,
    tolerance: float,
    precision: str = "fp32",
    min_cosine: float = 0.99,
) -> str:
    """Check ``mambapro export``'s options; returns the format. The export runs on the CPU, so a
    bf16 export on a CPU without native bf16 is refused here."""
    require_file(checkpoint, "--checkpoint")
    fmt = export_format(out, fmt)
    check_tolerance(tolerance)
    check_precision(precision)
    if precision == "bf16" and fmt == "onnx":
        raise UserError(
            "--precision bf16 --format onnx: onnxruntime's CPU provider has no bf16 matrix kernels; "
            "export bf16 as pt2, or int8 as onnx"
        )
    problem = precision_support_error(precision)
    if problem is not None:
        raise UserError(problem)
    check_min_cosine(min_cosine)
    check_output(out, "--out", fmt, inputs=[("--checkpoint", checkpoint)])
    return fmt


def check_serve_options(checkpoint: str | Path, index: str | Path, gallery_root: str | Path | None) -> None:
    """Check ``mambapro serve``'s files: the checkpoint, the index and the gallery root folder
    (the service's limits are :class:`~mambapro.deploy.serve_options.ServeOptions`' checks)."""
    require_file(checkpoint, "--checkpoint")
    require_file(index, "--index")
    if gallery_root is not None and not Path(gallery_root).is_dir():
        what = "is a file" if Path(gallery_root).exists() else "no such folder"
        raise UserError(f"--gallery-root {gallery_root}: {what}")


def check_dataset_option(dataset: str | Path) -> DatasetSpec:
    """``test --dataset``: a registered dataset (any case) or a dataset spec file; its spec."""
    if is_spec_file(dataset):
        require_file(dataset, "--dataset")
    return dataset_spec(check_dataset(str(dataset), "--dataset"))


def check_test_options(
    checkpoint: str | Path,
    output: str | Path | None,
    missing: str | None,
    dataset: str | Path | None = None,
) -> Path:
    """Check ``mambapro test``'s options; returns the output folder (default: ``test/`` beside
    the checkpoint).

    ``--missing`` names modalities, and which exist is the model's to say: with ``--dataset`` it
    is checked here against that dataset's modalities (a cross-dataset test keeps the model's);
    without, :func:`~mambapro.retrieval.testing.run_test` checks it against the checkpoint's once
    loaded, before anything is written."""
    require_file(checkpoint, "--checkpoint")
    if dataset is not None:
        spec = check_dataset_option(dataset)
        if missing is not None:
            spec.modalities.parse_request(missing)
    folder = Path(output) if output is not None else Path(checkpoint).parent / "test"
    return check_output_folder(folder, "--output", "test", TEST_OUTPUTS)


def check_sweep_seeds(seeds: int | None) -> int | None:
    """``sweep --seeds N``: N >= 1 runs of every grid point (None: not given)."""
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds}: must be at least 1 (the number of seeds per grid point)")
    return seeds


#: The files every run folder holds from its start (:mod:`mambapro.train.runlog`).
RUN_FILES = ("config.yaml", "meta.json")

#: What each folder-output command writes into its folder (files, folders, ``*`` patterns): a
#: folder that holds one of them and is not that command's earlier output is refused
#: (:func:`mambapro.files.check_output_folder`).
TEST_OUTPUTS = (
    "results.json",
    "cmc.png",
    "report.txt",
    "missing_modality.txt",
    "missing_modality.json",
    "missing_cross.txt",
    "missing_cross.png",
)
#: A run folder: the run record, checkpoints, TensorBoard, the final test's files, the analysis.
RUN_OUTPUTS = (*RUN_FILES, "metrics.jsonl", "tb", "last.ckpt", "best.ckpt", "analysis", *TEST_OUTPUTS)
ANALYSIS_OUTPUTS = (
    "report.html",
    "analysis.json",
    "metrics.txt",
    "cmc.png",
    "tsne.png",
    "tsne-*.npz",
    "alignment.png",
    "missing_modality.txt",
    "missing_cross.txt",
    "missing_cross-*.png",
    "gradcam-*.png",
    "ranklist-*.png",
)


def check_compare_options(run_a: str | Path, run_b: str | Path) -> tuple[Path, Path]:
    """``mambapro compare RUN_A RUN_B``: two run folders (each with config.yaml and meta.json)."""
    out = []
    for name, run in (("RUN_A", run_a), ("RUN_B", run_b)):
        p = Path(run)
        if not p.is_dir():
            raise UserError(
                f"{name} {p}: {'is a file, not a run folder' if p.exists() else 'no such folder'}"
            )
        lacking = [f for f in RUN_FILES if not (p / f).is_file()]
        if lacking:
            raise UserError(
                f"{name} {p}: not a run folder (no {' or '.join(lacking)}); give the --output folder of "
                "a train run or a sweep point"
            )
        out.append(p)
    return out[0], out[1]
