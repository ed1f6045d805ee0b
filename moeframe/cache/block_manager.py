"""Fixed-size KV blocks carved from the slot pool, with vLLM's hash-chained prefix caching.

A block is ``block_size`` consecutive slots taken from the pool at once
(vLLM's PagedAttention, Kwon et al., SOSP 2023). A full block can be
committed under a key chained over its parent's hash and its own tokens
(vLLM v1's prefix caching, also nano-vllm's ``BlockManager``), so equal
prefixes map to equal key chains whatever the request. Blocks carry a
reference count; a committed block nobody references stays cached until a
new block is needed and none is free, then goes in the eviction policy's
order (least recently used first by default, as vLLM's free queue), but
never while an unreferenced cached block continues it: a chain goes tail
first, as vLLM frees a request's blocks in reverse order, so no policy
strands a cached continuation behind an evicted prefix. (A continuation in
use does not hold its prefix: its request owns an equal copy of it.)

Keys keep the block's tokens, so two blocks are confused only when their
parents' 64-bit hashes collide, the risk vLLM accepts with its builtin hash.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from moeframe.cache.eviction.base import EvictionPolicy
from moeframe.cache.eviction.lru import LeastRecentlyUsed
from moeframe.cache.pool import KVPool
from moeframe.registry import NoParams

BlockKey = tuple[int, tuple[int, ...]]

# CPython's hash() never returns -1, so no block's hash equals the root's.
ROOT_HASH = -1


@dataclass(eq=False)
class Block:
    first_slot: int
    size: int
    ref_count: int = 0
    num_used: int = 0  # slots handed out so far, from first_slot up
    key: BlockKey | None = None  # set once committed to the prefix cache
    # what eviction ranks a cached block by (moeframe/cache/eviction), in the manager's ticks
    last_access: int = 0
    hit_count: int = 0
    created: int = 0
    priority: int = 0

    @property
    def slots(self) -> list[int]:
        return list(range(self.first_slot, self.first_slot + self.size))


def chain_keys(token_ids: list[int], block_size: int) -> Iterator[BlockKey]:
    """Keys of the full blocks of ``token_ids``, each chained over its parent's hash."""
    parent = ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        key = (parent, tuple(token_ids[start : start + block_size]))
        yield key
        parent = hash(key)


class BlockManager:
    def __init__(self, pool: KVPool, block_size: int, eviction: EvictionPolicy | None = None) -> None:
        self.pool = pool
        self.block_size = block_size
        self.num_blocks = pool.num_slots // block_size
        self.eviction = eviction or LeastRecentlyUsed(NoParams())
        self._clock = itertools.count(1)
        self._taken: dict[int, Block] = {}  # every block out of the pool, by first slot
        self._block_of_slot: dict[int, Block] = {}
        self._cached: dict[BlockKey, Block] = {}
        self._cached_by_hash: dict[int, Block] = {}
        self._evictable_children: dict[int, int] = {}  # evictable blocks continuing each cached block, by its key's hash
        self._evictable: dict[int, Block] = {}  # unreferenced cached blocks, by first slot
        # (eviction key, entry number, block): the evictable blocks; an entry is current while _entry_of names it
        self._heap: list[tuple[tuple[int, ...], int, Block]] = []
        self._entry_of: dict[int, int] = {}
        # Slots of running requests' blocks not handed out yet: held, neither free nor anyone's.
        self.num_reserved_slots = 0

    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks - len(self._taken)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def num_evictable_blocks(self) -> int:
        return len(self._evictable)

    def block_of(self, slot: int) -> Block | None:
        return self._block_of_slot.get(slot)

    def lookup(self, token_ids: list[int]) -> list[Block]:
        """The longest chain of cached blocks that starts ``token_ids``."""
        chain = []
        for key in chain_keys(token_ids, self.block_size):
            block = self._cached.get(key)
            if block is None:
                break
            chain.append(block)
        return chain

    def new_block(self) -> Block | None:
        """A fresh block referenced once, from the pool's free slots; None if none is free."""
        if self.num_free_blocks == 0:
            return None
        slots = self.pool.alloc_contiguous(self.block_size)
        if slots is None:
            return None
        block = Block(slots[0], self.block_size, ref_count=1)
        self._taken[block.first_slot] = block
        for slot in slots:
            self._block_of_slot[slot] = block
        self.num_reserved_slots += self.block_size
        return block

    def hand_out(self, block: Block, n: int) -> list[int]:
        """The block's next n unused slots."""
        start = block.first_slot + block.num_used
        block.num_used += n
        self.num_reserved_slots -= n
        return list(range(start, start + n))

    def take(self, block: Block, hit_priority: int | None = None) -> None:
        """One reference more; with ``hit_priority`` a prefix hit by a request of that priority."""
        block.ref_count += 1
        block.last_access = next(self._clock)
        if hit_priority is not None:
            block.hit_count += 1
            block.priority = max(block.priority, hit_priority)
        if block.ref_count == 1:
            self._evictable.pop(block.first_slot)
            self._lose_evictable_child(block.key[0])

    def drop(self, block: Block) -> None:
        """One reference fewer; at none a cached block becomes evictable, another goes back to the pool."""
        block.ref_count -= 1
        if block.ref_count > 0:
            return
        if block.key is not None:
            block.last_access = next(self._clock)
            self._evictable[block.first_slot] = block
            self._evictable_children[block.key[0]] = self._evictable_children.get(block.key[0], 0) + 1
            self._push(block)
        else:
            self.num_reserved_slots -= block.size - block.num_used
            self._give_back(block)

    def commit(self, block: Block, key: BlockKey, priority: int = 0) -> bool:
        """Cache a full block under ``key`` for a request of ``priority``; False when an equal block is cached already."""
        if key in self._cached:
            return False
        block.key = key
        block.created = block.last_access = next(self._clock)
        block.priority = priority
        self._cached[key] = block
        self._cached_by_hash[hash(key)] = block
        return True

    def evict_one(self) -> None:
        """Evict the smallest-keyed evictable block that no evictable block continues.

        One always exists while any block is evictable: follow evictable
        continuations from any evictable block to the last.
        """
        while self._heap:
            _, entry, block = heapq.heappop(self._heap)
            current = self._evictable.get(block.first_slot) is block and self._entry_of[block.first_slot] == entry
            if current and not self._evictable_children.get(hash(block.key)):
                break
        else:
            raise RuntimeError("evict_one with no evictable block")
        del self._evictable[block.first_slot]
        del self._cached[block.key]
        del self._cached_by_hash[hash(block.key)]
        self._lose_evictable_child(block.key[0])
        self._give_back(block)

    def _lose_evictable_child(self, parent_hash: int) -> None:
        """One evictable continuation fewer; a cached prefix left with none may be evicted again."""
        self._evictable_children[parent_hash] -= 1
        if self._evictable_children[parent_hash]:
            return
        del self._evictable_children[parent_hash]
        parent = self._cached_by_hash.get(parent_hash)
        if parent is not None and parent.ref_count == 0:
            self._push(parent)  # its earlier entry was passed over while a continuation was evictable

    def _push(self, block: Block) -> None:
        entry = next(self._clock)
        self._entry_of[block.first_slot] = entry
        heapq.heappush(self._heap, (self.eviction.key(block), entry, block))
        if len(self._heap) > 2 * len(self._evictable) + 64:
            # Entries of blocks taken again go stale; without evictions nothing pops them, so drop them here.
            self._heap = [(self.eviction.key(b), self._entry_of[b.first_slot], b) for b in self._evictable.values()]
            heapq.heapify(self._heap)

    def _give_back(self, block: Block) -> None:
        slots = block.slots
        self.pool.free(slots)
        self._entry_of.pop(block.first_slot, None)
        del self._taken[block.first_slot]
        for slot in slots:
            del self._block_of_slot[slot]
