"""Synthetic file names: the ``synth_name`` template of a dataset spec, checked and derived.

A spec's ``synth_name`` (fields ``pid``, ``cam``, ``cam1``, ``scene``, ``scene1``, ``shot``) names
the captures ``mambapro synth`` writes; its ``name_pattern`` must parse each name back to the
same pid, camera (and scene). :func:`synth_name_problem` says why a template fails that on a set
of captures; :func:`derive_synth_name` builds a template from the pattern itself (its fixed text
and groups, then the shot number and ``.jpg``), for spec files that give none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

try:  # the regular-expression parser, for deriving a synthetic file-name template
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # Python 3.10
    import sre_parse as _sre  # type: ignore[no-redef]

__all__ = ["SYNTH_FIELDS", "derive_synth_name", "sample_captures", "synth_file_name", "synth_name_problem"]

SYNTH_FIELDS = ("pid", "cam", "cam1", "scene", "scene1", "shot")
IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|bmp)$", re.IGNORECASE)


def synth_file_name(template: str, pid: int, cam: int, shot: int, scene: int) -> str:
    return template.format(pid=pid, cam=cam, cam1=cam + 1, scene=scene, scene1=scene + 1, shot=shot)


def sample_captures(max_cameras: int) -> Iterator[tuple[int, int, int, int]]:
    """(pid, camera index, shot, scene) of the captures a template is tried on."""
    for pid in (1, 2, 40, 99):
        for cam in range(max_cameras):
            for shot in (0, 1, 2, 10):
                yield pid, cam, shot, shot % 3


def synth_name_problem(
    template: str,
    pattern: str,
    camera_base: int,
    max_cameras: int,
    has_scenes: bool,
    captures: Iterable[tuple[int, int, int, int]] | None = None,
) -> str | None:
    """Why ``template`` cannot name synthetic captures that ``pattern`` parses back, or None.

    ``captures``: the (pid, camera index, shot, scene) tried, default :func:`sample_captures`."""
    seen: dict[str, tuple[int, int, int]] = {}
    for pid, cam, shot, scene in sample_captures(max_cameras) if captures is None else captures:
        try:
            name = synth_file_name(template, pid, cam, shot, scene)
        except (KeyError, IndexError, ValueError) as err:
            return f"is not a template of the fields {', '.join(SYNTH_FIELDS)} ({type(err).__name__}: {err})"
        where = f"gives {name!r} for pid {pid}, camera index {cam}, shot {shot}"
        if "/" in name or name.startswith(".") or not IMAGE_SUFFIX.search(name):
            return f"{where}: a file name must end in .jpg, .jpeg, .png or .bmp, without '/'"
        m = re.search(pattern, name)
        try:
            back = m is not None and (
                int(m["pid"]) == pid
                and int(m["cam"]) - camera_base == cam
                and (not has_scenes or int(m["scene"]) in (scene, scene + 1))
            )
        except (ValueError, TypeError):
            back = False
        if not back:
            return f"{where}, which name_pattern does not parse back"
        if name in seen:
            return f"{where}, the same name as for {seen[name]} (use {{shot}})"
        seen[name] = (pid, cam, shot)
    return None


class _Underivable(Exception):
    """The pattern uses a construct the derivation does not invert."""


_CHARS = "0a_x-A."


def _class_matches(items: list, ch: str) -> bool:
    negate = hit = False
    for op, av in items:
        if op is _sre.NEGATE:
            negate = True
        elif op is _sre.LITERAL:
            hit |= ord(ch) == av
        elif op is _sre.RANGE:
            hit |= av[0] <= ord(ch) <= av[1]
        elif op is _sre.CATEGORY:
            digit, word, space = ch.isdigit(), ch.isalnum() or ch == "_", ch.isspace()
            tests = {
                _sre.CATEGORY_DIGIT: digit,
                _sre.CATEGORY_NOT_DIGIT: not digit,
                _sre.CATEGORY_WORD: word,
                _sre.CATEGORY_NOT_WORD: not word,
                _sre.CATEGORY_SPACE: space,
                _sre.CATEGORY_NOT_SPACE: not space,
            }
            if av not in tests:
                raise _Underivable(av)
            hit |= tests[av]
        else:
            raise _Underivable(op)
    return hit != negate


def _pick(test: Callable[[str], bool]) -> str:
    for ch in _CHARS:
        if test(ch):
            return ch
    raise _Underivable("no sample character")


def _digit_run(items: list) -> tuple[int, float]:
    """(fewest, most) digits a group's pattern spans, when it matches digits only."""
    lo, hi = 0, 0.0
    for op, av in items:
        if op is _sre.IN and _class_matches(av, "0"):
            lo, hi = lo + 1, hi + 1
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            low, high, sub = av
            sub_lo, sub_hi = _digit_run(sub)
            lo += low * sub_lo
            hi += float("inf") if high == _sre.MAXREPEAT else high * sub_hi
        elif op is _sre.SUBPATTERN:
            sub_lo, sub_hi = _digit_run(av[-1])
            lo, hi = lo + sub_lo, hi + sub_hi
        else:
            raise _Underivable(op)
    return lo, hi


def _field(name: str, items: list, camera_base: int) -> str:
    lo, hi = _digit_run(items)
    if lo < 1:
        raise _Underivable(name)
    if name == "cam":
        if camera_base not in (0, 1):
            raise _Underivable("camera_base")
        name = "cam1" if camera_base == 1 else "cam"
    elif name == "scene":
        name = "scene1"
    usual = {"pid": 4, "scene1": 3}.get(name, 1)
    width = lo if lo == hi else max(lo, min(usual, hi))
    return f"{{{name}:0{width}d}}" if width > 1 else f"{{{name}}}"


def _template(items: list, groups: dict[int, str], camera_base: int) -> str:
    out = []
    for op, av in items:
        if op is _sre.LITERAL:
            out.append(chr(av).replace("{", "{{").replace("}", "}}"))
        elif op is _sre.NOT_LITERAL:
            out.append(_pick(lambda c, av=av: ord(c) != av))
        elif op is _sre.IN:
            out.append(_pick(lambda c, av=av: _class_matches(av, c)))
        elif op is _sre.ANY:
            out.append("x")
        elif op is _sre.AT:
            continue
        elif op is _sre.SUBPATTERN:
            name = groups.get(av[0])
            if name in ("pid", "cam", "scene"):
                out.append(_field(name, av[-1], camera_base))
            else:
                out.append(_template(av[-1], groups, camera_base))
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            out.append(_template(av[2], groups, camera_base) * av[0])
        elif op is _sre.BRANCH:
            out.append(_template(av[1][0], groups, camera_base))
        else:
            raise _Underivable(op)
    return "".join(out)


def derive_synth_name(pattern: str, camera_base: int, max_cameras: int, has_scenes: bool) -> str:
    """A ``synth_name`` template that ``pattern`` parses back (the pattern's fixed text and
    groups, then the shot number and ``.jpg``), or ``""`` when none is found: then
    ``mambapro synth`` needs the file's ``synth_name``."""
    try:
        parsed = _sre.parse(pattern)
        groups = {index: name for name, index in parsed.state.groupdict.items()}
        stem = _template(list(parsed), groups, camera_base)
    except (_Underivable, re.error, AttributeError, TypeError, ValueError):
        return ""
    suffix = IMAGE_SUFFIX.search(stem)
    if suffix:
        stem, ext = stem[: suffix.start()], suffix.group(0)
    else:
        ext = ".jpg"
    joins = ("", "_") if stem.endswith(("_", "-", ".")) else ("_", "")
    for join in joins:
        candidate = f"{stem}{join}{{shot:03d}}{ext}"
        if synth_name_problem(candidate, pattern, camera_base, max_cameras, has_scenes) is None:
            return candidate
    return ""
