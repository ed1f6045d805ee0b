"""cache=paged: vLLM-style fixed-size blocks, with hash-based reuse of full blocks.

A request's slots come in blocks of ``block_size`` consecutive slots (its
slot list is its block table written out token by token): ``allocate`` fills
the request's last block before it takes a new one. With ``prefix_reuse``,
a released request's full blocks are committed under hash-chained keys and
a later prompt reuses its longest chain of cached blocks short of its last
token (vLLM v1's automatic prefix caching), so a request's slot list stays
aligned with its blocks; unreferenced cached blocks are evicted in the
order of ``eviction`` (lru, lfu, fifo, priority: moeframe/cache/eviction),
a block only once no cached block continues it, so a chain goes tail first,
as vLLM frees a request's blocks in reverse order. Without it, blocks go back
to the pool on release.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeframe.cache import CACHES
from moeframe.cache.base import KVCache, PoolParams, PrefixMatch
from moeframe.cache.block_manager import Block, BlockManager, chain_keys
from moeframe.cache.eviction import EVICTIONS, check_eviction
from moeframe.cache.pool import KVPool


@dataclass
class PagedParams(PoolParams):
    block_size: int = 16
    prefix_reuse: bool = True
    eviction: str = "lru"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        check_eviction(self.eviction)


@CACHES.register("paged", params=PagedParams)
class PagedCache(KVCache):
    def __init__(self, params: PagedParams, pool: KVPool, **_: object) -> None:
        super().__init__(pool)
        if params.block_size > pool.num_slots:
            raise ValueError(f"block_size {params.block_size} exceeds the pool's {pool.num_slots} slots")
        self.block_size = params.block_size
        self.prefix_reuse = params.prefix_reuse
        self.blocks = BlockManager(pool, params.block_size, EVICTIONS.build({"name": params.eviction}))

    def match_prefix(self, token_ids: list[int], priority: int = 0) -> PrefixMatch:
        """The cached blocks over all but the last token (vLLM v1 caps a hit at ``num_tokens - 1`` likewise).

        The caller recomputes the last token for its logits. Were its block
        matched, the request would list that block but for one slot and
        write the last token at the start of a fresh block, off its place
        in the block: none of the request's later blocks could be committed,
        and ``cache_prefix`` swapping the cached block back in would strand
        the fresh block's first slot, held but nobody's, until release.
        Matching only whole blocks before the last token recomputes up to a
        block instead of one token and keeps every block in place.
        """
        self.stats.queried_tokens += len(token_ids)
        if not self.prefix_reuse:
            return PrefixMatch(handle=[])
        chain = self.blocks.lookup(token_ids[:-1])
        slots: list[int] = []
        for block in chain:
            self.blocks.take(block, hit_priority=priority)
            slots.extend(block.slots)
        self.stats.matched_tokens += len(slots)
        return PrefixMatch(slots, chain)

    def _tail_block(self, owned: list[int]) -> Block | None:
        """The request's own last block, if it has room right after its last slot."""
        if not owned:
            return None
        block = self.blocks.block_of(owned[-1])
        if block is None or block.key is not None or block.ref_count != 1:
            return None
        if owned[-1] != block.first_slot + block.num_used - 1 or block.num_used == block.size:
            return None
        return block

    def allocate(self, owned: list[int], n: int) -> list[int] | None:
        tail = self._tail_block(owned)
        from_tail = min(n, tail.size - tail.num_used) if tail else 0
        rest = n - from_tail
        need = -(-rest // self.block_size)
        if need > self.blocks.num_free_blocks + self.blocks.num_evictable_blocks:
            return None
        while self.blocks.num_free_blocks < need:
            self.blocks.evict_one()
            self.stats.evicted_tokens += self.block_size
        fresh: list[Block] = []
        for _ in range(need):
            block = self.blocks.new_block()
            if block is None:
                # The pool's free slots are fragmented by some other user: give back and fail cleanly.
                for taken in fresh:
                    self.blocks.drop(taken)
                return None
            fresh.append(block)
        slots = self.blocks.hand_out(tail, from_tail) if from_tail else []
        for block in fresh:
            slots.extend(self.blocks.hand_out(block, min(self.block_size, n - len(slots))))
        return slots

    def release(self, token_ids: list[int], slots: list[int], match: PrefixMatch, cacheable: bool, priority: int = 0) -> None:
        if len(token_ids) != len(slots):
            raise ValueError(f"release needs one slot per token, got {len(token_ids)} tokens and {len(slots)} slots")
        lent: list[Block] = match.handle or []
        seen = {id(block) for block in lent}
        own: list[Block] = []
        for slot in slots:
            block = self.blocks.block_of(slot)
            if block is None:
                raise ValueError(f"slot {slot} is in no block of this cache")
            if id(block) not in seen:
                seen.add(id(block))
                own.append(block)
        if cacheable and self.prefix_reuse:
            self._commit_full_blocks(token_ids, slots, priority)
        for block in reversed(lent + own):
            self.blocks.drop(block)

    def cache_prefix(self, token_ids: list[int], slots: list[int], match: PrefixMatch, priority: int = 0) -> PrefixMatch:
        """Full blocks become reusable as soon as they are computed (vLLM caches a block once it fills).

        The returned match is the chain of cached blocks over ``token_ids``:
        the request's own blocks just committed, and cached equals of its
        blocks committed by another request first (its copies go back to
        the pool, as radix frees duplicate slots). The request's reference
        moves to the chain; a block it still uses past the chain keeps it.
        """
        if not self.prefix_reuse:
            return match
        self._commit_full_blocks(token_ids, slots, priority)
        chain = self.blocks.lookup(token_ids)
        covered = self.block_size * len(chain)
        lent: list[Block] = match.handle or []
        held = {id(block): block for block in lent}
        still_used = {id(self.blocks.block_of(slot)) for slot in slots[covered:]}
        for slot in slots[:covered]:
            block = self.blocks.block_of(slot)
            if id(block) not in still_used:
                held.setdefault(id(block), block)
        for block in chain:
            self.blocks.take(block)
        for block in held.values():
            self.blocks.drop(block)
        return PrefixMatch([slot for block in chain for slot in block.slots], chain)

    def _commit_full_blocks(self, token_ids: list[int], slots: list[int], priority: int) -> None:
        size = self.block_size
        for i, key in enumerate(chain_keys(token_ids, size)):
            block = self.blocks.block_of(slots[i * size])
            if block is None or block.key is not None or block.ref_count != 1 or block.num_used != size:
                continue
            if slots[i * size : (i + 1) * size] == block.slots:
                self.blocks.commit(block, key, priority)

    def num_cached_tokens(self) -> int:
        """Slots in cached blocks, plus the not yet used tail of running requests' last blocks."""
        return self.block_size * self.blocks.num_cached_blocks + self.blocks.num_reserved_slots

    def num_evictable_slots(self) -> int:
        return self.block_size * self.blocks.num_evictable_blocks

    def can_allocate_free(self, owned: list[list[int]], n: int) -> bool:
        """Whether the requests' own tail blocks and the free blocks hold n slots each, evicting nothing."""
        need = 0
        for slots in owned:
            tail = self._tail_block(slots)
            rest = n - (min(n, tail.size - tail.num_used) if tail else 0)
            need += -(-rest // self.block_size)
        return need <= self.blocks.num_free_blocks

    def cached_prefix_len(self, token_ids: list[int]) -> int:
        if not self.prefix_reuse:
            return 0
        return self.block_size * len(self.blocks.lookup(token_ids[:-1]))

    def clear(self) -> None:
        while self.blocks.num_evictable_blocks:
            self.blocks.evict_one()
