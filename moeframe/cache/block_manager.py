"""Fixed-size KV blocks carved from the slot pool, with vLLM's hash-chained prefix caching.

A block is ``block_size`` consecutive slots taken from the pool at once
(vLLM's PagedAttention, Kwon et al., SOSP 2023). A full block can be
committed under a key chained over its parent's hash and its own tokens
(vLLM v1's prefix caching, also nano-vllm's ``BlockManager``), so equal
prefixes map to equal key chains whatever the request. Blocks carry a
reference count; a committed block nobody references stays cached in an
LRU queue until a new block is needed and none is free.

Keys keep the block's tokens, so two blocks are confused only when their
parents' 64-bit hashes collide, the risk vLLM accepts with its builtin hash.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from moeframe.cache.pool import KVPool

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
    def __init__(self, pool: KVPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self.num_blocks = pool.num_slots // block_size
        self._taken: dict[int, Block] = {}  # every block out of the pool, by first slot
        self._block_of_slot: dict[int, Block] = {}
        self._cached: dict[BlockKey, Block] = {}
        self._evictable: OrderedDict[int, Block] = OrderedDict()  # unreferenced cached blocks, oldest first
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

    def take(self, block: Block) -> None:
        block.ref_count += 1
        if block.ref_count == 1:
            self._evictable.pop(block.first_slot)

    def drop(self, block: Block) -> None:
        """One reference fewer; at none a cached block waits in the LRU queue, another goes back to the pool."""
        block.ref_count -= 1
        if block.ref_count > 0:
            return
        if block.key is not None:
            self._evictable[block.first_slot] = block
        else:
            self.num_reserved_slots -= block.size - block.num_used
            self._give_back(block)

    def commit(self, block: Block, key: BlockKey) -> bool:
        """Cache a full block under ``key``; False when an equal block is cached already."""
        if key in self._cached:
            return False
        block.key = key
        self._cached[key] = block
        return True

    def evict_oldest(self) -> None:
        _, block = self._evictable.popitem(last=False)
        del self._cached[block.key]
        self._give_back(block)

    def _give_back(self, block: Block) -> None:
        slots = block.slots
        self.pool.free(slots)
        del self._taken[block.first_slot]
        for slot in slots:
            del self._block_of_slot[slot]
