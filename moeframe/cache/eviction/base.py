"""The eviction interface: a sort key over what a cache records of each entry; the smallest key is evicted first."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol


class CacheEntry(Protocol):
    """What the radix tree's nodes and the paged cache's blocks record, in the cache's own ticks."""

    last_access: int  # the last tick a request matched, cached or released it
    hit_count: int  # prefix matches that reused it
    created: int  # the tick it was cached
    priority: int  # the largest SamplingParams.priority of the requests that cached or reused it


class EvictionPolicy(ABC):
    @abstractmethod
    def key(self, entry: CacheEntry) -> tuple[int, ...]:
        """Smaller keys are evicted first; the cache breaks ties by its own creation order."""
