"""The one bounded cache: a dict that computes a missing value with its factory and empties itself when full.

Emptying (rather than evicting least recently used entries) keeps a hit a plain C dict lookup, which the span
encoder does several times per event; the caches hold values that are cheap to recompute (serialized attribute
pieces, decoded module data), so an occasional refill costs less than bookkeeping on every hit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """`cache[key]` returns the cached value, or `make(key)` stored first; an entry added while `limit` entries are
    held empties the cache (also when assigned directly), so it never holds more than `limit`."""

    __slots__ = ("limit", "make")

    def __init__(self, limit: int, make: Callable[[K], V] | None = None) -> None:
        if limit <= 0:
            raise ValueError(f"cache limit must be positive, got {limit}")
        super().__init__()
        self.limit = limit
        self.make = make

    def __missing__(self, key: K) -> V:
        if self.make is None:
            raise KeyError(key)
        value = self[key] = self.make(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit and key not in self:
            self.clear()
        dict.__setitem__(self, key, value)
