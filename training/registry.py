"""Classes by name, for the two registries of the training side: methods (``@register_method("iic")``,
``training/methods/base.py``) and dataset kinds (``@register_dataset("folder")``, ``training/data/registry.py``).

Like timm's ``@register_model``: a module registers its class with a decorator when it is imported, and the
package that imports every such module is imported before the names are listed, so a lookup never misses a
bundled entry. An unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """``what`` names an entry in messages ("method"), ``listing`` the names ("names"); ``attribute`` is the
    class attribute that receives the registered name; ``package`` is imported before listing; an unknown name
    raises ``unknown_error``."""

    def __init__(self, what: str, *, listing: str, attribute: str, package: str,
                 unknown_error: Callable[[str], Exception]):
        self.what, self.listing, self.attribute, self.package = what, listing, attribute, package
        self.unknown_error = unknown_error
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator. Names are snake_case and unique."""

        def decorate(cls: T) -> T:
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(f"{self.what} {name!r} is already registered by {existing.__qualname__}")
            setattr(cls, self.attribute, name)
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        importlib.import_module(self.package)  # imports every bundled module, which registers its class
        return sorted(self._classes)

    def get(self, name: Any) -> T:
        names = self.names()
        if name not in self._classes:
            raise self.unknown_error(f"unknown {self.what} {name!r}; valid {self.listing}: "
                                     f"{', '.join(names) or '(none)'}")
        return self._classes[name]
