"""A tiny name -> entry registry: the single source of truth for backbones, formats,
quantizations and runtimes. An entry carries its own name (`entry.name`), so a name is typed
once. Tests parametrize over these, so adding a backbone/format/runtime means one file plus one
name, and the new entry is tested without editing a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A user typed a name that is not registered; the message lists the valid ones."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add `entry` under its own `name`; a name registered twice is a programming error."""
        name = entry.name
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}"
            ) from None

    def check(self, name: str) -> str:
        """`name` itself when registered; else UnknownNameError listing the valid names."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return list(self._entries)

    def parse_list(self, text: str) -> list[str]:
        """Parse a comma-separated CLI value, refusing any unknown name with the valid list."""
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise UnknownNameError(f"no {self.kind} given; valid: {', '.join(self._entries)}")
        for n in names:
            self.get(n)
        return list(dict.fromkeys(names))  # each once: `onnx,onnx` is one format

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())
