"""A small name -> constructor (or spec) registry, one per family of swappable parts.

Each ablation of the paper is a configuration value: the value names a registered
constructor, so switching a part never needs a code edit. A registry may also hold declarative
specs (the datasets' ``DatasetSpec``).

An entry is either the object itself (:meth:`Registry.register`) or lazy
(:meth:`Registry.register_lazy`): a ``"package.module:attribute"`` path, imported the first
time the entry is used (:meth:`Registry.get`, :meth:`Registry.build`) and kept from then on.
Lazy entries let a registry live in a module without heavy imports (``mambapro.parts``: no
torch), so that the config can read the names while the constructors stay in the torch modules.
:meth:`Registry.names`, ``in`` and :meth:`Registry.info` never import anything.

An entry may carry ``info``: a small torch-free description that readers need without building
the part (a backbone's depth and patch size, which the config checks layer indices against).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


@dataclass(frozen=True)
class _Lazy:
    """A not yet imported entry: ``module:attribute`` (the attribute may be dotted)."""

    module: str
    attribute: str

    @property
    def target(self) -> str:
        return f"{self.module}:{self.attribute}"


class Registry(Generic[T]):
    """Maps lower-case names to the constructors (or specs) of one family (e.g. ``adapters``)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, T | _Lazy] = {}
        self._targets: dict[str, str] = {}
        self._info: dict[str, Any] = {}

    # ------------------------------------------------------------------ registration

    def _claim(self, name: str, info: Any) -> str:
        key = name.lower()
        if key in self._items:
            raise KeyError(f"{self.family}: '{name}' is registered twice")
        self._info[key] = info
        return key

    def register(self, name: str, *, info: Any = None) -> Callable[[T], T]:
        """Decorator: register the decorated object as ``name``."""

        def deco(fn: T) -> T:
            self._items[self._claim(name, info)] = fn
            return fn

        return deco

    def register_lazy(self, name: str, target: str, *, info: Any = None) -> None:
        """Register ``name`` as ``"package.module:attribute"``, imported on first use."""
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute or ":" in attribute:
            raise ValueError(
                f"{self.family}: '{name}' -> {target!r} must look like 'package.module:attribute'"
            )
        key = self._claim(name, info)
        self._items[key] = _Lazy(module, attribute)
        self._targets[key] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plug-in or test that registered it temporarily)."""
        key = self._key(name)
        del self._items[key], self._info[key]
        self._targets.pop(key, None)

    # ------------------------------------------------------------------ lookup

    def _key(self, name: str) -> str:
        key = str(name).lower()
        if key not in self._items:
            raise KeyError(f"unknown {self.family} '{name}'; choose one of: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (any case); a lazy entry is imported the first time."""
        key = self._key(name)
        item = self._items[key]
        if isinstance(item, _Lazy):
            item = self._resolve(key, item)
        return item

    def _resolve(self, key: str, lazy: _Lazy) -> T:
        try:
            obj: Any = import_module(lazy.module)
            for part in lazy.attribute.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise ImportError(f"{self.family} '{key}': cannot load {lazy.target}: {err}") from err
        self._items[key] = obj
        return obj

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def info(self, name: str) -> Any:
        """The ``info`` that ``name`` was registered with (None when none was given); no import."""
        return self._info[self._key(name)]

    def target(self, name: str) -> str | None:
        """The ``module:attribute`` path of a lazy entry (resolved or not); None for an eager one."""
        return self._targets.get(self._key(name))

    def is_loaded(self, name: str) -> bool:
        """Whether ``name``'s object is at hand: eager, or lazy and already imported."""
        return not isinstance(self._items[self._key(name)], _Lazy)

    def names(self) -> list[str]:
        """Registered names in registration order; imports nothing."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.names()})"
