"""A radix tree over token ids whose edges carry the KV slots of their tokens.

The data structure of SGLang's RadixAttention (Zheng et al., 2024, "SGLang:
Efficient Execution of Structured Language Model Programs"): each node holds
a run of tokens and the slots of their KV; a prompt's longest cached prefix
is a walk from the root. Nodes carry a lock count (a running request pins
its matched path up to the root) and what an eviction policy ranks them by
(last access and creation ticks, hits, priority); eviction frees unlocked
leaves in the policy's order (least recently used first by default). With
``page_size`` > 1 tokens are
matched and stored in whole pages only, as SGLang's paged radix cache does.

The tree knows nothing of the pool: eviction hands the freed slots to a
callback, and insertion returns the caller's slots it did not keep.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Union

from moeframe.cache.eviction.base import EvictionPolicy
from moeframe.cache.eviction.lru import LeastRecentlyUsed
from moeframe.registry import NoParams

ChildKey = Union[int, tuple[int, ...]]


class TreeNode:
    __slots__ = ("children", "parent", "tokens", "slots", "lock_ref", "last_access", "hit_count", "created", "priority", "serial")

    def __init__(self, parent: TreeNode | None, tokens: list[int], slots: list[int], serial: int) -> None:
        self.children: dict[ChildKey, TreeNode] = {}
        self.parent = parent
        self.tokens = tokens
        self.slots = slots
        self.lock_ref = 0
        self.last_access = 0
        self.hit_count = 0
        self.created = 0
        self.priority = 0
        self.serial = serial


class RadixTree:
    def __init__(self, page_size: int = 1, eviction: EvictionPolicy | None = None) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.page_size = page_size
        self.eviction = eviction or LeastRecentlyUsed(NoParams())
        self._serials = itertools.count()
        self._clock = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Forget every node (the caller has already returned their slots)."""
        self.root = TreeNode(None, [], [], next(self._serials))
        # The root is locked for good: it is never a victim of eviction.
        self.root.lock_ref = 1
        self.evictable_size = 0
        self.protected_size = 0

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    def aligned_len(self, n: int) -> int:
        return n - n % self.page_size

    def _child_key(self, tokens: list[int], start: int) -> ChildKey:
        if self.page_size == 1:
            return tokens[start]
        return tuple(tokens[start : start + self.page_size])

    def _common_len(self, node_tokens: list[int], tokens: list[int], start: int, end: int) -> int:
        n = min(len(node_tokens), end - start)
        i = 0
        while i < n and node_tokens[i] == tokens[start + i]:
            i += 1
        return self.aligned_len(i)

    def _split(self, child: TreeNode, at: int) -> TreeNode:
        """Cut ``child`` after ``at`` tokens; the new upper node inherits its lock and what eviction ranks it by."""
        parent = child.parent
        upper = TreeNode(parent, child.tokens[:at], child.slots[:at], next(self._serials))
        upper.lock_ref = child.lock_ref
        upper.last_access, upper.hit_count, upper.created = child.last_access, child.hit_count, child.created
        upper.priority = child.priority
        child.tokens = child.tokens[at:]
        child.slots = child.slots[at:]
        child.parent = upper
        upper.children[self._child_key(child.tokens, 0)] = child
        parent.children[self._child_key(upper.tokens, 0)] = upper
        return upper

    def match(self, tokens: list[int], hit_priority: int | None = None) -> tuple[list[int], TreeNode]:
        """Slots of the longest cached whole-page prefix, and the node where it ends.

        Splits the last node when the prefix ends inside it, so the returned
        node covers exactly the match and can be locked on its own. With
        ``hit_priority`` the match is a request's reuse: each node on the path
        counts a hit and keeps the larger of its priority and the request's.
        """
        end = self.aligned_len(len(tokens))
        now = next(self._clock)
        node, pos = self.root, 0
        slots: list[int] = []
        while pos < end:
            child = node.children.get(self._child_key(tokens, pos))
            if child is None:
                break
            common = self._common_len(child.tokens, tokens, pos, end)
            if common < len(child.tokens):
                child = self._split(child, common)
            child.last_access = now
            if hit_priority is not None:
                child.hit_count += 1
                child.priority = max(child.priority, hit_priority)
            slots.extend(child.slots)
            node, pos = child, pos + common
        return slots, node

    def cached_len(self, tokens: list[int]) -> int:
        """Length of the longest cached prefix, touching nothing (no split, no access)."""
        end = self.aligned_len(len(tokens))
        node, pos = self.root, 0
        while pos < end:
            child = node.children.get(self._child_key(tokens, pos))
            if child is None:
                break
            common = self._common_len(child.tokens, tokens, pos, end)
            pos += common
            if common < len(child.tokens):
                break
            node = child
        return pos

    def insert(self, tokens: list[int], slots: list[int], priority: int = 0) -> list[int]:
        """Cache ``slots[i]`` as the KV of ``tokens[i]`` for the whole pages of ``tokens``, for a request of ``priority``.

        Where the tree already holds a token the tree's slot stays, and the
        caller's slot for it, if different, is returned for the caller to free
        (so is every slot past the last whole page).
        """
        if len(tokens) != len(slots):
            raise ValueError(f"insert needs one slot per token, got {len(tokens)} tokens and {len(slots)} slots")
        end = self.aligned_len(len(tokens))
        now = next(self._clock)
        node, pos = self.root, 0
        unused: list[int] = []
        while pos < end:
            key = self._child_key(tokens, pos)
            child = node.children.get(key)
            if child is None:
                leaf = TreeNode(node, tokens[pos:end], slots[pos:end], next(self._serials))
                leaf.last_access = leaf.created = now
                leaf.priority = priority
                node.children[key] = leaf
                self.evictable_size += end - pos
                pos = end
                break
            common = self._common_len(child.tokens, tokens, pos, end)
            if common < len(child.tokens):
                child = self._split(child, common)
            child.last_access = now
            child.priority = max(child.priority, priority)
            unused.extend(mine for mine, kept in zip(slots[pos : pos + common], child.slots) if mine != kept)
            node, pos = child, pos + common
        unused.extend(slots[end:])
        return unused

    def lock(self, node: TreeNode) -> None:
        """Pin ``node`` and its ancestors against eviction."""
        while node is not self.root:
            if node.lock_ref == 0:
                self.evictable_size -= len(node.tokens)
                self.protected_size += len(node.tokens)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                raise RuntimeError("unlock of a radix node that is not locked")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.protected_size -= len(node.tokens)
                self.evictable_size += len(node.tokens)
            node = node.parent

    def _unlocked_leaves(self) -> list[TreeNode]:
        leaves, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node.lock_ref == 0:
                leaves.append(node)
        return leaves

    def evict(self, num_tokens: int, free: Callable[[list[int]], None]) -> int:
        """Free unlocked leaves, smallest eviction key first, until ``num_tokens`` are gone; returns tokens freed.

        Whole nodes go, so a little more than asked may be freed (as in SGLang).
        """
        heap = [(self.eviction.key(leaf), leaf.serial, leaf) for leaf in self._unlocked_leaves()]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            free(leaf.slots)
            freed += len(leaf.tokens)
            self.evictable_size -= len(leaf.tokens)
            parent = leaf.parent
            del parent.children[self._child_key(leaf.tokens, 0)]
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (self.eviction.key(parent), parent.serial, parent))
        return freed
