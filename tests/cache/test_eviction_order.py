"""Each eviction policy frees cached entries in the order it promises, on hand-made radix trees and block chains."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from moeframe.cache import CACHES, KVPool
from moeframe.cache.block_manager import BlockManager, chain_keys
from moeframe.cache.eviction import EVICTIONS
from moeframe.cache.radix_tree import RadixTree
from moeframe.errors import ConfigError

# Three cached entries X, Y, Z (created in that order, priorities 2, 0, 1), then reused:
# Z three times, Y once by a request of priority 3, X once, last. So
#   last access  Z < Y < X      hits  X = Y = 1 < Z = 3      created  X < Y < Z      priority  Z 1 < X 2 < Y 3
EXPECTED = {
    "lru": ["Z", "Y", "X"],  # least recently used
    "lfu": ["Y", "X", "Z"],  # fewest hits, then least recently used
    "fifo": ["X", "Y", "Z"],  # first cached
    "priority": ["Z", "X", "Y"],  # lowest priority, then least recently used
}
ENTRIES = {"X": ([1, 1], 2), "Y": ([2, 2], 0), "Z": ([3, 3], 1)}
REUSES = [("Z", 0), ("Z", 0), ("Z", 0), ("Y", 3), ("X", 0)]


def policy(name: str):
    return EVICTIONS.build({"name": name})


def test_every_policy_is_tested() -> None:
    assert sorted(EXPECTED) == EVICTIONS.names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_radix_tree_evicts_leaves_in_the_policys_order(name: str) -> None:
    tree = RadixTree(eviction=policy(name))
    first_slot = {}
    for label, (tokens, priority) in ENTRIES.items():
        first_slot[tokens[0] * 10] = label
        tree.insert(tokens, [tokens[0] * 10, tokens[0] * 10 + 1], priority)
    for label, priority in REUSES:
        tree.match(ENTRIES[label][0], hit_priority=priority)
    order = []
    while tree.evictable_size:
        freed: list[int] = []
        tree.evict(1, freed.extend)
        order.append(first_slot[freed[0]])
    assert order == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_block_manager_evicts_blocks_in_the_policys_order(name: str, make_pool: Callable[[int], KVPool]) -> None:
    blocks = BlockManager(make_pool(16), 2, policy(name))
    cached = {}
    for label, (tokens, priority) in ENTRIES.items():
        block = blocks.new_block()
        blocks.hand_out(block, 2)
        blocks.commit(block, next(chain_keys(tokens, 2)), priority)
        blocks.drop(block)
        cached[label] = tokens
    for label, priority in REUSES:
        [block] = blocks.lookup(ENTRIES[label][0])
        blocks.take(block, hit_priority=priority)
        blocks.drop(block)
    order = []
    while blocks.num_evictable_blocks:
        blocks.evict_one()
        gone = [label for label, tokens in cached.items() if not blocks.lookup(tokens)]
        order.append(gone[0])
        del cached[gone[0]]
    assert order == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_prefix_outlives_its_continuations_under_every_policy(name: str, make_pool: Callable[[int], KVPool]) -> None:
    """fifo would take the oldest entry, the shared prefix P, first: only entries nothing cached extends may go."""
    tree = RadixTree(eviction=policy(name))
    tree.insert([1, 2], [10, 11])  # P
    tree.insert([5, 6], [50, 51])  # R
    tree.insert([1, 2, 3, 4], [10, 11, 30, 31])  # Q extends P
    tree.match([1, 2, 3, 4], hit_priority=0)
    order = []
    while tree.evictable_size:
        freed: list[int] = []
        tree.evict(1, freed.extend)
        order.append(freed[0])
    assert order.index(10) > order.index(30)

    blocks = BlockManager(make_pool(16), 2, policy(name))
    chain = []
    for key in chain_keys([1, 2, 3, 4], 2):
        block = blocks.new_block()
        blocks.hand_out(block, 2)
        blocks.commit(block, key)
        chain.append(block)
        if len(chain) == 1:  # R is cached between P and Q
            other = blocks.new_block()
            blocks.hand_out(other, 2)
            blocks.commit(other, next(chain_keys([5, 6], 2)))
            blocks.drop(other)
    for block in chain:  # a request ending lets go of its head first: P becomes evictable before Q
        blocks.drop(block)
    blocks.evict_one()
    blocks.evict_one()
    assert len(blocks.lookup([1, 2, 3, 4])) == 1  # Q went, P stayed
    assert blocks.num_evictable_blocks == 1


# 12 slots; each prompt leaves 5 tokens cached (radix) or 2 full blocks of 2 (paged), so one more
# request of ``need`` slots evicts exactly one of the two prompts.
CACHES_UNDER_TEST = [({"name": "radix"}, 4), ({"name": "paged", "block_size": 2}, 8)]


@pytest.mark.parametrize(("cache_params", "need"), CACHES_UNDER_TEST, ids=["radix", "paged"])
def test_priority_eviction_keeps_the_prefix_of_the_more_important_request(
    cache_params: dict, need: int, make_pool: Callable[[int], KVPool]
) -> None:
    """Through the KVCache interface: the older, important prompt survives where lru drops it."""
    survivors = {}
    for eviction in ("lru", "priority"):
        cache = CACHES.build({**cache_params, "eviction": eviction}, pool=make_pool(12))
        for tokens, priority in (([1, 2, 3, 4, 9], 5), ([5, 6, 7, 8, 9], 0)):
            match = cache.match_prefix(tokens, priority)
            slots = match.slots + cache.allocate(match.slots, len(tokens) - match.num_tokens)
            cache.release(tokens, slots, match, cacheable=True, priority=priority)
        assert cache.allocate([], need) is not None
        survivors[eviction] = [cache.cached_prefix_len(t + [0]) == 4 for t in ([1, 2, 3, 4], [5, 6, 7, 8])]
    assert survivors == {"lru": [False, True], "priority": [True, False]}


def test_an_unknown_eviction_policy_is_refused_naming_the_valid_ones(make_pool: Callable[[int], KVPool]) -> None:
    with pytest.raises(ConfigError, match="eviction must be one of fifo, lfu, lru, priority, got 'lifo'"):
        CACHES.build({"name": "paged", "eviction": "lifo"}, pool=make_pool(8))


def test_the_eviction_queue_stays_bounded_when_nothing_is_evicted(make_pool: Callable[[int], KVPool]) -> None:
    """A server with a roomy pool takes and lets go of the same cached blocks forever: its queue must not grow."""
    blocks = BlockManager(make_pool(16), 2)
    block = blocks.new_block()
    blocks.hand_out(block, 2)
    blocks.commit(block, next(chain_keys([1, 2], 2)))
    blocks.drop(block)
    for _ in range(1000):
        blocks.take(block, hit_priority=0)
        blocks.drop(block)
    assert len(blocks._heap) <= 2 * blocks.num_evictable_blocks + 64
    blocks.evict_one()
    assert blocks.lookup([1, 2]) == [] and blocks.num_evictable_blocks == 0
