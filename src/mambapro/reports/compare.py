"""``mambapro compare RUN_A RUN_B``: what differs between two run folders, as one table.

Read from what every run records (:mod:`mambapro.train.runlog`): the configuration keys
(``config.yaml``, by :func:`~mambapro.config.config_diff`; ``train.output`` left out, it differs
by definition), the seed, the package versions, the dataset fingerprint (files hash, and per
split identities, captures, cameras) and the machine (CPU model and instruction-set flags,
PyTorch's CPU kernel level and threads, device, GPU) of ``meta.json``, and the final metrics
(``results.json``, else the last test record of ``metrics.jsonl``). Each differing item is a row;
what is the same is summarised in one line. Torch-free.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import yaml

from mambapro.config import config_diff
from mambapro.errors import UserError
from mambapro.options import check_compare_options

__all__ = ["compare_runs", "format_comparison", "run_compare"]

#: Metrics compared, as results.json names them; shown in percent.
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")

#: Config keys that differ between any two runs and say nothing about the numbers.
IGNORED_KEYS = ("train.output",)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable as JSON ({type(err).__name__})") from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not readable as YAML ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a run's config (a mapping of sections)")
    return data


def final_metrics(run: Path) -> tuple[dict[str, float] | None, str]:
    """The run's final metrics (fractions) and where they came from; (None, reason) if unfinished."""
    results = run / "results.json"
    if results.is_file():
        rows = _read_json(results).get("results") or {}
        if rows:
            name, row = next(iter(rows.items()))
            return {m: float(row[m]) for m in METRICS if m in row}, f"results.json ({name})"
    records = []
    log = run / "metrics.jsonl"
    if log.is_file():
        for number, line in enumerate(log.read_text().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # e.g. the last line of a killed run: said, not hidden
                warnings.warn(f"{log}:{number}: not a JSON record, left out", stacklevel=2)
    finals = [r for r in records if "test_mAP" in r]
    if finals:
        return {
            m: float(finals[-1][f"test_{m}"]) for m in METRICS if f"test_{m}" in finals[-1]
        }, "metrics.jsonl"
    return None, "no final metrics (unfinished run?)"


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def _fingerprint_items(fp: Any) -> dict[str, Any]:
    if not isinstance(fp, dict):
        return {"dataset fingerprint": "not recorded"}
    items = {
        "dataset": fp.get("dataset"),
        "dataset files": f"{fp.get('files')} files, sha256 {str(fp.get('sha256'))[:16]}",
        "dataset query+gallery": f"sha256 {str(fp.get('eval_sha256'))[:16]}",
    }
    for split, entry in (fp.get("splits") or {}).items():
        items[f"dataset {split}"] = (
            f"{entry.get('ids')} ids, {entry.get('captures')} captures, {entry.get('cameras')} cameras"
        )
    return items


def _machine_items(meta: dict[str, Any]) -> dict[str, Any]:
    machine = meta.get("machine") or {}
    return {
        "cpu": machine.get("cpu", "not recorded"),
        "cpu isa flags": machine.get("isa", "not recorded"),
        "torch cpu kernels": machine.get("torch_cpu_capability", "not recorded"),
        "torch threads": machine.get("torch_threads", "not recorded"),
        "device": meta.get("device"),
        "gpu": machine.get("gpu", "not recorded"),
        "world size": meta.get("world_size"),
        "platform": meta.get("platform"),
    }


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """The comparison of two run folders: ``rows`` (group, item, A, B, note) of what differs,
    ``same`` (group -> how many items agree), the metrics and where they came from."""
    a, b = check_compare_options(run_a, run_b)
    cfg_a, cfg_b = _read_config(a / "config.yaml"), _read_config(b / "config.yaml")
    meta_a, meta_b = _read_json(a / "meta.json"), _read_json(b / "meta.json")
    rows: list[tuple[str, str, str, str, str]] = []
    same: dict[str, int] = {}

    changed = []
    for line in config_diff(cfg_a, cfg_b):
        key, _, values = line.partition(": ")
        if key in IGNORED_KEYS:
            continue
        old, sep, new = values.partition(" -> ")
        changed.append(key)
        rows.append(("config", key, old if sep else values, new if sep else "", ""))
    keys = set(_leaves(cfg_a)) | set(_leaves(cfg_b))
    same["config keys"] = len(keys - set(changed) - set(IGNORED_KEYS))

    def group(name: str, items_a: dict[str, Any], items_b: dict[str, Any]) -> None:
        agree = 0
        for item in dict.fromkeys([*items_a, *items_b]):
            va, vb = items_a.get(item, "<absent>"), items_b.get(item, "<absent>")
            if va == vb:
                agree += 1
            else:
                rows.append((name, item, _text(va), _text(vb), ""))
        same[name] = agree

    group("seed", {"seed": meta_a.get("seed")}, {"seed": meta_b.get("seed")})
    group("versions", meta_a.get("versions") or {}, meta_b.get("versions") or {})
    group(
        "dataset",
        _fingerprint_items(meta_a.get("dataset_fingerprint")),
        _fingerprint_items(meta_b.get("dataset_fingerprint")),
    )
    group("machine", _machine_items(meta_a), _machine_items(meta_b))

    metrics_a, source_a = final_metrics(a)
    metrics_b, source_b = final_metrics(b)
    agree = 0
    if metrics_a is None or metrics_b is None:
        rows.append(
            (
                "metrics",
                "final",
                source_a if metrics_a is None else "finished",
                source_b if metrics_b is None else "finished",
                "",
            )
        )
    else:
        for m in METRICS:
            if m not in metrics_a or m not in metrics_b:
                continue
            va, vb = 100 * metrics_a[m], 100 * metrics_b[m]
            if metrics_a[m] == metrics_b[m]:
                agree += 1
            else:
                rows.append(("metrics", m, f"{va:.2f}", f"{vb:.2f}", f"{vb - va:+.2f}"))
    same["metrics"] = agree
    return {"a": a, "b": b, "rows": rows, "same": same, "sources": (source_a, source_b)}


def format_comparison(comparison: dict[str, Any]) -> str:
    """The comparison as text: the table of differences, then the one line of what agrees."""
    a, b, rows, same = comparison["a"], comparison["b"], comparison["rows"], comparison["same"]
    lines = [f"A: {a}", f"B: {b}", ""]
    if rows:
        head = ("what", "", "A", "B", "B - A")
        items = [(g, i, va, vb, note) for g, i, va, vb, note in rows]
        w = [max(len(str(r[k])) for r in [head, *items]) for k in range(5)]
        w[2], w[3] = min(w[2], 48), min(w[3], 48)

        def cut(text: str, width: int) -> str:
            return text if len(text) <= width else text[: width - 3] + "..."

        def line(r: tuple[str, ...]) -> str:
            cells = [
                f"{r[0]:<{w[0]}}",
                f"{r[1]:<{w[1]}}",
                f"{cut(r[2], w[2]):<{w[2]}}",
                f"{cut(r[3], w[3]):<{w[3]}}",
            ]
            return ("  ".join(cells) + (f"  {r[4]}" if r[4] else "")).rstrip()

        lines.append(line(head))
        lines.append(
            "  ".join("-" * x for x in w[:4]) + ("  " + "-" * w[4] if any(r[4] for r in items) else "")
        )
        lines += [line(r) for r in items]
    else:
        lines.append("no difference in config, seed, versions, dataset, machine or metrics")
    parts = [f"{n} {name}" for name, n in same.items() if n]
    lines.append("")
    lines.append(f"same: {', '.join(parts) if parts else 'nothing'}")
    groups = {r[0] for r in rows}
    if "metrics" in groups and "machine" in groups and not groups & {"config", "seed", "dataset", "versions"}:
        lines.append(
            "note: only the machine differs; the same code and seed give slightly different numbers on "
            "other CPU families (AVX-512 vs AVX2 kernels sum in another order) and on GPUs"
        )
    return "\n".join(lines)


def run_compare(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """The ``mambapro compare`` command: print what differs between two run folders."""
    comparison = compare_runs(run_a, run_b)
    print(format_comparison(comparison))
    return comparison
