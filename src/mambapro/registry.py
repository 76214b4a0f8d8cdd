"""A small name -> constructor (or spec) registry, one per family of swappable parts.

Each ablation of the paper is a configuration value: the value names a registered
constructor, so switching a part never needs a code edit. A registry may also hold declarative
specs (the datasets' ``DatasetSpec``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps lower-case names to the constructors (or specs) of one family (e.g. ``adapters``)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def deco(fn: T) -> T:
            if key in self._items:
                raise KeyError(f"{self.family}: '{name}' is registered twice")
            self._items[key] = fn
            return fn

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise KeyError(
                f"unknown {self.family} '{name}'; choose one of: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.names()})"
