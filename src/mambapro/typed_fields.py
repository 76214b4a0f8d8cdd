"""Typed fields of dataclass trees: a field's choices and range as metadata, and values from YAML
or the command line coerced to each field's type and checked, errors naming the dotted key and
where the value came from.

A tree is a dataclass whose fields are plain values or nested dataclasses. :func:`choice_field`
and :func:`range_field` declare the fixed set or the bounds a field accepts; :func:`apply_updates`
writes a nested dict into a tree, refusing an unknown key, a value of the wrong type (converted
only where that loses nothing) or one outside its choices or range with a :class:`ConfigError`.

Only the standard library and :mod:`mambapro.errors` are imported: the CLI reads and checks a
configuration without importing torch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any, Union

from mambapro.errors import ConfigError

__all__ = ["apply_updates", "choice_field", "field_choices", "range_field"]


def choice_field(*values: Any, default: Any) -> Any:
    """A field whose value must be one of ``values`` (or of ``values[0]()``, a registry's names,
    read each time a value is checked, so that a part registered later is a valid value);
    strings match case-insensitively, numbers by value."""
    choices = values[0] if len(values) == 1 and callable(values[0]) else values
    return field(default=default, metadata={"choices": choices})


def range_field(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A numeric field (or list of numbers) whose value(s) must lie in the given bounds; ``None``
    values (where the type allows them) are not checked."""
    return field(default=default, metadata={"range": (ge, gt, le, lt)})


def _range_rule(bounds: tuple[float | None, ...]) -> str:
    ge, gt, le, lt = (None if b is None else int(b) if float(b).is_integer() else b for b in bounds)
    low = f">= {ge}" if ge is not None else f"> {gt}" if gt is not None else ""
    high = f"<= {le}" if le is not None else f"< {lt}" if lt is not None else ""
    return " and ".join(r for r in (low, high) if r)


def _in_range(value: float, bounds: tuple[float | None, ...]) -> bool:
    ge, gt, le, lt = bounds
    return (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )


def _read_choices(values: Iterable[Any] | Callable[[], Iterable[Any]] | None) -> tuple[Any, ...] | None:
    # A callable is a registry's names, read now so that parts registered late are included.
    if callable(values):
        return tuple(values())
    return None if values is None else tuple(values)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            return _coerce(value, candidates[0], key, source)
        for arg in candidates:
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' = {value!r} is not a valid {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a list, got {type(value).__name__}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' = {value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' = {value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads '1e-4' (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{key}' = {value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: '{key}' = {value!r} must be a string")
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp}")


def _same_choice(choice: Any, value: Any) -> bool:
    if isinstance(choice, str):
        return isinstance(value, str) and choice.lower() == value.lower()
    return not isinstance(value, (bool, str)) and choice == value


def apply_updates(obj: Any, updates: dict[str, Any], source: str, prefix: str = "") -> None:
    """Write the nested dict ``updates`` into the dataclass tree ``obj`` in place, validating
    every key; ``source`` (a file name, ``command line``) and the dotted key (after ``prefix``)
    name the culprit in a :class:`ConfigError`."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{key}' (known keys here: {known})")
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            apply_updates(current, value, source, f"{key}.")
            continue
        value = _coerce(value, tp, key, source)
        meta = fields[name].metadata
        choices = _read_choices(meta.get("choices"))
        if choices is not None:
            # Names are matched case-insensitively so 'rgbnt201' and 'RGBNT201' both work.
            match = [c for c in choices if _same_choice(c, value)]
            if not match:
                allowed = ", ".join(str(c) for c in choices)
                raise ConfigError(f"{source}: '{key}' = {value!r} is not one of: {allowed}")
            value = match[0]
        bounds = meta.get("range")
        if bounds is not None and value is not None:
            items = value if isinstance(value, list) else [value]
            bad = [v for v in items if not _in_range(v, bounds)]
            if bad:
                shown = f"{value!r}" if bad == [value] else f"{value!r} (item {bad[0]!r})"
                raise ConfigError(f"{source}: '{key}' = {shown} must be {_range_rule(bounds)}")
        setattr(obj, name, value)


def field_choices(root: Any, key: str) -> tuple[Any, ...] | None:
    """The values the dotted ``key`` of the dataclass tree ``root`` accepts (a registry's names as
    they are now), or None for a field without a fixed set; ``KeyError`` for an unknown key or
    one that names a section rather than a value."""
    obj = root
    *sections, name = key.split(".")
    for section in sections:
        obj = getattr(obj, section, None)
        if not dataclasses.is_dataclass(obj):
            raise KeyError(f"unknown config key '{key}'")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields or dataclasses.is_dataclass(getattr(obj, name)):
        raise KeyError(f"unknown config key '{key}'")
    return _read_choices(fields[name].metadata.get("choices"))
