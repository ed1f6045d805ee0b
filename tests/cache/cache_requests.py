"""One whole request against a cache, as the scheduler drives it: shared by the paged and radix tests."""

from __future__ import annotations

from moeframe.cache import KVCache


def run_request(cache: KVCache, tokens: list[int], cacheable: bool = True) -> list[int]:
    """Match, allocate the rest, release: one whole request; returns its slots."""
    match = cache.match_prefix(tokens)
    fresh = cache.allocate(match.slots, len(tokens) - match.num_tokens)
    assert fresh is not None
    slots = match.slots + fresh
    cache.release(tokens, slots, match, cacheable)
    return slots
