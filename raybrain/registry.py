"""Name -> object registries (tasks, arms, transfer objectives).

Registration is by decorator; registering the same name twice is an error that names
both objects, and looking up an unknown name lists the known ones.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from raybrain.errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of objects of one kind, addressed by name.

    Parameters
    ----------
    kind : str
        What the registry holds ("task", "arm", ...), used in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {self._items[name]!r}; "
                    f"cannot register {obj!r} under the same name (pick another name)"
                )
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered under ``name``; SpecError listing the names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise SpecError(
                f"unknown {self.kind} {name!r}; expected one of {sorted(self._items)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
