"""``mambapro doctor``: what a bug report needs to know about this machine and installation.

The report (plain text, or JSON with ``--json``) names the machine (OS, CPU model and cores, GPUs),
Python and the versions of torch, CUDA, Triton and the optional packages, which selective-scan
backend ``model.scan_backend=auto`` picks on each device and the result of its self-check
(:mod:`mambapro.ops.scan_selfcheck`, run here on an input of MA's class in fp32 and bf16), whether
every package of the install and of each extra imports, and with a data root, whether each dataset
folder parses by its spec (identities, captures and cameras per split, or the one-line error).

torch is imported lazily, inside :func:`collect`: a broken torch install is itself reported
rather than a traceback. Exit status of :func:`run_doctor`: 0 when everything checked is fine;
1 when a fused scan backend failed its self-check, or torch or an installed package does not
import; a requested dataset that is missing or does not parse is bad input, a
:class:`~mambapro.errors.DatasetError` (one line, exit 2 through the CLI) raised after the
report is printed.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import os
import platform
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from mambapro import __version__
from mambapro.errors import ConfigError, DatasetError, UserError, short_reason
from mambapro.machine import cpu_info

__all__ = ["collect", "format_report", "run_doctor"]

#: Packages of interest, by distribution name, reported with their versions.
VERSIONS = ("torch", "torchvision", "triton", "mamba-ssm", "onnxruntime", "faiss-cpu", "fastapi", "numpy")

#: Distribution name -> module name, where they differ.
MODULES = {
    "faiss-cpu": "faiss",
    "faiss-gpu": "faiss",
    "grad-cam": "pytorch_grad_cam",
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "pyyaml": "yaml",
    "python-multipart": "multipart",
    "open_clip_torch": "open_clip",
    "pytest-timeout": "pytest_timeout",
    "pytest-xdist": "xdist",
    "mamba-ssm": "mamba_ssm",
}

#: The representative scan input of the self-check report: MA's call (D and N of the paper's
#: model, softplus Δ with a bias, a skip weight, no gate, (B, L, D) storage viewed as (B, D, L)).
SCAN_CLASS = {"dim": 512, "d_state": 16, "length": 64}

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _requirements() -> dict[str, list[str]]:
    """Distribution names per group: ``core`` (the install's dependencies) and each extra, from
    the source tree's pyproject.toml when there is one, else from the installed metadata."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    groups: dict[str, list[str]] = {}
    try:
        import tomllib

        project = tomllib.loads(pyproject.read_text())["project"]
        if project.get("name") == "mambapro":
            groups["core"] = list(project.get("dependencies", []))
            groups.update({k: list(v) for k, v in project.get("optional-dependencies", {}).items()})
    except (ImportError, OSError, KeyError, ValueError):
        groups = {}
    if not groups:
        for req in metadata.requires("mambapro") or []:
            spec, _, marker = req.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            groups.setdefault(extra.group(1) if extra else "core", []).append(spec)
    return {g: [m.group(1) for r in reqs if (m := _REQ_NAME.match(r))] for g, reqs in groups.items()}


def _import_status(dist: str) -> dict[str, Any]:
    module = MODULES.get(dist.lower(), dist.lower().replace("-", "_"))
    version = _dist_version(dist)
    row: dict[str, Any] = {"package": dist, "module": module, "version": version}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
        row["status"] = "ok"
    except ImportError as err:
        row["status"] = "not installed" if version is None else f"fails to import: {short_reason(err)}"
    except Exception as err:  # a broken install raises anything at import
        row["status"] = f"fails to import: {type(err).__name__}: {short_reason(err)}"
    return row


def _machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "os": platform.platform(),
        "cpu": cpu_info()[0] or platform.processor() or platform.machine() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": f"{platform.python_version()} ({sys.executable})",
    }


def _scan_report(torch: Any) -> list[dict[str, Any]]:
    """Per device: what ``auto`` picks for MA's scan in fp32 and bf16, with the self-check."""
    from mambapro.ops import auto_candidates, scan_selfcheck, select_backend

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    rows = []
    for device in devices:
        row: dict[str, Any] = {
            "device": device,
            "candidates": auto_candidates(device),
            "picks": {},
            "checks": [],
        }
        for dtype in (torch.float32, torch.bfloat16):
            b, d, L, n = 2, SCAN_CLASS["dim"], SCAN_CLASS["length"], SCAN_CLASS["d_state"]
            seq = torch.zeros(b, L, d, dtype=dtype, device=device).transpose(1, 2)  # MA's layout
            bc = torch.zeros(b, L, n, dtype=dtype, device=device).transpose(1, 2)
            vec = torch.zeros(d, device=device)
            args = (seq, seq, torch.zeros(d, n, device=device), bc, bc, vec, None, vec, True, None)
            before = len(scan_selfcheck.verdicts())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    picked = select_backend("auto", *args)
                except Exception as err:  # the self-check machinery itself: reported, not raised
                    picked = f"error: {type(err).__name__}: {short_reason(err)}"
            name = str(dtype).removeprefix("torch.")
            row["picks"][name] = picked
            for v in scan_selfcheck.verdicts()[before:]:
                check = {"backend": v.backend, "dtype": name, "ok": v.ok, "detail": v.detail}
                row["checks"].append({**check, "ms": v.seconds * 1e3})
            row.setdefault("warnings", []).extend(str(w.message) for w in caught)
        rows.append(row)
    return rows


def _torch_report() -> tuple[Any, dict[str, Any]]:
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - a broken torch is what the report is for
        return None, {"error": f"torch does not import: {type(err).__name__}: {short_reason(err)}"}
    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "gpus": [],
    }
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["gpus"].append(
            f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}"
        )
    return torch, info


def _datasets(data_root: Path, dataset: str | None) -> list[dict[str, Any]]:
    from mambapro.data import build_dataset
    from mambapro.data.specs import dataset_names, dataset_spec

    rows = []
    # A spec file is looked up by its path, a registered dataset by its name.
    refs = [dataset] if dataset else dataset_names()
    for ref in refs:
        spec = dataset_spec(ref)
        name = spec.name
        row: dict[str, Any] = {"dataset": name, "folder": str(data_root / spec.folder)}
        if not dataset and not (data_root / spec.folder).exists():
            row["status"] = "not present"
            rows.append(row)
            continue
        row["requested"] = True
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = build_dataset(ref, data_root)
        except (UserError, OSError, ValueError) as err:
            row["status"] = "error"
            row["error"] = " ".join(str(err).split())
            rows.append(row)
            continue
        row["status"] = "ok"
        row["splits"] = {
            split: {
                "ids": len({s.pid for s in getattr(ds, split)}),
                "captures": len(getattr(ds, split)),
                "cameras": len({s.camid for s in getattr(ds, split)}),
            }
            for split in ("train", "query", "gallery")
        }
        row["notes"] = [str(w.message) for w in caught]
        rows.append(row)
    return rows


def collect(data_root: Path | None = None, dataset: str | None = None) -> dict[str, Any]:
    """The whole report as a dict (what ``--json`` prints)."""
    torch, torch_info = _torch_report()
    report: dict[str, Any] = {
        "mambapro": __version__,
        "machine": _machine(),
        "torch": torch_info,
        "versions": {name: _dist_version(name) for name in VERSIONS},
        "scan": _scan_report(torch) if torch is not None else [],
        "packages": {group: [_import_status(d) for d in dists] for group, dists in _requirements().items()},
    }
    if data_root is not None:
        report["data_root"] = str(data_root)
        report["datasets"] = _datasets(data_root, dataset)
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """What is not fine, besides the datasets (exit status 1)."""
    found = [report["torch"]["error"]] if "error" in report["torch"] else []
    for row in report["scan"]:
        bad = [c for c in row["checks"] if not c["ok"]]
        found += [f"{c['backend']} on {row['device']} ({c['dtype']}): {c['detail']}" for c in bad]
    for group, rows in report["packages"].items():
        found += [f"{r['package']} ({group}): {r['status']}" for r in rows if r["status"].startswith("fails")]
    return found


def _line(key: str, value: str) -> str:
    return f"  {key:<14}{value}"


def format_report(report: dict[str, Any]) -> str:
    """The plain-text report."""
    m, t = report["machine"], report["torch"]
    out = [f"mambapro doctor (mambapro {report['mambapro']})", "", "machine"]
    out.append(_line("os", m["os"]))
    out.append(_line("cpu", f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable)"))
    gpus = t.get("gpus") or ["none (torch.cuda.is_available() is False)"]
    out += [_line("gpu" if i == 0 else "", g) for i, g in enumerate(gpus)]
    out.append(_line("python", m["python"]))
    out += ["", "versions"]
    if "error" in t:
        out.append(_line("torch", t["error"]))
    else:
        cudnn = f", cuDNN {t['cudnn']}" if t["cudnn"] else ""
        cuda = f"CUDA {t['cuda'] or 'none'}{cudnn}"
        out.append(_line("torch", f"{t['version']} ({cuda}, {t['threads']} threads)"))
    for name, version in report["versions"].items():
        if name != "torch":
            out.append(_line(name, version or "not installed"))
    out += ["", "scan backend (model.scan_backend=auto)"]
    for row in report["scan"]:
        picks = ", ".join(f"{dtype}: {b}" for dtype, b in row["picks"].items())
        if not row["candidates"]:
            why = "fused backends run on CUDA only"
            if row["device"] != "cpu":
                why = "neither triton nor mamba_ssm imports"
            out.append(_line(row["device"], f"torch ({why}; no self-check needed)"))
            continue
        order = ", ".join([*row["candidates"], "torch"])
        out.append(_line(row["device"], f"picks {picks} (auto's order here: {order})"))
        for c in row["checks"]:
            state = "ok" if c["ok"] else "FAILED"
            what = f"self-check {c['backend']} {c['dtype']}: {state}, {c['detail']}"
            out.append(_line("", f"{what} ({c['ms']:.0f} ms)"))
        out += [_line("", f"warning: {w}") for w in row.get("warnings", [])]
    out += ["", "packages (import check)"]
    for group, rows in report["packages"].items():
        for i, r in enumerate(rows):
            version = f" {r['version']}" if r["version"] else ""
            what = f"{r['package']}{version} ({r['module']}): {r['status']}"
            out.append(_line(group if i == 0 else "", what))
    if "datasets" in report:
        out += ["", f"datasets under {report['data_root']}"]
        if not report["datasets"] or all(r["status"] == "not present" for r in report["datasets"]):
            out.append(_line("", "no registered dataset folder found"))
        for r in report["datasets"]:
            if r["status"] == "ok":
                parts = [
                    f"{split} {s['ids']} ids / {s['captures']} captures / {s['cameras']} cameras"
                    for split, s in r["splits"].items()
                ]
                out.append(_line(r["dataset"], "ok: " + "; ".join(parts)))
                out += [_line("", f"note: {n}") for n in r["notes"]]
            elif r["status"] == "error":
                out.append(_line(r["dataset"], f"ERROR: {r['error']}"))
            else:
                out.append(_line(r["dataset"], f"not present ({r['folder']})"))
    found = problems(report)
    out += ["", "result: " + ("everything checked is fine" if not found else f"{len(found)} problem(s)")]
    out += [f"  - {p}" for p in found]
    return "\n".join(out)


def run_doctor(data_root: Path | None = None, dataset: str | None = None, as_json: bool = False) -> int:
    """Print the report; the exit status (see the module's docstring)."""
    if dataset is not None:
        from mambapro.data.spec_file import is_spec_file
        from mambapro.data.specs import dataset_names, dataset_spec

        try:
            dataset_spec(dataset)
        except ConfigError:
            if is_spec_file(dataset):
                raise  # names the file and its field
            raise DatasetError(
                f"--dataset {dataset!r} is not a registered dataset: {', '.join(dataset_names())} "
                "(or a dataset spec file ending in .yaml or .yml)"
            ) from None
    if data_root is not None and not Path(data_root).is_dir():
        raise DatasetError(f"--data-root {data_root}: no such folder")
    report = collect(Path(data_root) if data_root is not None else None, dataset)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    if data_root is not None:
        rows = report["datasets"]
        bad = [r for r in rows if r["status"] == "error"]
        if bad:
            raise DatasetError(f"{bad[0]['dataset']}: {bad[0]['error']}")
        if not any(r["status"] == "ok" for r in rows):
            raise DatasetError(f"no registered dataset folder under {data_root}")
    return 1 if problems(report) else 0
