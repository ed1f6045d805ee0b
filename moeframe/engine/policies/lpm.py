"""Longest prefix match first (SGLang's cache-aware policy): admit the requests with the most cached tokens.

Requests sharing a cached prefix then run while that prefix is still in the
cache, which raises the hit rate under memory pressure (SGLang paper, 4.2).
"""

from __future__ import annotations

from moeframe.cache.base import KVCache
from moeframe.engine.policies import SCHEDULERS
from moeframe.engine.policies.base import SchedulerParams, SchedulingPolicy
from moeframe.engine.request import Request


@SCHEDULERS.register("lpm", params=SchedulerParams)
class LongestPrefixMatch(SchedulingPolicy):
    def __init__(self, params: SchedulerParams, **_: object) -> None:
        super().__init__(params)

    def order(self, waiting: list[Request], cache: KVCache) -> list[Request]:
        return sorted(waiting, key=lambda r: (-cache.cached_prefix_len(r.all_ids), r.arrival_s, r.rid))
