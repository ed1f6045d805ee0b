"""cache=none: no reuse; a request's slots go back to the pool when it ends (the baseline)."""

from __future__ import annotations

from moeframe.cache import CACHES
from moeframe.cache.base import KVCache, PoolParams, PrefixMatch
from moeframe.cache.pool import KVPool


@CACHES.register("none", params=PoolParams)
class NoCache(KVCache):
    def __init__(self, params: PoolParams, pool: KVPool, **_: object) -> None:
        super().__init__(pool)

    def match_prefix(self, token_ids: list[int], priority: int = 0) -> PrefixMatch:
        self.stats.queried_tokens += len(token_ids)
        return PrefixMatch()

    def allocate(self, owned: list[int], n: int) -> list[int] | None:
        return self.pool.alloc(n)

    def release(self, token_ids: list[int], slots: list[int], match: PrefixMatch, cacheable: bool, priority: int = 0) -> None:
        self.pool.free(slots)

    def num_cached_tokens(self) -> int:
        return 0

    def clear(self) -> None:
        pass
