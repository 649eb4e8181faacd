"""Named plug-ins (attacks, defenses, trigger modes), registered by the module that defines them, so that a new
plug-in is one new module and nothing else.

Two kinds: a *module registry* names each plug-in after its module (``poisoning/attacks/wanet.py`` is the attack
"wanet"), lists names without importing anything (``--help`` stays fast) and imports a module when its plug-in is
asked for; a *name registry* takes any names, and imports every module of its packages on the first miss.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plug-in. ``packages``: where the plug-in modules live; ``by_module``: a plug-in's name is its module's."""

    def __init__(self, kind: str, packages: tuple[str, ...], by_module: bool = False) -> None:
        self.kind, self.packages, self.by_module = kind, packages, by_module
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator on the plug-in (a function or a class): ``@registry.register()`` in a module registry,
        ``@registry.register("name")`` in a name registry."""

        def add(item: T) -> T:
            key = item.__module__.rsplit(".", 1)[-1] if self.by_module else name
            if key is None:
                raise ValueError(f"a {self.kind} needs a name")
            if key in self._items and self._items[key] is not item:
                raise ValueError(f"two {self.kind}s are registered as {key!r}")
            self._items[key] = item
            return item

        return add

    def _modules(self) -> Iterator[str]:
        for package in self.packages:
            spec = importlib.util.find_spec(package)
            for info in pkgutil.iter_modules(spec.submodule_search_locations):
                if not info.name.startswith("_"):
                    yield f"{package}.{info.name}"

    def _discover(self) -> None:
        if not self._discovered:
            for module in self._modules():  # an import error surfaces as itself, not as an unknown name
                importlib.import_module(module)
            self._discovered = True

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            if self.by_module and name in self.names():
                importlib.import_module(next(m for m in self._modules() if m.rsplit(".", 1)[-1] == name))
            elif not self.by_module:
                self._discover()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}: one of {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def names(self) -> list[str]:
        """Every registered name (a module registry lists its modules without importing them)."""
        if self.by_module:
            return sorted(m.rsplit(".", 1)[-1] for m in self._modules())
        self._discover()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
