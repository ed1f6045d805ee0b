"""The KV-cache interface: what the scheduler asks of a cache, whatever it keeps.

A cache owns the pool's allocation policy: ``match_prefix`` finds reusable
slots for a prompt and pins them, ``allocate`` hands out fresh slots for a
request (evicting unpinned cached entries when the pool runs short), and
``release`` takes a finished (or preempted) request's slots back, keeping
what it can reuse. A slot pinned by a running request is never evicted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from moeframe.cache.pool import KVPool


@dataclass
class PrefixMatch:
    """Slots of the longest reusable prefix of a prompt; ``handle`` unpins it on release."""

    slots: list[int] = field(default_factory=list)
    handle: Any = None

    @property
    def num_tokens(self) -> int:
        return len(self.slots)


@dataclass
class PoolParams:
    """Pool sizing every cache accepts: a slot count, or a fraction of free device memory."""

    max_tokens: int | None = None
    mem_fraction: float = 0.85

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 < self.mem_fraction <= 1:
            raise ValueError(f"mem_fraction must be in (0, 1], got {self.mem_fraction}")


@dataclass
class CacheStats:
    evicted_tokens: int = 0
    matched_tokens: int = 0
    queried_tokens: int = 0


class KVCache(ABC):
    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.stats = CacheStats()

    @abstractmethod
    def match_prefix(self, token_ids: list[int], priority: int = 0) -> PrefixMatch:
        """Longest cached prefix of ``token_ids``, pinned until ``release``: a reuse by a request of ``priority``.

        The match may cover all of ``token_ids``; a caller that needs the
        logits of the last token keeps only the first ``len - 1`` matched
        slots and recomputes the rest (``release`` accepts such a shorter
        ``slots`` list). A block cache may stop before the last token instead,
        so that the recomputed token keeps its offset in its block (paged).
        """

    @abstractmethod
    def allocate(self, owned: list[int], n: int) -> list[int] | None:
        """n new slots for a request that already holds ``owned``; None if the pool cannot give them."""

    @abstractmethod
    def release(self, token_ids: list[int], slots: list[int], match: PrefixMatch, cacheable: bool, priority: int = 0) -> None:
        """Take back a request's slots (``slots[i]`` holds the KV of ``token_ids[i]``).

        When ``cacheable``, the cache may keep them for reuse (ranked for
        eviction with the request's ``priority``); otherwise they return to the pool.
        """

    @abstractmethod
    def num_cached_tokens(self) -> int:
        """Slots the cache holds beyond running requests' own."""

    @abstractmethod
    def clear(self) -> None:
        """Drop every unpinned cached entry back to the pool."""

    def num_evictable_slots(self) -> int:
        return 0

    def can_allocate_free(self, owned: list[list[int]], n: int) -> bool:
        """Whether ``allocate(o, n)`` for every ``o`` in ``owned`` would be served by free slots, evicting nothing.

        The engine's overlapped decode schedules a step ahead only then. The
        default fits caches that hand out single slots from the pool.
        """
        return self.pool.num_free_slots >= n * len(owned)

    def cache_prefix(self, token_ids: list[int], slots: list[int], match: PrefixMatch, priority: int = 0) -> PrefixMatch:
        """Share a running request's computed KV now, not only when it ends (SGLang caches after prefill).

        Returns the request's new pinned match; its slots replace the
        request's first ``num_tokens`` slots (they hold the same KV). The
        default keeps nothing early.
        """
        return match

    def cached_prefix_len(self, token_ids: list[int]) -> int:
        """How many leading tokens a match would reuse, without pinning anything (for lpm)."""
        return 0
