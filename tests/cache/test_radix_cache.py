"""cache=radix through the KVCache interface: the pool's books, eviction under pressure, stats."""

from __future__ import annotations

from collections.abc import Callable

from cache_requests import run_request

from moeframe.cache import CACHES, KVPool


def test_a_repeated_prompt_reuses_the_slots_of_its_first_run(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    first = run_request(cache, [1, 2, 3, 4])
    match = cache.match_prefix([1, 2, 3, 4, 5])
    assert match.slots == first
    assert cache.num_evictable_slots() == 0


def test_release_frees_the_requests_own_copy_of_a_prefix_cached_meanwhile(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    early = cache.match_prefix([1, 2, 3])
    early_slots = cache.allocate([], 3)
    run_request(cache, [1, 2, 3, 4])  # caches [1, 2, 3, 4] while the early request runs
    cache.release([1, 2, 3], early_slots, early, cacheable=True)
    assert cache.num_cached_tokens() == 4
    assert pool.num_free_slots == 12


def test_release_of_a_recomputed_last_token_frees_only_the_recomputed_slot(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    cached = run_request(cache, [1, 2, 3])
    match = cache.match_prefix([1, 2, 3])  # whole prompt cached: keep 2, recompute the last
    slots = match.slots[:2] + cache.allocate(match.slots[:2], 2)
    cache.release([1, 2, 3, 7], slots, match, cacheable=True)
    assert cache.match_prefix([1, 2, 3, 7]).slots == cached + [slots[3]]
    assert pool.num_free_slots == 16 - 4


def test_not_cacheable_release_returns_only_the_requests_own_slots(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    run_request(cache, [1, 2])
    run_request(cache, [1, 2, 3, 4], cacheable=False)
    assert cache.num_cached_tokens() == 2
    assert cache.num_evictable_slots() == 2
    assert pool.num_free_slots == 14


def test_allocate_evicts_only_what_the_pool_lacks(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(8)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    run_request(cache, [1, 2, 3])
    run_request(cache, [4, 5, 6])
    assert cache.allocate([], 2) is not None
    assert cache.stats.evicted_tokens == 0
    assert cache.allocate([], 1) is not None
    assert cache.stats.evicted_tokens == 3
    assert cache.cached_prefix_len([1, 2, 3]) == 0
    assert cache.cached_prefix_len([4, 5, 6]) == 3


def test_allocate_fails_without_evicting_when_eviction_cannot_cover_it(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(8)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    run_request(cache, [1, 2, 3])
    pinned = cache.match_prefix([1, 2, 3])
    assert cache.allocate(pinned.slots, 6) is None
    assert (cache.num_cached_tokens(), pool.num_free_slots, cache.stats.evicted_tokens) == (3, 5, 0)


def test_clear_with_nothing_running_returns_every_slot(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = CACHES.build({"name": "radix", "page_size": 2}, pool=pool)
    for tokens in ([1, 2, 3, 4, 5], [1, 2, 7, 8], [9, 9]):
        run_request(cache, tokens)
    cache.clear()
    assert (cache.num_cached_tokens(), pool.num_free_slots) == (0, 16)


def test_stats_count_queried_matched_and_evicted_tokens(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(7)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    run_request(cache, [1, 2, 3, 4])
    run_request(cache, [1, 2, 5, 6])  # matches 2; 1 slot left free
    run_request(cache, [7, 7, 7])  # 2 short: evicts [3, 4], the oldest leaf
    assert (cache.stats.queried_tokens, cache.stats.matched_tokens) == (11, 2)
    assert cache.stats.evicted_tokens == 2
    assert cache.cached_prefix_len([1, 2, 5, 6]) == 4


def test_cache_prefix_shares_a_running_requests_kv_and_frees_its_duplicates(make_pool: Callable[[int], KVPool]) -> None:
    pool = make_pool(16)
    cache = CACHES.build({"name": "radix"}, pool=pool)
    early = cache.match_prefix([1, 2, 3])
    early_slots = cache.allocate([], 3)
    cached = run_request(cache, [1, 2])
    shared = cache.cache_prefix([1, 2, 3], early_slots, early)
    assert shared.slots == cached + early_slots[2:]
    assert pool.num_free_slots == 16 - 3
    assert cache.match_prefix([1, 2, 3]).slots == shared.slots
    assert cache.num_evictable_slots() == 0


def test_giving_back_part_of_a_whole_page_match_keeps_the_pages_slots_cached(
    make_pool: Callable[[int], KVPool],
) -> None:
    # The scheduler keeps all but the last matched token, and gives them back unextended when allocate fails.
    pool = make_pool(16)
    cache = CACHES.build({"name": "radix", "page_size": 3}, pool=pool)
    cached = run_request(cache, [1, 2, 3])
    match = cache.match_prefix([1, 2, 3])
    cache.release([1, 2], match.slots[:2], match, cacheable=True)
    assert (pool.num_free_slots, cache.num_cached_tokens(), cache.num_evictable_slots()) == (13, 3, 3)
    assert not set(cached) & set(pool.alloc(13))
