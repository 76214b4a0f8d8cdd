"""Lazy exports of a package: names whose modules load on first use (module ``__getattr__``).

The CLI and the config read light parts of ``mambapro.data`` and ``mambapro.train`` (dataset
specs, run-folder checks); the torch-based parts load only when one of their names is used.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports", "lazy_getattr"]


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``table[name]`` (a submodule) on use."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(f".{table[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_exports(package: str, by_module: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` of ``package`` from ``{submodule: "name name ..."}``.

    One line per submodule keeps each package's table short and its names in one place.
    """
    table = {name: module for module, names in by_module.items() for name in names.split()}
    return lazy_getattr(package, table), sorted(table)
