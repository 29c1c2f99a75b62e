"""Answers remembered for the objects they were worked out from, by identity.

Stored events are immutable, and a page read again is the same list of the same objects (the
page cache's): what is derived from it (its slice, its API views, their completed
dictionaries) need be worked out once, not once per read. Identity rather than equality:
equal values may not render alike. Each entry holds its object, so that no other object can
take its id while the entry is there.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

S = TypeVar("S")
T = TypeVar("T")


class ByIdentity(Generic[T]):
    """At most ``size`` answers; when full, it starts afresh (cheaper than ordering entries,
    and a page read often is back in it at its next read)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._answers: dict[int, tuple[Any, Hashable, T]] = {}

    def get(self, source: S, make: Callable[[S], T], variant: Hashable = None) -> T:
        """The answer for ``source`` (and ``variant``, what else it depends on), made by
        ``make(source)`` if there is none yet."""
        entry = self._answers.get(id(source))
        if entry is not None and entry[0] is source and entry[1] == variant:
            return entry[2]
        if len(self._answers) >= self._size:
            self._answers.clear()
        answer = make(source)
        self._answers[id(source)] = (source, variant, answer)
        return answer
