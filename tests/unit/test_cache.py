"""BoundedCache: computes missing values once, never holds more than its limit."""

from __future__ import annotations

import pytest

from ipftrace_exporter.cache import BoundedCache


def test_a_missing_key_is_made_once_and_then_served_from_the_cache() -> None:
    made: list[int] = []

    def make(key: int) -> str:
        made.append(key)
        return f"v{key}"

    cache = BoundedCache(10, make)
    assert (cache[1], cache[1], cache[2]) == ("v1", "v1", "v2")
    assert made == [1, 2]
    assert cache.get(3) is None and 3 not in cache  # get() and `in` never make


def test_it_empties_itself_when_a_new_key_arrives_at_the_limit() -> None:
    cache = BoundedCache(3, lambda key: key * 2)
    for key in range(3):
        assert cache[key] == key * 2
    assert len(cache) == 3
    cache[0] = 5  # replacing a held key is no new entry
    assert len(cache) == 3
    assert cache[3] == 6
    assert dict(cache) == {3: 6}
    cache["x"] = 1  # assignment is bounded too
    assert len(cache) == 2
    for key in range(100):
        cache[key] = key
        assert len(cache) <= 3


def test_without_a_factory_a_missing_key_is_a_key_error() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    with pytest.raises(KeyError):
        cache["absent"]
    cache["a"] = 1
    assert cache["a"] == 1


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BoundedCache(0)
