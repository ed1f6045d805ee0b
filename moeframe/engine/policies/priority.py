"""Priority scheduling: larger ``SamplingParams.priority`` first, then arrival; the least important is preempted first.

SGLang's priority scheduling (``--enable-priority-scheduling``, larger values
first by default) orders the waiting queue by the request's priority field,
and vLLM's preempts the lowest-priority running request when memory runs
short; both are here. Equal priorities keep first come, first served, so a
run whose requests all carry the default 0 schedules as ``fcfs``.
"""

from __future__ import annotations

from moeframe.cache.base import KVCache
from moeframe.engine.policies import SCHEDULERS
from moeframe.engine.policies.base import SchedulerParams, SchedulingPolicy
from moeframe.engine.request import Request


@SCHEDULERS.register("priority", params=SchedulerParams)
class PriorityFirst(SchedulingPolicy):
    def __init__(self, params: SchedulerParams, **_: object) -> None:
        super().__init__(params)

    def order(self, waiting: list[Request], cache: KVCache) -> list[Request]:
        return sorted(waiting, key=lambda r: (-r.params.priority, r.arrival_s, r.rid))

    def victim(self, running: list[Request]) -> Request:
        """The lowest priority; among equals the newest."""
        return max(running, key=lambda r: (-r.params.priority, r.arrival_s, r.rid))
