"""Least frequently used first (fewest prefix hits), least recently used among equals: SGLang's LFU strategy."""

from __future__ import annotations

from moeframe.cache.eviction import EVICTIONS
from moeframe.cache.eviction.base import CacheEntry, EvictionPolicy
from moeframe.registry import NoParams


@EVICTIONS.register("lfu")
class LeastFrequentlyUsed(EvictionPolicy):
    def __init__(self, params: NoParams, **_: object) -> None:
        pass

    def key(self, entry: CacheEntry) -> tuple[int, ...]:
        return (entry.hit_count, entry.last_access)
