"""``KVCache.can_allocate_free``: overlapped decode schedules ahead only when no eviction is needed.

Random request histories leave each cache with running requests and cached
entries; the query must say True exactly when allocating one more slot for
every running request succeeds without evicting anything.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeframe.cache import CACHES, KVCache, KVPool

CACHE_CHOICES = {
    "none": {"name": "none"},
    "radix": {"name": "radix"},
    "paged1": {"name": "paged", "block_size": 1},
    "paged4": {"name": "paged", "block_size": 4},
}

histories = st.lists(
    st.tuples(st.booleans(), st.lists(st.integers(0, 2), min_size=1, max_size=9), st.integers(0, 5)), min_size=1, max_size=8
)


def admit(cache: KVCache, tokens: list[int]) -> tuple[list[int], object] | None:
    match = cache.match_prefix(tokens)
    reuse = min(match.num_tokens, len(tokens) - 1)
    slots = list(match.slots[:reuse])
    fresh = cache.allocate(slots, len(tokens) - reuse)
    if fresh is None:
        cache.release(tokens[:reuse], slots, match, cacheable=True)
        return None
    return slots + fresh, match


@settings(max_examples=60, deadline=None)
@given(history=histories)
@pytest.mark.parametrize("choice", list(CACHE_CHOICES))
def test_can_allocate_free_is_true_exactly_when_one_slot_each_needs_no_eviction(choice, history):
    cache = CACHES.build(CACHE_CHOICES[choice], pool=KVPool(1, 24, 1, 1, 1, torch.float32, "cpu"))
    running = []
    for finish, tokens, grow in history:
        admitted = admit(cache, tokens)
        if admitted is None:
            continue
        slots, match = admitted
        for _ in range(grow):
            fresh = cache.allocate(slots, 1)
            if fresh is None:
                break
            slots.extend(fresh)
            tokens = tokens + [len(slots) % 3]
        if finish:
            cache.release(tokens[: len(slots)], slots, match, cacheable=True)
        else:
            running.append(slots)
    said = cache.can_allocate_free(running, 1)
    evicted = cache.stats.evicted_tokens
    served = all(cache.allocate(slots, 1) is not None for slots in running)
    assert said == (served and cache.stats.evicted_tokens == evicted)
