"""radix against a brute-force prefix cache, under random match/allocate/release/clear sequences."""

from __future__ import annotations

from cache_machine import CacheMachine, Prefix, Running
from hypothesis import settings

SETTINGS = settings(max_examples=120, stateful_step_count=50, deadline=None)


class RadixMachine(CacheMachine):
    cache_node = {"name": "radix", "page_size": 1}
    unit = 1

    def can_allocate(self, req: Running, n: int) -> bool:
        return n <= self.pool.num_free_slots + self.unit * len(self.model.unpinned())

    def after_allocate(self, req: Running, fresh: list[int], short: int, evicted_tokens: int) -> None:
        model = self.model
        removed = [key for key in model.entries if self.cache.cached_prefix_len(list(key)) < len(key)]
        if short <= 0:
            assert not removed and evicted_tokens == 0
            return
        assert evicted_tokens == self.unit * len(removed) >= short
        assert all(model.pins.get(key, 0) == 0 for key in removed), "a pinned prefix was evicted"
        gone = set(removed)
        remaining = [key for key in model.entries if key not in gone]
        assert not any(key[: len(gone_key)] == gone_key for key in remaining for gone_key in gone), (
            "a prefix was evicted while a longer one stayed"
        )
        extended = {key[: -self.unit] for key in remaining}
        leaves = [key for key in remaining if key not in extended and model.pins.get(key, 0) == 0]
        if leaves:
            assert max(model.last_use[key] for key in removed) <= min(model.last_use[key] for key in leaves), (
                "eviction was not least recently used first"
            )
        model.remove(removed)

    def model_match(self, keys: list[Prefix]) -> None:
        self.model.pin(keys)
        now = self.model.tick()
        for key in keys:
            self.model.last_use[key] = now

    def model_cache_prefix(self, req: Running) -> list[Prefix]:
        model = self.model
        keys = model.unit_keys(req.tokens[: len(req.slots)])
        inserted = model.tick()
        for j, key in enumerate(keys):
            model.entries.setdefault(key, tuple(req.slots[j * self.unit : (j + 1) * self.unit]))
            model.last_use[key] = inserted
        self.model_match(keys)
        for key in req.matched_keys:
            model.pins[key] -= 1
        return keys

    def model_release(self, req: Running, cacheable: bool) -> None:
        model = self.model
        if cacheable:
            now = model.tick()
            for j, key in enumerate(model.unit_keys(req.tokens[: len(req.slots)])):
                model.entries.setdefault(key, tuple(req.slots[j * self.unit : (j + 1) * self.unit]))
                model.last_use[key] = now
        for key in req.matched_keys:
            model.pins[key] -= 1


class RadixPagesMachine(RadixMachine):
    cache_node = {"name": "radix", "page_size": 3}
    unit = 3


TestRadixAgainstBruteForce = RadixMachine.TestCase
TestRadixAgainstBruteForce.settings = SETTINGS
TestRadixPagesAgainstBruteForce = RadixPagesMachine.TestCase
TestRadixPagesAgainstBruteForce.settings = SETTINGS
