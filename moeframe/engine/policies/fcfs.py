"""First come, first served: admission in arrival order (vLLM's default)."""

from __future__ import annotations

from moeframe.cache.base import KVCache
from moeframe.engine.policies import SCHEDULERS
from moeframe.engine.policies.base import SchedulerParams, SchedulingPolicy
from moeframe.engine.request import Request


@SCHEDULERS.register("fcfs", params=SchedulerParams)
class FirstComeFirstServed(SchedulingPolicy):
    def __init__(self, params: SchedulerParams, **_: object) -> None:
        super().__init__(params)

    def order(self, waiting: list[Request], cache: KVCache) -> list[Request]:
        return sorted(waiting, key=lambda r: (r.arrival_s, r.rid))
