"""A brute-force prefix cache and a hypothesis state machine that drives a real cache against it.

The model keeps the cached units (one radix page, or one paged block) as a
plain dict from the token prefix that a unit ends to the slots of that unit,
with pin counts and last-use ticks. The machine plays the scheduler: it
matches prompts, allocates (as prefill and as decode steps), releases
cacheable or not, clears, and after every step checks the cache against the
model and the pool's books. Slot contents are simulated: writing a token's
KV stores the prefix it ends in ``content[slot]``, so a slot handed out
twice or matched for the wrong tokens shows up as a wrong prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from moeframe.cache import CACHES, KVCache, KVPool, PrefixMatch

Prefix = tuple[int, ...]

TOKENS = st.integers(0, 2)
MAX_RUNNING = 3


@dataclass
class Running:
    tokens: list[int]
    slots: list[int]
    match: PrefixMatch
    matched_keys: list[Prefix]
    own: list[int] = field(default_factory=list)  # slots from allocate it still lists, in order


class PrefixModel:
    """Cached units keyed by the prefix they end; the longest match is a chain of present units."""

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.entries: dict[Prefix, tuple[int, ...]] = {}
        self.pins: dict[Prefix, int] = {}
        self.last_use: dict[Prefix, int] = {}
        self.clock = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def unit_keys(self, tokens: list[int]) -> list[Prefix]:
        return [tuple(tokens[: end]) for end in range(self.unit, len(tokens) + 1, self.unit)]

    def longest(self, tokens: list[int]) -> list[Prefix]:
        chain = []
        for key in self.unit_keys(tokens):
            if key not in self.entries:
                break
            chain.append(key)
        return chain

    def slots_of(self, keys: list[Prefix]) -> list[int]:
        return [slot for key in keys for slot in self.entries[key]]

    def unpinned(self) -> list[Prefix]:
        return [key for key in self.entries if self.pins.get(key, 0) == 0]

    def pin(self, keys: list[Prefix]) -> None:
        for key in keys:
            self.pins[key] = self.pins.get(key, 0) + 1

    def remove(self, keys: list[Prefix]) -> None:
        for key in keys:
            del self.entries[key]
            self.last_use.pop(key, None)
            self.pins.pop(key, None)


class CacheMachine(RuleBasedStateMachine):
    """Scheduler-shaped driver; subclasses give the cache config and the policy-specific expectations."""

    num_slots = 24
    unit = 1
    cache_node: dict = {"name": "none"}

    def __init__(self) -> None:
        super().__init__()
        self.pool = KVPool(1, self.num_slots, 1, 1, 1, torch.float32, "cpu")
        self.cache: KVCache = CACHES.build(dict(self.cache_node), pool=self.pool)
        self.model = PrefixModel(self.unit)
        self.running: list[Running] = []
        self.history: list[list[int]] = []
        self.content: dict[int, Prefix] = {}
        self.matched_tokens = 0

    # -- policy-specific expectations (subclasses) --

    def can_allocate(self, req: Running, n: int) -> bool:
        raise NotImplementedError

    def after_allocate(self, req: Running, fresh: list[int], short: int, evicted_tokens: int) -> None:
        """Update the model for the evictions an allocation ``short`` of free slots caused, and check them."""

    def model_release(self, req: Running, cacheable: bool) -> None:
        raise NotImplementedError

    def match_keys(self, tokens: list[int]) -> list[Prefix]:
        """The model's units a match of ``tokens`` reuses."""
        return self.model.longest(tokens)

    def model_match(self, keys: list[Prefix]) -> None:
        self.model.pin(keys)

    def model_cache_prefix(self, req: Running) -> list[Prefix]:
        """Update the model for sharing a running request's KV; returns the keys of its new match."""
        raise NotImplementedError

    def reserved_slots(self) -> int:
        return 0

    def in_use_slots(self, asking: Running) -> set[int]:
        """Slots nobody may be handed now: requests' and the cache's (``asking`` may get its own reserve)."""
        used = {slot for req in self.running for slot in req.slots}
        return used | set(self.model.slots_of(list(self.model.entries)))

    # -- the scheduler's moves --

    def draw_prompt(self, data: st.DataObject) -> list[int]:
        if self.history and data.draw(st.integers(0, 3), label="shares a prefix") > 0:
            base = data.draw(st.sampled_from(self.history), label="base")
            cut = data.draw(st.integers(0, len(base)), label="cut")
            prompt = base[:cut] + data.draw(st.lists(TOKENS, max_size=4), label="suffix")
        else:
            prompt = data.draw(st.lists(TOKENS, min_size=1, max_size=8), label="prompt")
        return prompt or [0]

    def allocate(self, req: Running, n: int) -> list[int] | None:
        expected_ok = self.can_allocate(req, n)
        free_before, cached_before = self.pool.num_free_slots, self.cache.num_cached_tokens()
        evicted_before = self.cache.stats.evicted_tokens
        fresh = self.cache.allocate(req.slots, n)
        assert (fresh is not None) == expected_ok
        if fresh is None:
            assert (self.pool.num_free_slots, self.cache.num_cached_tokens()) == (free_before, cached_before)
            return None
        assert len(fresh) == n and len(set(fresh)) == n
        self.after_allocate(req, fresh, n - free_before, self.cache.stats.evicted_tokens - evicted_before)
        assert not set(fresh) & self.in_use_slots(req), "a slot in use was handed out again"
        base = len(req.slots)
        for i, slot in enumerate(fresh):
            self.content[slot] = tuple(req.tokens[: base + i + 1])
        req.slots.extend(fresh)
        req.own.extend(fresh)
        return fresh

    @precondition(lambda self: len(self.running) < MAX_RUNNING)
    @rule(data=st.data(), keep_last=st.booleans())
    def start(self, data: st.DataObject, keep_last: bool) -> None:
        self.admit(self.draw_prompt(data), keep_last)

    @rule(data=st.data(), keep_last=st.booleans())
    def serve_whole_request(self, data: st.DataObject, keep_last: bool) -> None:
        req = self.admit(self.draw_prompt(data), keep_last)
        if req is not None:
            self.finish_request(req, cacheable=True)

    def admit(self, prompt: list[int], keep_last: bool) -> Running | None:
        """Match, pin and allocate the rest of a prompt; a request that cannot get slots gives its match back."""
        keys = self.match_keys(prompt)
        expected = self.model.slots_of(keys)
        assert self.cache.cached_prefix_len(prompt) == len(expected)
        match = self.cache.match_prefix(prompt)
        assert match.slots == expected
        for i, slot in enumerate(match.slots):
            assert self.content[slot] == tuple(prompt[: i + 1])
        self.matched_tokens += len(expected)
        self.model_match(keys)
        # The scheduler's move: keep one token to compute when the whole prompt matched.
        reuse = min(len(expected), len(prompt) - 1) if keep_last else len(expected)
        req = Running(list(prompt), list(match.slots[:reuse]), match, keys)
        self.running.append(req)
        if self.allocate(req, len(prompt) - reuse) is None:
            self.finish_request(req, cacheable=True)
            return None
        self.history.append(prompt)
        return req

    @precondition(lambda self: self.running)
    @rule(data=st.data(), token=TOKENS)
    def decode(self, data: st.DataObject, token: int) -> None:
        req = data.draw(st.sampled_from(self.running), label="request")
        req.tokens.append(token)
        if self.allocate(req, 1) is None:
            req.tokens.pop()

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def share_computed_prefix(self, data: st.DataObject) -> None:
        req = data.draw(st.sampled_from(self.running), label="request")
        tokens = req.tokens[: len(req.slots)]
        match = self.cache.cache_prefix(tokens, req.slots, req.match)
        keys = self.model_cache_prefix(req)
        assert match.slots == self.model.slots_of(keys)
        for i, slot in enumerate(match.slots):
            assert self.content[slot] == tuple(tokens[: i + 1])
        req.slots = match.slots + req.slots[match.num_tokens :]
        req.match, req.matched_keys = match, keys
        kept = set(req.slots[match.num_tokens :])
        req.own = [slot for slot in req.own if slot in kept]

    @precondition(lambda self: self.running)
    @rule(data=st.data(), cacheable=st.booleans())
    def finish(self, data: st.DataObject, cacheable: bool) -> None:
        self.finish_request(data.draw(st.sampled_from(self.running), label="request"), cacheable)

    def finish_request(self, req: Running, cacheable: bool) -> None:
        self.running.remove(req)
        self.cache.release(req.tokens[: len(req.slots)], req.slots, req.match, cacheable)
        self.model_release(req, cacheable)
        self.history.append(req.tokens)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.remove(self.model.unpinned())

    # -- checks after every step --

    @invariant()
    def no_slot_leaks(self) -> None:
        own = sum(len(req.own) for req in self.running)
        assert self.pool.num_free_slots + self.cache.num_cached_tokens() + own == self.num_slots

    @invariant()
    def cached_and_evictable_counts_match_the_model(self) -> None:
        unit = self.model.unit
        assert self.cache.num_cached_tokens() == unit * len(self.model.entries) + self.reserved_slots()
        assert self.cache.num_evictable_slots() == unit * len(self.model.unpinned())

    @invariant()
    def every_cached_prefix_is_matchable(self) -> None:
        for key in self.model.entries:
            for probe in (list(key), [*key, 0]):
                assert self.cache.cached_prefix_len(probe) == self.model.unit * len(self.match_keys(probe))

    @invariant()
    def matched_tokens_are_counted(self) -> None:
        assert self.cache.stats.matched_tokens == self.matched_tokens

    def teardown(self) -> None:
        for req in list(self.running):
            self.finish_request(req, cacheable=True)
        self.cache.clear()
        assert self.cache.num_cached_tokens() == 0
        assert self.pool.num_free_slots == self.num_slots
