"""Continuous batching with chunked prefill, admission by free slots, eviction then preemption.

Each step packs, within a token budget: one new token for every decoding
request, the next prompt chunk of every request still prefilling, then new
requests in the policy's order (SGLang's and vLLM v1's mixed batches). When
the pool runs short the cache evicts unpinned entries (in its eviction
policy's order); if that is not enough, a running request is preempted (the
policy's victim: the newest, or the least important under ``priority``): its KV goes back to the
cache and it is recomputed later (vLLM's recompute preemption), so no request
is ever corrupted and the engine never stops.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeframe.cache.base import KVCache, PrefixMatch
from moeframe.engine.policies.base import SchedulingPolicy
from moeframe.engine.request import Request, Status


@dataclass
class ScheduledBatch:
    requests: list[Request]
    num_new_tokens: list[int]  # tokens each request computes this step (starting at its num_computed)


class Scheduler:
    def __init__(self, policy: SchedulingPolicy, cache: KVCache) -> None:
        self.policy, self.cache = policy, cache
        self.params = policy.params
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        budget = self.params.max_batch_tokens
        batch = ScheduledBatch([], [])
        chunk_size = self.params.chunk_size
        for req in list(self.running):
            if budget == 0:
                break
            if req.status is not Status.RUNNING:  # preempted by an earlier request's grow this step
                continue
            n = min(req.num_pending, chunk_size, budget)
            if not self.grow(req, n, protect=batch.requests):
                continue
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
            budget -= n
        for req in self.policy.order(self.waiting, self.cache) if self.waiting else ():
            if budget == 0 or len(self.running) >= self.params.max_running:
                break
            n = self.admit(req, budget)
            if n == 0:
                break
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
            budget -= n
        return batch if batch.requests else None

    def schedule_ahead(self, requests: list[Request]) -> ScheduledBatch | None:
        """A decode step for running requests whose next token is a placeholder, from free slots only.

        Overlapped decode (``EngineCore.step``) schedules step n+1 before step
        n's tokens reach the host. It must not evict or preempt on a guess, so
        it takes the step only when the cache can serve every request from free
        slots (None otherwise: the normal schedule runs once the tokens are
        known). A block cache whose free slots turn out fragmented may leave a
        request out; it keeps its placeholder's token pending for a later step.
        """
        if not self.cache.can_allocate_free([req.slots for req in requests], 1):
            return None
        batch = ScheduledBatch([], [])
        for req in requests:
            fresh = self.cache.allocate(req.slots, 1)
            if fresh is None:
                continue
            req.slots.extend(fresh)
            batch.requests.append(req)
            batch.num_new_tokens.append(1)
        return batch if batch.requests else None

    def admit(self, req: Request, budget: int) -> int:
        """Pin the request's cached prefix and allocate its first chunk; 0 if the pool cannot."""
        match = self.cache.match_prefix(req.all_ids, req.params.priority) if req.shares_kv else PrefixMatch()
        reuse = min(match.num_tokens, len(req.all_ids) - 1)
        req.match, req.slots = match, list(match.slots[:reuse])
        if req.cached_tokens is None:
            req.cached_tokens = min(reuse, len(req.prompt_ids))
        n = min(req.num_pending, self.params.chunk_size, budget)
        fresh = self.cache.allocate(req.slots, n)
        if fresh is None:
            self.cache.release(req.all_ids[:reuse], req.slots, match, cacheable=True, priority=req.params.priority)
            req.slots, req.match = [], PrefixMatch()
            if not self.running:
                req.cached_tokens = None
            return 0
        req.slots.extend(fresh)
        self.waiting.remove(req)
        self.running.append(req)
        req.status = Status.RUNNING
        return n

    def grow(self, req: Request, n: int, protect: list[Request]) -> bool:
        """Allocate n slots for a running request, preempting others (the policy's victim first) while short."""
        while (fresh := self.cache.allocate(req.slots, n)) is None:
            victims = [r for r in self.running if r is not req and r not in protect]
            if not victims:
                return False
            self.preempt(self.policy.victim(victims))
        req.slots.extend(fresh)
        return True

    def cache_prefix(self, req: Request) -> None:
        """Offer a request's computed KV to the cache while it runs, so requests sharing it reuse it now."""
        if not req.shares_kv:
            return
        match = self.cache.cache_prefix(req.all_ids[: len(req.slots)], req.slots, req.match, req.params.priority)
        req.slots = list(match.slots) + req.slots[match.num_tokens :]
        req.match = match

    def preempt(self, req: Request) -> None:
        self.release(req)
        req.status = Status.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(req)

    def release(self, req: Request) -> None:
        """Give a request's slots back to the cache (it keeps what it can reuse)."""
        if req in self.running:
            self.running.remove(req)
        self.cache.release(
            req.all_ids[: len(req.slots)], req.slots, req.match, cacheable=req.shares_kv, priority=req.params.priority
        )
        req.slots, req.match = [], PrefixMatch()

    def finish(self, req: Request) -> None:
        self.release(req)
        if req in self.waiting:
            self.waiting.remove(req)
        req.status = Status.FINISHED
