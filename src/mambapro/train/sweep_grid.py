"""The grid of ``mambapro sweep``: the ``--set KEY=V1,V2,...`` grammar, and how a point's values
read in folder names, the table and the plot.

Values are parsed exactly like ``key=value`` config overrides (later, by the config); here a list
only splits at the commas outside ``[...]``, ``{...}`` and quotes. A point's folder name is its
values, ``model.ma_d_state=16`` (several keys joined by ``+``, list items by ``,``), made file-name
safe. Torch-free, like the rest of the sweep's planning.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from mambapro.errors import UserError

__all__ = ["parse_sets", "point_name", "value_text"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_NAME = 200  # bytes; file systems allow 255


def _split_values(text: str) -> list[str]:
    """``8,16,[1,2]`` -> ``["8", "16", "[1,2]"]``: commas inside brackets or quotes stay."""
    items, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur))
    return [item.strip() for item in items]


def parse_sets(sets: list[str]) -> dict[str, list[str]]:
    """``["KEY=V1,V2", ...]`` -> ``{KEY: ["V1", "V2"]}`` (value texts, not yet typed)."""
    grid: dict[str, list[str]] = {}
    if not sets:
        raise UserError("nothing to sweep: give --set KEY=V1,V2,... (repeatable) or --seeds N")
    for text in sets:
        if "=" not in text:
            raise UserError(f"--set {text}: must look like KEY=V1,V2,...")
        key, raw = (part.strip() for part in text.split("=", 1))
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"--set {text}: the key is empty")
        if key in grid:
            raise UserError(f"--set {key} is given twice; list all its values in one --set {key}=V1,V2,...")
        if not raw:
            raise UserError(f"--set {key}=: no values; give {key}=V1,V2,...")
        items = _split_values(raw)
        if any(not item for item in items):
            raise UserError(f"--set {key}={raw}: an empty value in the list")
        twice = [item for i, item in enumerate(items) if item in items[:i]]
        if twice:
            raise UserError(f"--set {key}: the value {twice[0]} is given twice; give each value once")
        grid[key] = items
    return grid


def value_text(value: Any) -> str:
    """A value as the CSV and the plot show it (YAML-like: ``null``, ``true``, ``[8, 9]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def _name_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_name_text(v) for v in value)
    return value_text(value)


def point_name(values: dict[str, Any]) -> str:
    """The folder name of a point: ``model.ma_d_state=16+model.ma_dt_rank=8`` (file-name safe)."""
    name = _UNSAFE.sub("_", "+".join(f"{k}={_name_text(v)}" for k, v in values.items()))
    if len(name.encode()) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 12]}~{digest}"
    return name
