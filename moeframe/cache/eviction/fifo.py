"""First cached, first evicted, however often or lately reused: SGLang's FIFO strategy."""

from __future__ import annotations

from moeframe.cache.eviction import EVICTIONS
from moeframe.cache.eviction.base import CacheEntry, EvictionPolicy
from moeframe.registry import NoParams


@EVICTIONS.register("fifo")
class FirstInFirstOut(EvictionPolicy):
    def __init__(self, params: NoParams, **_: object) -> None:
        pass

    def key(self, entry: CacheEntry) -> tuple[int, ...]:
        return (entry.created,)
