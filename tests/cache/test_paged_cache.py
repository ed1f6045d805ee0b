"""cache=paged through the KVCache interface: block layout, hash-chained reuse, LRU of cached blocks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cache_requests import run_request

from moeframe.cache import CACHES, KVCache, KVPool, PrefixMatch
from moeframe.errors import ConfigError


def paged(pool: KVPool, block_size: int = 4, prefix_reuse: bool = True) -> KVCache:
    return CACHES.build({"name": "paged", "block_size": block_size, "prefix_reuse": prefix_reuse}, pool=pool)


def test_allocate_fills_the_requests_last_block_before_taking_another(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = paged(pool)
    first = cache.allocate([], 3)
    other = cache.allocate([], 1)
    more = cache.allocate(first, 3)
    assert first + more[:1] == [first[0] + i for i in range(4)]
    assert more[1] % 4 == 0 and more[2] == more[1] + 1
    assert not set(other) & set(first + more)
    assert cache.num_cached_tokens() == (4 - 2) + (4 - 1)  # unused tails reserved for their requests


def test_released_full_blocks_are_reused_and_the_partial_block_is_not(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(32)
    cache = paged(pool)
    slots = run_request(cache, list(range(10)))
    assert cache.num_cached_tokens() == 8
    assert pool.num_free_slots == 24
    assert cache.match_prefix(list(range(12))).slots == slots[:8]


def test_an_equal_block_under_a_different_prefix_does_not_match(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(32)
    cache = paged(pool)
    run_request(cache, [1, 1, 1, 1, 2, 2, 2, 2])
    assert cache.cached_prefix_len([3, 3, 3, 3, 2, 2, 2, 2]) == 0
    assert cache.cached_prefix_len([1, 1, 1, 1, 2, 2, 2, 9]) == 4


def test_a_block_cached_meanwhile_by_another_request_is_not_kept_twice(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(32)
    cache = paged(pool)
    early = cache.match_prefix([5, 6, 7, 8])
    early_slots = cache.allocate([], 4)
    kept = run_request(cache, [5, 6, 7, 8])
    cache.release([5, 6, 7, 8], early_slots, early, cacheable=True)
    assert cache.num_cached_tokens() == 4
    assert pool.num_free_slots == 28
    assert cache.match_prefix([5, 6, 7, 8, 9]).slots == kept


def test_eviction_takes_the_least_recently_released_block_and_a_requests_last_block_first(
    make_pool: Callable[[int], KVPool],
) -> None:
    pool = make_pool(16)
    cache = paged(pool)
    run_request(cache, [1, 1, 1, 1, 2, 2, 2, 2])
    run_request(cache, [3, 3, 3, 3, 4, 4, 4, 4])
    assert cache.allocate([], 4) is not None  # evicts the [2]-block: the first request's last
    assert cache.cached_prefix_len([1, 1, 1, 1, 2, 2, 2, 2, 0]) == 4
    assert cache.allocate([], 4) is not None  # then the [1]-block
    assert cache.cached_prefix_len([1, 1, 1, 1, 0]) == 0
    assert cache.cached_prefix_len([3, 3, 3, 3, 4, 4, 4, 4, 0]) == 8
    assert cache.stats.evicted_tokens == 8


def test_matched_blocks_survive_eviction_pressure(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(12)
    cache = paged(pool)
    run_request(cache, [1, 1, 1, 1, 2, 2, 2, 2])
    run_request(cache, [3, 3, 3, 3])
    match = cache.match_prefix([1, 1, 1, 1, 2, 2, 2, 2, 5])
    assert cache.allocate(match.slots, 5) is None
    assert cache.allocate(match.slots, 4) is not None
    assert cache.cached_prefix_len([1, 1, 1, 1, 2, 2, 2, 2, 0]) == 8
    assert cache.cached_prefix_len([3, 3, 3, 3, 0]) == 0


def test_allocate_fails_cleanly_when_blocks_run_short(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(8)
    cache = paged(pool)
    held = cache.allocate([], 3)
    assert cache.allocate([], 5) is None
    assert (pool.num_free_slots, cache.num_cached_tokens()) == (4, 1)
    assert cache.allocate(held, 5) is not None


def test_without_prefix_reuse_nothing_is_matched_and_release_frees_everything(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = paged(pool, prefix_reuse=False)
    run_request(cache, list(range(8)))
    assert cache.match_prefix(list(range(8))).slots == []
    assert (cache.num_cached_tokens(), pool.num_free_slots) == (0, 16)


def test_clear_with_nothing_running_returns_every_slot(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(18)
    cache = paged(pool)
    for tokens in (list(range(9)), [0, 1, 2, 3, 9, 9, 9, 9]):
        run_request(cache, tokens)
    cache.clear()
    assert (cache.num_cached_tokens(), pool.num_free_slots) == (0, 18)


def test_a_block_larger_than_the_pool_is_rejected(make_pool: Callable[[int], KVPool]) -> None:
    with pytest.raises(ConfigError, match="block_size 32 exceeds the pool's 16 slots"):
        paged(make_pool(16), block_size=32)


def test_cache_prefix_moves_a_running_requests_full_blocks_into_its_match(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(32)
    cache = paged(pool)
    cached = run_request(cache, [1, 1, 1, 1])
    running = cache.allocate([], 10)
    tokens = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    shared = cache.cache_prefix(tokens, running, cache.match_prefix([]))
    assert shared.slots == cached + running[4:8]
    assert pool.num_free_slots == 32 - 12  # the running copy of the [1]-block went back
    assert cache.cached_prefix_len(tokens) == 8
    cache.release(tokens, shared.slots + running[8:], shared, cacheable=True)
    cache.clear()
    assert pool.num_free_slots == 32


class Scheduler:
    """The scheduler's moves on a cache (admit keeping the last token to compute, decode, cache after prefill)."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        self.requests: dict[str, tuple[list[int], list[int], PrefixMatch]] = {}

    def admit(self, name: str, tokens: list[int]) -> None:
        match = self.cache.match_prefix(tokens)
        slots = match.slots[: min(match.num_tokens, len(tokens) - 1)]
        fresh = self.cache.allocate(slots, len(tokens) - len(slots))
        assert fresh is not None
        self.requests[name] = (list(tokens), slots + fresh, match)

    def decode(self, name: str, token: int) -> None:
        tokens, slots, _ = self.requests[name]
        fresh = self.cache.allocate(slots, 1)
        assert fresh is not None
        tokens.append(token)
        slots.extend(fresh)

    def share(self, name: str) -> None:
        tokens, slots, match = self.requests[name]
        shared = self.cache.cache_prefix(tokens, slots, match)
        self.requests[name] = (tokens, shared.slots + slots[shared.num_tokens :], shared)

    def release(self, name: str) -> None:
        tokens, slots, match = self.requests.pop(name)
        self.cache.release(tokens, slots, match, cacheable=True)

    def held_slots(self) -> int:
        """Slots the running requests list beyond the cached blocks they were lent."""
        return sum(len(set(slots) - set(match.slots)) for _, slots, match in self.requests.values())


def test_sharing_after_a_whole_prompt_match_strands_no_slot(make_pool: Callable[[int], KVPool]) -> None:
    # The sequence hypothesis found: a request whose whole prompt was cached, decoded and shared twice.
    pool = make_pool(26)
    cache = paged(pool, block_size=2)
    run_request(cache, [0, 0, 0, 2])
    sched = Scheduler(cache)
    moves = [
        lambda: sched.admit("a", [0, 0, 0, 2]),
        lambda: sched.admit("b", [0]),
        lambda: sched.decode("a", 2),
        lambda: sched.share("a"),
        lambda: sched.decode("a", 1),
        lambda: sched.admit("c", [0, 0, 0]),
        lambda: sched.decode("c", 2),
        lambda: sched.decode("c", 2),
        lambda: sched.decode("c", 1),
        lambda: sched.share("c"),
        lambda: sched.share("a"),
        lambda: sched.release("a"),
        lambda: sched.release("b"),
        lambda: sched.release("c"),
    ]
    for step, move in enumerate(moves):
        move()
        assert pool.num_free_slots + cache.num_cached_tokens() + sched.held_slots() == 26, f"after move {step}"
        for _, slots, _ in sched.requests.values():
            assert [slot % 2 for slot in slots] == [i % 2 for i in range(len(slots))], f"after move {step}"
    assert cache.cached_prefix_len([0, 0, 0, 2, 2, 1, 0]) == 6
    cache.clear()
    assert pool.num_free_slots == 26


def test_a_whole_cached_prompt_matches_the_blocks_before_its_last_token(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = paged(pool, block_size=2)
    slots = run_request(cache, [1, 2, 3, 4])
    assert cache.match_prefix([1, 2, 3, 4]).slots == slots[:2]
    assert cache.match_prefix([1, 2, 3, 4, 5]).slots == slots
    assert (cache.cached_prefix_len([1, 2, 3, 4]), cache.cached_prefix_len([1, 2, 3, 4, 5])) == (2, 4)
