"""Each scheduler policy admits in the order it promises, on hand-made queues over a hand-made radix cache."""

from __future__ import annotations

import random

import pytest
import torch

from moeframe.cache import CACHES, KVCache, KVPool
from moeframe.engine.policies import SCHEDULERS
from moeframe.engine.policies.dfs_weight import dfs_weight_order
from moeframe.engine.request import Request
from moeframe.engine.sampling_params import SamplingParams


def policy(name: str):
    return SCHEDULERS.build({"name": name})


def cache_holding(*sequences: list[int], name: str = "radix", **params) -> KVCache:
    """A cache whose tree holds ``sequences`` (each run and released as a finished request would)."""
    cache = CACHES.build({"name": name, **params}, pool=KVPool(1, 256, 1, 1, 1, torch.float32, "cpu"))
    for ids in sequences:
        match = cache.match_prefix(ids)
        slots = match.slots + cache.allocate(match.slots, len(ids) - len(match.slots))
        cache.release(ids, slots, match, cacheable=True)
    return cache


def request(rid: int, ids: list[int], arrival_s: float, priority: int = 0) -> Request:
    return Request(rid=rid, prompt_ids=ids, params=SamplingParams(priority=priority), arrival_s=arrival_s)


def rids(requests: list[Request]) -> list[int]:
    return [r.rid for r in requests]


# The cache holds A = 1 2 3 4, B = 1 2 5 6 and C = 7 8; each request's cached prefix is noted.
CACHED = ([1, 2, 3, 4], [1, 2, 5, 6], [7, 8])
QUEUE = [
    (0, [7, 8, 9], 0.0),  # C (2 cached)
    (1, [1, 2, 3, 4, 9], 1.0),  # A (4)
    (2, [1, 2, 5, 6, 9], 2.0),  # B (4)
    (3, [1, 2, 3, 4, 8], 3.0),  # A (4)
    (4, [1, 2, 9], 4.0),  # ends where A and B part (2)
    (5, [9, 9], 5.0),  # nothing cached
]


def queue() -> list[Request]:
    return [request(rid, ids, arrival) for rid, ids, arrival in reversed(QUEUE)]  # the list order is not arrival order


def test_fcfs_admits_in_arrival_order() -> None:
    assert rids(policy("fcfs").order(queue(), cache_holding(*CACHED))) == [0, 1, 2, 3, 4, 5]


def test_lpm_admits_the_longest_cached_prefix_first_then_by_arrival() -> None:
    assert rids(policy("lpm").order(queue(), cache_holding(*CACHED))) == [1, 2, 3, 0, 4, 5]


def test_dfs_weight_walks_the_heaviest_cached_subtree_first_deepest_requests_before_their_ancestors() -> None:
    # Under 1 2 (weight 4): A (weight 2: rids 1, 3) before B (1: rid 2), then rid 4 that ends at 1 2;
    # then C (1: rid 0); the uncached rid 5 last.
    assert rids(policy("dfs_weight").order(queue(), cache_holding(*CACHED))) == [1, 3, 2, 4, 0, 5]


def test_dfs_weight_breaks_equal_weights_by_the_earliest_arrival_in_each_subtree() -> None:
    cache = cache_holding([1, 2], [3, 4])
    waiting = [request(0, [3, 4, 5], 0.0), request(1, [1, 2, 5], 1.0), request(2, [1, 2, 6], 2.0), request(3, [3, 4, 6], 3.0)]
    assert rids(policy("dfs_weight").order(waiting, cache)) == [0, 3, 1, 2]


def test_dfs_weight_groups_by_whole_blocks_on_the_paged_cache() -> None:
    cache = cache_holding([1, 2, 3, 4, 5], [1, 2, 3, 6, 7], [8, 9, 8, 9, 1], name="paged", block_size=2)
    # cached blocks: (1 2) -> (3 4) | (3 6), and (8 9) -> (8 9)
    waiting = [
        request(0, [8, 9, 8, 9, 0], 0.0),
        request(1, [1, 2, 3, 6, 0], 1.0),
        request(2, [1, 2, 3, 4, 0], 2.0),
        request(3, [1, 2, 0], 3.0),
    ]
    assert rids(policy("dfs_weight").order(waiting, cache)) == [1, 2, 3, 0]


def naive_dfs_weight(prefixes: list[tuple[int, ...]]) -> list[int]:
    """The same walk over a trie with one node per token, by recursion: the brute-force reference."""

    def walk(members: list[int], depth: int) -> list[int]:
        here = [i for i in members if len(prefixes[i]) == depth]
        children: dict[int, list[int]] = {}
        for i in members:
            if len(prefixes[i]) > depth:
                children.setdefault(prefixes[i][depth], []).append(i)
        out: list[int] = []
        for child in sorted(children.values(), key=lambda c: (-len(c), c[0])):
            out += walk(child, depth + 1)
        return out + here

    return walk(list(range(len(prefixes))), 0)


@pytest.mark.parametrize("seed", range(20))
def test_dfs_weight_order_matches_a_one_token_per_node_trie_walk(seed: int) -> None:
    rng = random.Random(seed)
    prefixes = [tuple(rng.choice([1, 2]) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 12))]
    items = [(prefix, i, request(i, [0], float(i))) for i, prefix in enumerate(prefixes)]
    assert rids(dfs_weight_order(items)) == naive_dfs_weight(prefixes)


def test_dfs_weight_takes_a_long_chain_of_nested_prefixes_without_recursion() -> None:
    items = [(tuple(range(n)), n, request(n, [0], float(n))) for n in range(3000)]
    assert rids(dfs_weight_order(items)) == list(range(2999, -1, -1))


def test_priority_admits_larger_priority_first_then_by_arrival() -> None:
    waiting = [request(0, [1], 0.0, priority=0), request(1, [1], 1.0, priority=5), request(2, [1], 2.0, priority=-1),
               request(3, [1], 3.0, priority=5), request(4, [1], 4.0, priority=0)]  # fmt: skip
    assert rids(policy("priority").order(waiting, cache_holding())) == [1, 3, 0, 4, 2]


def test_priority_preempts_the_least_important_newest_request_and_others_the_newest() -> None:
    running = [request(0, [1], 0.0, priority=1), request(1, [1], 1.0, priority=0), request(2, [1], 2.0, priority=0),
               request(3, [1], 3.0, priority=2)]  # fmt: skip
    assert policy("priority").victim(running).rid == 2
    assert policy("fcfs").victim(running).rid == 3


def test_the_engine_admits_a_later_more_important_request_first(make_engine) -> None:
    engine = make_engine("cache=radix", "scheduler=priority", "scheduler.max_running=1")
    low = engine.add_request([5, 6, 7], SamplingParams(max_new_tokens=2, ignore_eos=True))
    high = engine.add_request([8, 9, 10], SamplingParams(max_new_tokens=2, ignore_eos=True, priority=3))
    engine.step()
    assert engine.built.scheduler.running == [high] and engine.built.scheduler.waiting == [low]
    while engine.core.has_work():
        engine.step()
    assert high.finished_s < low.finished_s


def test_a_priority_that_is_not_an_integer_is_a_request_error(make_engine) -> None:
    from moeframe.errors import RequestError

    with pytest.raises(RequestError, match="priority must be a 64-bit integer"):
        make_engine().add_request([5, 6], SamplingParams(priority=1.5))
