"""Least recently used first: the default of SGLang's radix cache and vLLM's prefix cache."""

from __future__ import annotations

from moeframe.cache.eviction import EVICTIONS
from moeframe.cache.eviction.base import CacheEntry, EvictionPolicy
from moeframe.registry import NoParams


@EVICTIONS.register("lru")
class LeastRecentlyUsed(EvictionPolicy):
    def __init__(self, params: NoParams, **_: object) -> None:
        pass

    def key(self, entry: CacheEntry) -> tuple[int, ...]:
        return (entry.last_access,)
