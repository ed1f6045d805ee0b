"""cache=radix: SGLang's RadixAttention prefix cache over the slot pool.

Finished (and preempted) requests insert their tokens and slots into a radix
tree; a new prompt reuses the slots of its longest cached prefix, pinned
until the request releases it. When ``allocate`` finds the pool short it
evicts unpinned leaves in the order of ``eviction`` (lru, lfu, fifo,
priority: moeframe/cache/eviction; SGLang's ``RadixCache.evict``).
``page_size`` > 1 caches whole pages only.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeframe.cache import CACHES
from moeframe.cache.base import KVCache, PoolParams, PrefixMatch
from moeframe.cache.eviction import EVICTIONS, check_eviction
from moeframe.cache.pool import KVPool
from moeframe.cache.radix_tree import RadixTree


@dataclass
class RadixParams(PoolParams):
    page_size: int = 1
    eviction: str = "lru"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        check_eviction(self.eviction)


def _own_slots(slots: list[int], match: PrefixMatch) -> list[int]:
    """The slots of a request that are its own, not the pinned prefix it was lent."""
    lent = match.slots
    return [s for i, s in enumerate(slots) if i >= len(lent) or s != lent[i]]


@CACHES.register("radix", params=RadixParams)
class RadixCache(KVCache):
    def __init__(self, params: RadixParams, pool: KVPool, **_: object) -> None:
        super().__init__(pool)
        self.tree = RadixTree(params.page_size, EVICTIONS.build({"name": params.eviction}))

    def match_prefix(self, token_ids: list[int], priority: int = 0) -> PrefixMatch:
        slots, node = self.tree.match(token_ids, hit_priority=priority)
        self.tree.lock(node)
        self.stats.queried_tokens += len(token_ids)
        self.stats.matched_tokens += len(slots)
        return PrefixMatch(slots, node)

    def allocate(self, owned: list[int], n: int) -> list[int] | None:
        short = n - self.pool.num_free_slots
        if short > self.tree.evictable_size:
            return None
        if short > 0:
            self.stats.evicted_tokens += self.tree.evict(short, self.pool.free)
        return self.pool.alloc(n)

    def release(self, token_ids: list[int], slots: list[int], match: PrefixMatch, cacheable: bool, priority: int = 0) -> None:
        if len(token_ids) != len(slots):
            raise ValueError(f"release needs one slot per token, got {len(token_ids)} tokens and {len(slots)} slots")
        if cacheable:
            # insert hands back every slot past the last whole page, lent ones too when a request
            # gives back fewer tokens than it matched (its admission failed): those stay the tree's.
            lent = set(match.slots)
            self.pool.free([slot for slot in self.tree.insert(token_ids, slots, priority) if slot not in lent])
        else:
            self.pool.free(_own_slots(slots, match))
        if match.handle is not None:
            self.tree.unlock(match.handle)

    def cache_prefix(self, token_ids: list[int], slots: list[int], match: PrefixMatch, priority: int = 0) -> PrefixMatch:
        """Insert a running request's computed whole pages now and pin them as its match (SGLang's cache_unfinished_req)."""
        end = self.tree.aligned_len(len(token_ids))
        self.pool.free(self.tree.insert(token_ids[:end], slots[:end], priority))
        shared, node = self.tree.match(token_ids[:end])
        self.tree.lock(node)
        if match.handle is not None:
            self.tree.unlock(match.handle)
        return PrefixMatch(shared, node)

    def num_cached_tokens(self) -> int:
        return self.tree.total_size

    def num_evictable_slots(self) -> int:
        return self.tree.evictable_size

    def cached_prefix_len(self, token_ids: list[int]) -> int:
        return self.tree.cached_len(token_ids)

    def clear(self) -> None:
        self.tree.evict(self.tree.evictable_size, self.pool.free)
