"""KV caches (registry "cache"): none, radix (RadixAttention), paged (PagedAttention)."""

from moeframe.cache.base import KVCache, PrefixMatch
from moeframe.cache.pool import KVPool
from moeframe.registry import Registry, import_components

CACHES: Registry[KVCache] = Registry("cache")

__all__ = ["CACHES", "KVCache", "KVPool", "PrefixMatch"]

import_components(__name__, __path__)
