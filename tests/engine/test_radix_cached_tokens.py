"""radix at the engine level: a request's cached_tokens is the longest prefix finished requests left in the tree.

A spy on the cache interface keeps a brute-force record of every sequence
released into the cache; with a pool too big for eviction, a prompt's match
must be the longest common whole-page prefix with any recorded sequence
(capped one token short of the prompt, whose last logits must be computed).
"""

from __future__ import annotations

import pytest
from engine_runs import ROOMY_POOL, run_workload

from moeframe.cache.base import PrefixMatch


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class InsertedRecord:
    """Every token sequence released into the cache, whole pages only, as the tree keeps them."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.sequences: list[list[int]] = []

    def aligned(self, n: int) -> int:
        return n - n % self.page_size

    def longest_prefix(self, token_ids: list[int]) -> int:
        return max((self.aligned(common_prefix_len(token_ids, s)) for s in self.sequences), default=0)


def spy_on(cache, record: InsertedRecord, expected: dict[tuple[int, ...], int]) -> None:
    match_prefix, release = cache.match_prefix, cache.release

    def spied_match(token_ids: list[int], priority: int = 0) -> PrefixMatch:
        expected.setdefault(tuple(token_ids), record.longest_prefix(token_ids))
        return match_prefix(token_ids, priority)

    def spied_release(token_ids: list[int], slots: list[int], match: PrefixMatch, cacheable: bool, priority: int = 0) -> None:
        if cacheable:
            record.sequences.append(list(token_ids[: record.aligned(len(token_ids))]))
        release(token_ids, slots, match, cacheable, priority)

    cache.match_prefix, cache.release = spied_match, spied_release


@pytest.mark.parametrize("page_size", [1, 4])
def test_cached_tokens_equal_longest_inserted_prefix(make_engine, page_size):
    engine = make_engine("cache=radix", f"cache.page_size={page_size}", *ROOMY_POOL)
    record, expected = InsertedRecord(page_size), {}
    spy_on(engine.built.cache, record, expected)
    requests = [r for name in ("few_shot", "multi_turn", "tree") for r in run_workload(engine, name).requests]
    assert engine.built.cache.stats.evicted_tokens == 0
    assert sum(r.cached_tokens for r in requests) > 0
    for req in requests:
        assert req.num_preemptions == 0
        assert req.cached_tokens == min(expected[tuple(req.prompt_ids)], len(req.prompt_ids) - 1)
