"""One registry class for every pluggable family: slide readers, encoders, losses and heads.

Modelled on timm's ``register_model`` / ``create_model`` and MONAI's ``look_up_option``: entries are
registered under a lowercase name, duplicates raise, and an unknown name raises with the close
matches and the full list.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from histoxmodal.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories with a one-line description each.

    Parameters
    ----------
    kind
        What the entries are, used in messages ("slide reader", "image encoder", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__`` lowercased).

        Extra keyword arguments are stored as metadata and returned by :meth:`describe`.
        """

        def decorator(obj: T) -> T:
            key = (name or getattr(obj, "__name__", "")).lower()
            if not key:
                raise ValueError(f"a {self.kind} needs a name to be registered")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._meta[key] = {"summary": doc[0] if doc else "", **meta}
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``; unknown names raise with suggestions."""
        key = name.lower()
        if key in self._entries:
            return self._entries[key]
        close = difflib.get_close_matches(key, self._entries, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(sorted(self._entries))}"
        )

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern`` such as ``"uni*"``."""
        return sorted(k for k in self._entries if fnmatch.fnmatch(k, pattern.lower()))

    def describe(self, name: str) -> dict[str, Any]:
        """Metadata stored at registration, plus the first docstring line as ``summary``."""
        self.get(name)
        return dict(self._meta[name.lower()])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __len__(self) -> int:
        return len(self._entries)
