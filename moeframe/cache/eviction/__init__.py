"""Cache eviction policies (registry "eviction"): which unpinned cached entry goes first when the pool runs short.

The radix and paged caches take one by name (``cache.eviction``); both evict
only entries nothing cached extends (a radix leaf, a block no cached block
continues), so a prefix never goes before its continuations. SGLang offers
the same four (``--radix-eviction-policy``, mem_cache/evict_policy.py).
"""

from moeframe.cache.eviction.base import CacheEntry, EvictionPolicy
from moeframe.registry import Registry, import_components

EVICTIONS: Registry[EvictionPolicy] = Registry("eviction")


def check_eviction(name: str) -> None:
    """Refuse an eviction name no policy registers (a cache's params call it)."""
    if name not in EVICTIONS.names():
        raise ValueError(f"eviction must be one of {', '.join(EVICTIONS.names())}, got '{name}'")


__all__ = ["EVICTIONS", "CacheEntry", "EvictionPolicy", "check_eviction"]

import_components(__name__, __path__)
