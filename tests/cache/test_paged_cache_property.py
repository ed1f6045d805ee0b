"""paged against a brute-force block cache, under random match/allocate/release/clear sequences.

The model follows the documented policy exactly: a prompt matches the cached
blocks before its last token, full blocks are committed at release (and when
a running request shares them) under their token prefix (a duplicate of a
cached block is not), every token's slot sits at the token's offset in its block,
blocks become evictable when their last reference goes (a request's last
block first), and allocation evicts the oldest evictable blocks, only as
many as it lacks free ones.
"""

from __future__ import annotations

from cache_machine import CacheMachine, Prefix, Running
from hypothesis import settings
from hypothesis.stateful import invariant

SETTINGS = settings(max_examples=120, stateful_step_count=50, deadline=None)


class PagedMachine(CacheMachine):
    num_slots = 26  # not a multiple of the block size: the last 2 slots never form a block
    unit = 4
    cache_node = {"name": "paged", "block_size": 4, "prefix_reuse": True}

    def own_block_starts(self, req: Running) -> list[int]:
        return list(dict.fromkeys(slot - slot % self.unit for slot in req.own))

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

    def match_keys(self, tokens: list[int]) -> list[Prefix]:
        return self.model.longest(tokens[:-1])

    @invariant()
    def every_slot_sits_at_its_tokens_offset_in_its_block(self) -> None:
        for req in self.running:
            assert [slot % self.unit for slot in req.slots] == [i % self.unit for i in range(len(req.slots))]

    def can_allocate(self, req: Running, n: int) -> bool:
        return self.blocks_needed(req, n) <= self.num_free_blocks() + len(self.model.unpinned())

    def after_allocate(self, req: Running, fresh: list[int], short: int, evicted_tokens: int) -> None:
        model = self.model
        evict = max(0, self.blocks_needed(req, len(fresh)) - self.num_free_blocks())
        assert evicted_tokens == self.unit * evict
        for _ in range(evict):  # least recently used first, never a block an unpinned block continues
            unpinned = set(model.unpinned())
            ends = [key for key in unpinned if not any(k[: len(key)] == key and len(k) == len(key) + self.unit for k in unpinned)]
            model.remove([min(ends, key=model.last_use.__getitem__)])
        room = -len(req.own) % self.unit
        for i, slot in enumerate(fresh):
            previous = fresh[i - 1] if i else req.slots[-1] if room else None
            fills_block = previous is not None and previous % self.unit != self.unit - 1
            assert slot == previous + 1 if fills_block else slot % self.unit == 0, "slots do not fill blocks in order"

    def commit_own_full_blocks(self, req: Running) -> dict[int, Prefix]:
        """Enter the request's own full, block-aligned, not yet cached blocks; returns them by first slot."""
        model = self.model
        starts = self.own_block_starts(req)
        committed = {}
        for j, key in enumerate(model.unit_keys(req.tokens[: len(req.slots)])):
            chunk = req.slots[j * self.unit : (j + 1) * self.unit]
            if chunk[0] in starts and chunk == list(range(chunk[0], chunk[0] + self.unit)) and key not in model.entries:
                model.entries[key] = tuple(chunk)
                committed[chunk[0]] = key
        return committed

    def model_cache_prefix(self, req: Running) -> list[Prefix]:
        if not self.cache_node["prefix_reuse"]:
            return req.matched_keys
        self.commit_own_full_blocks(req)
        chain = self.model.longest(req.tokens[: len(req.slots)])
        self.model.pin(chain)
        for key in req.matched_keys:
            self.model.pins[key] -= 1
        return chain

    def model_release(self, req: Running, cacheable: bool) -> None:
        model = self.model
        starts = self.own_block_starts(req)
        committed = self.commit_own_full_blocks(req) if cacheable and self.cache_node["prefix_reuse"] else {}
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


class PagedOneSlotBlocksMachine(PagedMachine):
    unit = 1
    cache_node = {"name": "paged", "block_size": 1, "prefix_reuse": True}


class PagedNoReuseMachine(PagedMachine):
    cache_node = {"name": "paged", "block_size": 4, "prefix_reuse": False}


TestPagedAgainstBruteForce = PagedMachine.TestCase
TestPagedAgainstBruteForce.settings = SETTINGS
TestPagedSmallBlocksAgainstBruteForce = PagedSmallBlocksMachine.TestCase
TestPagedSmallBlocksAgainstBruteForce.settings = SETTINGS
TestPagedOneSlotBlocksAgainstBruteForce = PagedOneSlotBlocksMachine.TestCase
TestPagedOneSlotBlocksAgainstBruteForce.settings = SETTINGS
TestPagedNoReuseAgainstBruteForce = PagedNoReuseMachine.TestCase
TestPagedNoReuseAgainstBruteForce.settings = SETTINGS
