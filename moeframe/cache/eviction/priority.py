"""Lowest request priority first, least recently used among equals: SGLang's priority-aware eviction.

An entry carries the largest ``SamplingParams.priority`` of the requests that
cached or reused it, so the prefixes of important requests outlive others';
with every request at the default 0 it evicts as ``lru``.
"""

from __future__ import annotations

from moeframe.cache.eviction import EVICTIONS
from moeframe.cache.eviction.base import CacheEntry, EvictionPolicy
from moeframe.registry import NoParams


@EVICTIONS.register("priority")
class LowestPriorityFirst(EvictionPolicy):
    def __init__(self, params: NoParams, **_: object) -> None:
        pass

    def key(self, entry: CacheEntry) -> tuple[int, ...]:
        return (entry.priority, entry.last_access)
