"""paged against a brute-force block cache, under random match/allocate/release/clear sequences.

The model follows the documented policy exactly: full blocks are committed
at release under their token prefix (a duplicate of a cached block is not),
blocks become evictable when their last reference goes (a request's last
block first), and allocation evicts the oldest evictable blocks, only as
many as it lacks free ones.
"""

from __future__ import annotations

from cache_machine import CacheMachine, Running
from hypothesis import settings

SETTINGS = settings(max_examples=120, stateful_step_count=50, deadline=None)


class PagedMachine(CacheMachine):
    num_slots = 26  # not a multiple of the block size: the last 2 slots never form a block
    unit = 4
    cache_node = {"name": "paged", "block_size": 4, "prefix_reuse": True}

    def own_block_starts(self, req: Running) -> list[int]:
        return req.own[:: self.unit]

    def num_free_blocks(self) -> int:
        running = sum(len(self.own_block_starts(req)) for req in self.running)
        return self.num_slots // self.unit - len(self.model.entries) - running

    def blocks_needed(self, req: Running, n: int) -> int:
        room = -len(req.own) % self.unit
        return -(-max(0, n - room) // self.unit)

    def reserved_slots(self) -> int:
        return sum(-len(req.own) % self.unit for req in self.running)

    def in_use_slots(self, asking: Running) -> set[int]:
        others = [req for req in self.running if req is not asking]
        reserved = {start + i for req in others for start in self.own_block_starts(req) for i in range(self.unit)}
        return super().in_use_slots(asking) | reserved

    def can_allocate(self, req: Running, n: int) -> bool:
        return self.blocks_needed(req, n) <= self.num_free_blocks() + len(self.model.unpinned())

    def after_allocate(self, req: Running, fresh: list[int], short: int, evicted_tokens: int) -> None:
        model = self.model
        evict = max(0, self.blocks_needed(req, len(fresh)) - self.num_free_blocks())
        assert evicted_tokens == self.unit * evict
        model.remove(sorted(model.unpinned(), key=model.last_use.__getitem__)[:evict])
        own = req.own + fresh
        for j, slot in enumerate(own):
            start = own[j - j % self.unit]
            assert start % self.unit == 0 and slot == start + j % self.unit, "slots do not fill whole blocks in order"

    def model_release(self, req: Running, cacheable: bool) -> None:
        model = self.model
        starts = self.own_block_starts(req)
        committed = {}
        if cacheable and self.cache_node["prefix_reuse"]:
            for j, key in enumerate(model.unit_keys(req.tokens[: len(req.slots)])):
                chunk = req.slots[j * self.unit : (j + 1) * self.unit]
                if chunk[0] in starts and chunk == list(range(chunk[0], chunk[0] + self.unit)) and key not in model.entries:
                    model.entries[key] = tuple(chunk)
                    committed[chunk[0]] = key
        freed_in_order = [("lent", key) for key in req.matched_keys] + [("own", start) for start in starts]
        for kind, what in reversed(freed_in_order):
            if kind == "lent":
                model.pins[what] -= 1
                if model.pins[what] == 0:
                    model.last_use[what] = model.tick()
            elif what in committed:
                model.last_use[committed[what]] = model.tick()


class PagedSmallBlocksMachine(PagedMachine):
    unit = 2
    cache_node = {"name": "paged", "block_size": 2, "prefix_reuse": True}


class PagedNoReuseMachine(PagedMachine):
    cache_node = {"name": "paged", "block_size": 4, "prefix_reuse": False}


TestPagedAgainstBruteForce = PagedMachine.TestCase
TestPagedAgainstBruteForce.settings = SETTINGS
TestPagedSmallBlocksAgainstBruteForce = PagedSmallBlocksMachine.TestCase
TestPagedSmallBlocksAgainstBruteForce.settings = SETTINGS
TestPagedNoReuseAgainstBruteForce = PagedNoReuseMachine.TestCase
TestPagedNoReuseAgainstBruteForce.settings = SETTINGS
