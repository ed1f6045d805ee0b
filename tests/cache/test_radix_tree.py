"""The radix tree on its own: matching, splitting, insertion, locks, LRU eviction, pages."""

from __future__ import annotations

from moeframe.cache.radix_tree import RadixTree


def evict_all_unlocked(tree: RadixTree) -> list[int]:
    freed: list[int] = []
    tree.evict(tree.evictable_size, freed.extend)
    return freed


def test_match_returns_the_slots_of_the_longest_inserted_prefix() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], [10, 11, 12, 13])
    tree.insert([1, 2, 7], [10, 11, 20])
    slots, _ = tree.match([1, 2, 7, 9])
    assert slots == [10, 11, 20]
    assert tree.match([5])[0] == []


def test_match_ending_inside_an_edge_splits_it_so_only_the_match_is_locked() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], [10, 11, 12, 13])
    slots, node = tree.match([1, 2, 9])
    assert slots == [10, 11]
    tree.lock(node)
    assert (tree.protected_size, tree.evictable_size) == (2, 2)
    assert evict_all_unlocked(tree) == [12, 13]
    assert tree.cached_len([1, 2, 3, 4]) == 2


def test_insert_keeps_cached_slots_and_returns_the_callers_duplicates() -> None:
    tree = RadixTree()
    assert tree.insert([1, 2, 3], [10, 11, 12]) == []
    assert tree.insert([1, 2, 3, 4, 5], [10, 30, 31, 32, 33]) == [30, 31]
    assert tree.match([1, 2, 3, 4, 5])[0] == [10, 11, 12, 32, 33]
    assert tree.total_size == 5


def test_eviction_takes_the_least_recently_used_leaf_first() -> None:
    tree = RadixTree()
    tree.insert([1, 2], [10, 11])
    tree.insert([3, 4], [12, 13])
    tree.insert([5, 6], [14, 15])
    tree.match([1, 2])  # [3, 4] is now the oldest
    freed: list[int] = []
    assert tree.evict(1, freed.extend) == 2
    assert freed == [12, 13]
    assert tree.evict(1, freed.extend) == 2
    assert freed == [12, 13, 14, 15]


def test_a_parent_left_childless_by_eviction_becomes_a_victim_in_turn() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3], [10, 11, 12])
    tree.insert([1, 2, 4], [10, 11, 13])  # splits into [1, 2] -> {[3], [4]}
    tree.insert([9], [14])  # newest, must outlive the whole [1, 2] subtree
    freed: list[int] = []
    assert tree.evict(4, freed.extend) == 4
    assert sorted(freed) == [10, 11, 12, 13]
    assert tree.cached_len([9]) == 1


def test_a_locked_path_survives_eviction_of_everything_else() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3], [10, 11, 12])
    tree.insert([4, 5], [13, 14])
    _, node = tree.match([1, 2, 3])
    tree.lock(node)
    freed: list[int] = []
    assert tree.evict(100, freed.extend) == 2
    assert freed == [13, 14]
    assert tree.match([1, 2, 3])[0] == [10, 11, 12]
    tree.unlock(node)
    assert tree.evictable_size == 3


def test_locks_count_per_holder_and_release_at_the_last_unlock() -> None:
    tree = RadixTree()
    tree.insert([1, 2], [10, 11])
    _, node = tree.match([1, 2])
    tree.lock(node)
    tree.lock(node)
    tree.unlock(node)
    assert (tree.protected_size, tree.evictable_size) == (2, 0)
    tree.unlock(node)
    assert (tree.protected_size, tree.evictable_size) == (0, 2)


def test_cached_len_neither_splits_nor_refreshes_age() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3], [10, 11, 12])
    tree.insert([4], [13])
    assert tree.cached_len([1, 2, 9]) == 2
    freed: list[int] = []
    tree.evict(1, freed.extend)
    assert freed == [10, 11, 12]  # one whole node, still the oldest


def test_pages_cache_and_match_whole_pages_only() -> None:
    tree = RadixTree(page_size=3)
    assert tree.insert([1, 2, 3, 4, 5, 6, 7], [10, 11, 12, 13, 14, 15, 16]) == [16]
    assert tree.total_size == 6
    assert tree.match([1, 2, 3, 4, 5])[0] == [10, 11, 12]
    assert tree.match([1, 2, 3, 4, 9, 9])[0] == [10, 11, 12]
    assert tree.match([1, 2, 3, 4, 5, 6, 7])[0] == [10, 11, 12, 13, 14, 15]


def test_pages_split_only_at_page_boundaries() -> None:
    tree = RadixTree(page_size=2)
    tree.insert([1, 2, 3, 4, 5, 6], [10, 11, 12, 13, 14, 15])
    assert tree.insert([1, 2, 3, 9, 5, 6], [10, 11, 20, 21, 22, 23]) == []
    assert tree.total_size == 10
    assert tree.match([1, 2, 3, 9])[0] == [10, 11, 20, 21]
