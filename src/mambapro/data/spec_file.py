"""Dataset spec files: a user's own dataset described in YAML, no code.

``data.dataset: path/to/mydata.yaml`` (any value ending in ``.yaml`` or ``.yml``) names a spec
file instead of a registered benchmark; :func:`load_spec_file` reads it into a
:class:`~mambapro.data.spec_type.DatasetSpec`. ``docs/own-dataset.md`` walks through one and
``examples/dual_spectrum.yaml`` is a complete file::

    name: DualSpectrum
    folder: dual_spectrum            # under data.root (or an absolute path); default: the name
    splits: {train: train, query: query, gallery: gallery}
    structure: modality_folders      # or side_by_side, id_folders
    modalities:                      # 2 to 4, in batch order (side_by_side: panels left to right)
      - {key: RGB, folder: visible}  # optional: letter, name; folder defaults to the key
      - {key: TI, folder: thermal}
    name_pattern: '^(?P<pid>\\d{4})_c(?P<cam>\\d)_'   # named groups pid, cam (and scene)
    camera_base: 1
    max_cameras: 6
    img_size: [256, 128]             # [H, W] of one modality
    protocol: same_camera            # or same_scene (needs a scene group)
    subject: person                  # or vehicle: what `mambapro synth` draws

Every problem is a one-line :class:`~mambapro.errors.ConfigError` naming the file and the field.
Loaded specs are cached per resolved path, size and modification time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..modalities import KNOWN_MODALITIES, MAX_MODALITIES, MIN_MODALITIES, ModalitySet
from .spec_type import STRUCTURES, DatasetSpec

try:  # the regular-expression parser, for deriving a synthetic file-name template
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # Python 3.10
    import sre_parse as _sre  # type: ignore[no-redef]

__all__ = ["FIELDS", "MODALITY_FIELDS", "PROTOCOLS", "SUBJECTS", "is_spec_file", "load_spec_file"]

#: The fields of a spec file, in the order the documentation lists them: what each holds.
FIELDS: dict[str, str] = {
    "name": "the dataset's name in reports (letters, digits, '_', '-', '.')",
    "folder": "the dataset's folder under data.root, or an absolute path (default: the name)",
    "splits": "the train, query and gallery folders under the dataset's folder",
    "structure": f"the folder structure: {', '.join(STRUCTURES)}",
    "modalities": f"{MIN_MODALITIES} to {MAX_MODALITIES} entries (key, letter, name, folder) in batch order",
    "name_pattern": "a regular expression with the named groups pid and cam (and scene)",
    "name_rule": "the naming rule in words, for error messages (default: from the pattern)",
    "camera_base": "the first camera number in file names (0 or 1, ...)",
    "max_cameras": "the number of cameras the naming allows",
    "img_size": "[H, W] of one modality as the model sees it",
    "protocol": "junk gallery matches: same_camera (default) or same_scene",
    "subject": "person (default) or vehicle: what the synthetic generator draws",
    "junk_pids": "pids that mark junk images, left out (default: [-1])",
    "published_splits": "split -> [identities, captures, cameras] as the dataset's paper gives them",
    "synth_name": "file-name template of synthetic captures (default: derived from name_pattern)",
    "source": "where the layout and counts come from (default: this file's path)",
}
REQUIRED = (
    "name",
    "splits",
    "structure",
    "modalities",
    "name_pattern",
    "camera_base",
    "max_cameras",
    "img_size",
)
#: The fields of one entry of ``modalities``.
MODALITY_FIELDS = ("key", "letter", "name", "folder")
PROTOCOLS = ("same_camera", "same_scene")
SUBJECTS = ("person", "vehicle")
SPLITS = ("train", "query", "gallery")
#: The fields a ``synth_name`` template may use.
SYNTH_FIELDS = ("pid", "cam", "cam1", "scene", "scene1", "shot")
_IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|bmp)$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_CACHE: dict[Path, tuple[int, int, DatasetSpec]] = {}


def is_spec_file(name: str | Path) -> bool:
    """Whether ``name`` names a spec file (ends in ``.yaml`` or ``.yml``) rather than a benchmark."""
    return str(name).lower().endswith((".yaml", ".yml"))


def load_spec_file(path: str | Path) -> DatasetSpec:
    """The spec the YAML file at ``path`` describes (relative paths: from the current folder).

    Cached per resolved path, size and modification time: an edited file is read again.
    :class:`~mambapro.errors.ConfigError` naming the file and the field for anything wrong.
    """
    shown = str(path)
    resolved = Path(path).expanduser().resolve()
    try:
        st = resolved.stat()
    except FileNotFoundError:
        raise ConfigError(f"dataset spec file not found: {shown} ({resolved})") from None
    except OSError as err:
        raise ConfigError(f"dataset spec file {shown}: cannot read it ({err.strerror})") from None
    if not resolved.is_file():
        raise ConfigError(f"dataset spec file {shown} is a folder, not a file")
    hit = _CACHE.get(resolved)
    if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
        return hit[2]
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"dataset spec file {shown}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"dataset spec file {shown}: not a text file (not UTF-8)") from None
    spec = _Reader(shown, resolved).spec(_parse_yaml(text, shown))
    _CACHE[resolved] = (st.st_mtime_ns, st.st_size, spec)
    return spec


def _parse_yaml(text: str, shown: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark is not None else shown
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = " (write regular expressions in single quotes)" if "escape" in problem else ""
        raise ConfigError(f"dataset spec file {where}: not valid YAML: {problem}{hint}") from None
    if not isinstance(data, dict):
        got = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"dataset spec file {shown}: must be a mapping of fields ({', '.join(FIELDS)}), it is {got}"
        )
    return data


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Reader:
    """Reads the fields of one parsed file; every error names the file and the field."""

    def __init__(self, shown: str, resolved: Path) -> None:
        self.shown = shown
        self.resolved = resolved

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(f"dataset spec file {self.shown}: {field}: {message}")

    def text(self, data: dict[str, Any], field: str, where: str | None = None) -> str:
        value = data[field]
        if not isinstance(value, str) or not value.strip():
            raise self.error(where or field, f"must be a non-empty text, got {value!r}")
        return value.strip()

    def integer(self, data: dict[str, Any], field: str, low: int) -> int:
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.error(field, f"must be an integer >= {low}, got {value!r}")
        return value

    def choice(self, data: dict[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
        value = data.get(field, default)
        if value not in choices:
            raise self.error(field, f"{value!r} is not one of: {', '.join(choices)}")
        return value

    def spec(self, data: dict[str, Any]) -> DatasetSpec:
        unknown = [str(k) for k in data if k not in FIELDS]
        if unknown:
            raise self.error(unknown[0], f"unknown field; the fields are: {', '.join(FIELDS)}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise self.error(missing[0], f"missing ({FIELDS[missing[0]]}); required: {', '.join(REQUIRED)}")
        name = self.text(data, "name")
        if not _NAME.match(name):
            raise self.error("name", f"{name!r} must be 1-64 letters, digits, '_', '-' or '.'")
        self._refuse_registered(name)
        structure = self.choice(data, "structure", STRUCTURES, "")
        protocol = self.choice(data, "protocol", PROTOCOLS, "same_camera")
        has_scenes = protocol == "same_scene"
        modalities, folders = self._modalities(data["modalities"], structure)
        pattern = self._pattern(data, has_scenes)
        camera_base = self.integer(data, "camera_base", 0)
        max_cameras = self.integer(data, "max_cameras", 1)
        published_splits = self._published(data.get("published_splits"))
        geometry = {
            "pattern": pattern,
            "camera_base": camera_base,
            "max_cameras": max_cameras,
            "has_scenes": has_scenes,
        }
        if "synth_name" in data:
            synth_name = self.text(data, "synth_name")
            problem = _synth_name_problem(synth_name, **geometry)
            if problem:
                raise self.error("synth_name", f"{synth_name!r} {problem}")
        else:
            synth_name = _derive_synth_name(**geometry)
        if "name_rule" in data:
            name_rule = self.text(data, "name_rule")
        else:
            # The parsers say "name does not parse as <rule>".
            example = f"e.g. {_synth_file_name(synth_name, 1, 0, 0, 0)}; " if synth_name else ""
            name_rule = f"{pattern} ({example}camera {camera_base}..{camera_base + max_cameras - 1})"
        train = (published_splits or {}).get("train")
        fields = dict(
            name=name,
            folder=self.text(data, "folder") if "folder" in data else name,
            splits=self._splits(data["splits"]),
            structure=structure,
            modality_folders=folders,
            name_pattern=pattern,
            name_rule=name_rule,
            camera_base=camera_base,
            max_cameras=max_cameras,
            img_size=self._img_size(data["img_size"]),
            has_scenes=has_scenes,
            subject=self.choice(data, "subject", SUBJECTS, "person"),
            synth_name=synth_name,
            # Training identities and cameras as published; unknown: 0 identities.
            published=(train[0], train[2]) if train else (0, max_cameras),
            modalities=modalities,
            junk_pids=self._junk_pids(data.get("junk_pids", [-1])),
            published_splits=published_splits,
            source=self.text(data, "source") if "source" in data else str(self.resolved),
        )
        try:
            return DatasetSpec(**fields)
        except ValueError as err:  # what the checks above do not foresee, still one line
            raise ConfigError(f"dataset spec file {self.shown}: {' '.join(str(err).split())}") from None

    def _refuse_registered(self, name: str) -> None:
        from .specs import dataset_names  # specs imports this module

        taken = {n.lower(): n for n in dataset_names()}
        if name.lower() in taken:
            raise self.error(
                "name", f"{name!r} is the registered dataset {taken[name.lower()]}; give yours another name"
            )

    def _splits(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.error("splits", f"must map {', '.join(SPLITS)} to their folders, got {_kind(value)}")
        unknown = [str(k) for k in value if k not in SPLITS]
        if unknown:
            raise self.error(f"splits.{unknown[0]}", f"unknown split; give {', '.join(SPLITS)}")
        missing = [k for k in SPLITS if k not in value]
        if missing:
            raise self.error(f"splits.{missing[0]}", f"missing; give the folders of {', '.join(SPLITS)}")
        return {k: self.text(value, k, f"splits.{k}") for k in SPLITS}

    def _modalities(self, value: Any, structure: str) -> tuple[ModalitySet, tuple[str, ...]]:
        if not isinstance(value, list):
            raise self.error(
                "modalities",
                f"must be a list of {MIN_MODALITIES} to {MAX_MODALITIES} entries, got {_kind(value)}",
            )
        if not MIN_MODALITIES <= len(value) <= MAX_MODALITIES:
            raise self.error(
                "modalities",
                f"a dataset has {MIN_MODALITIES} to {MAX_MODALITIES} modalities, got {len(value)}",
            )
        entries = [self._modality(i, entry, structure) for i, entry in enumerate(value)]
        keys = [e["key"] for e in entries]
        known = [KNOWN_MODALITIES.get(k, (k[:1].upper(), k)) for k in keys]  # ModalitySet.of's defaults
        letters = [e.get("letter", c) for e, (c, _) in zip(entries, known)]
        names = [e.get("name", n) for e, (_, n) in zip(entries, known)]
        for what, values in (("key", [k.upper() for k in keys]), ("letter", letters)):
            twice = [i for i, v in enumerate(values) if v in values[:i]]
            if twice:
                i = twice[0]
                first = values.index(values[i])
                hint = "; give one of them another 'letter'" if what == "letter" else ""
                raise self.error(
                    f"modalities[{i}].{what}",
                    f"{keys[first]} and {keys[i]} have the same {what} {values[i]!r}{hint}",
                )
        try:
            modalities = ModalitySet(tuple(keys), tuple(letters), tuple(names))
        except ConfigError as err:
            raise self.error("modalities", str(err)) from None
        if structure == "side_by_side":
            return modalities, ()
        folders = [e.get("folder", e["key"]) for e in entries]
        twice = [i for i, f in enumerate(folders) if f in folders[:i]]
        if twice:
            i = twice[0]
            raise self.error(
                f"modalities[{i}].folder",
                f"{keys[folders.index(folders[i])]} and {keys[i]} have the same folder {folders[i]!r}",
            )
        return modalities, tuple(folders)

    def _modality(self, i: int, entry: Any, structure: str) -> dict[str, str]:
        where = f"modalities[{i}]"
        if isinstance(entry, str):
            entry = {"key": entry}
        if not isinstance(entry, dict):
            raise self.error(
                where, f"must be a mapping with a key (and letter, name, folder), got {_kind(entry)}"
            )
        unknown = [str(k) for k in entry if k not in MODALITY_FIELDS]
        if unknown:
            raise self.error(
                f"{where}.{unknown[0]}", f"unknown field; the fields are: {', '.join(MODALITY_FIELDS)}"
            )
        if "key" not in entry:
            raise self.error(f"{where}.key", "missing (the modality's batch key, e.g. RGB, NI, TI)")
        out = {k: self.text(entry, k, f"{where}.{k}") for k in entry}
        if "letter" in out:
            out["letter"] = out["letter"].upper()
            if len(out["letter"]) != 1 or not out["letter"].isalpha():
                raise self.error(f"{where}.letter", f"{entry['letter']!r} must be one letter")
        if "folder" in out and structure == "side_by_side":
            raise self.error(
                f"{where}.folder",
                "a side_by_side dataset has no modality folders (the list order is the panel order)",
            )
        return out

    def _pattern(self, data: dict[str, Any], has_scenes: bool) -> str:
        pattern = data["name_pattern"]
        if not isinstance(pattern, str) or not pattern:
            raise self.error("name_pattern", f"must be a regular expression (text), got {pattern!r}")
        try:
            groups = set(re.compile(pattern).groupindex)
        except re.error as err:
            raise self.error("name_pattern", f"'{pattern}' is not a regular expression: {err}") from None
        needed = ["pid", "cam"] + (["scene"] if has_scenes else [])
        lacking = [g for g in needed if g not in groups]
        if lacking:
            why = " (protocol same_scene)" if lacking == ["scene"] else ""
            named = ", ".join(f"(?P<{g}>...)" for g in lacking)
            raise self.error("name_pattern", f"'{pattern}' lacks the named group(s) {named}{why}")
        return pattern

    def _img_size(self, value: Any) -> tuple[int, int]:
        ok = isinstance(value, list) and len(value) == 2
        if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
            raise self.error("img_size", f"{value!r} must be [H, W], two positive integers")
        return (value[0], value[1])

    def _junk_pids(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise self.error("junk_pids", f"{value!r} must be a list of integers (e.g. [-1])")
        return tuple(value)

    def _published(self, value: Any) -> dict[str, tuple[int, int, int]] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(
                "published_splits", f"must map splits to [identities, captures, cameras], got {_kind(value)}"
            )
        out = {}
        for split, counts in value.items():
            where = f"published_splits.{split}"
            if split not in SPLITS:
                raise self.error(where, f"unknown split; give some of {', '.join(SPLITS)}")
            ok = isinstance(counts, list) and len(counts) == 3
            if not ok or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
                raise self.error(where, f"{counts!r} must be [identities, captures, cameras], integers >= 0")
            out[split] = (counts[0], counts[1], counts[2])
        return out


# --------------------------------------------------------------------- synthetic file names


def _synth_file_name(template: str, pid: int, cam: int, shot: int, scene: int) -> str:
    return template.format(pid=pid, cam=cam, cam1=cam + 1, scene=scene, scene1=scene + 1, shot=shot)


def _samples(max_cameras: int) -> Iterator[tuple[int, int, int, int]]:
    """(pid, camera index, shot, scene) of the captures a template is tried on."""
    for pid in (1, 2, 40, 99):
        for cam in range(max_cameras):
            for shot in (0, 1, 2, 10):
                yield pid, cam, shot, shot % 3


def _synth_name_problem(
    template: str, pattern: str, camera_base: int, max_cameras: int, has_scenes: bool
) -> str | None:
    """Why ``template`` cannot name synthetic captures that ``pattern`` parses back, or None."""
    seen: dict[str, tuple[int, int, int]] = {}
    for pid, cam, shot, scene in _samples(max_cameras):
        try:
            name = _synth_file_name(template, pid, cam, shot, scene)
        except (KeyError, IndexError, ValueError) as err:
            return f"is not a template of the fields {', '.join(SYNTH_FIELDS)} ({type(err).__name__}: {err})"
        where = f"gives {name!r} for pid {pid}, camera index {cam}, shot {shot}"
        if "/" in name or name.startswith(".") or not _IMAGE_SUFFIX.search(name):
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


def _derive_synth_name(pattern: str, camera_base: int, max_cameras: int, has_scenes: bool) -> str:
    """A ``synth_name`` template that ``pattern`` parses back (the pattern's fixed text and
    groups, then the shot number and ``.jpg``), or ``""`` when none is found: then
    ``mambapro synth`` needs the file's ``synth_name``."""
    try:
        parsed = _sre.parse(pattern)
        groups = {index: name for name, index in parsed.state.groupdict.items()}
        stem = _template(list(parsed), groups, camera_base)
    except (_Underivable, re.error, AttributeError, TypeError, ValueError):
        return ""
    suffix = _IMAGE_SUFFIX.search(stem)
    if suffix:
        stem, ext = stem[: suffix.start()], suffix.group(0)
    else:
        ext = ".jpg"
    joins = ("", "_") if stem.endswith(("_", "-", ".")) else ("_", "")
    for join in joins:
        candidate = f"{stem}{join}{{shot:03d}}{ext}"
        if _synth_name_problem(candidate, pattern, camera_base, max_cameras, has_scenes) is None:
            return candidate
    return ""
