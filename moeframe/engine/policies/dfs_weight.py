"""DFS weight (SGLang's ``dfs-weight`` policy): admit requests that share a cached prefix together, the largest group first.

SGLang hangs each waiting request on the radix-tree node where its cached
prefix ends, weighs every node by the waiting requests in its subtree, and
walks the tree depth first, heavier children first, each node's own
requests after its children's. Here the tree is the trie of the waiting
requests' cached prefixes (``cache.cached_prefix_len``, so radix and paged
both serve it): a cached node no waiting request reaches weighs nothing and
orders nothing, so this trie orders them as the cache's tree would. Ties
between siblings go to the group whose first request arrived first, and a
node's own requests keep their arrival order; requests with nothing cached
come last.
"""

from __future__ import annotations

from collections.abc import Sequence

from moeframe.cache.base import KVCache
from moeframe.engine.policies import SCHEDULERS
from moeframe.engine.policies.base import SchedulerParams, SchedulingPolicy
from moeframe.engine.request import Request

# (cached prefix, arrival rank, request)
Item = tuple[Sequence[int], int, Request]


@SCHEDULERS.register("dfs_weight", params=SchedulerParams)
class DFSWeight(SchedulingPolicy):
    def __init__(self, params: SchedulerParams, **_: object) -> None:
        super().__init__(params)

    def order(self, waiting: list[Request], cache: KVCache) -> list[Request]:
        arrived = sorted(waiting, key=lambda r: (r.arrival_s, r.rid))
        items = [(r.all_ids[: cache.cached_prefix_len(r.all_ids)], rank, r) for rank, r in enumerate(arrived)]
        return dfs_weight_order(items)


def dfs_weight_order(items: list[Item]) -> list[Request]:
    """Post-order walk of the prefix trie of ``items``, heavier subtrees first (an explicit stack: no recursion limit)."""
    ordered: list[Request] = []
    stack: list[tuple[list[Item], int] | list[Request]] = [(items, 0)]
    while stack:
        top = stack.pop()
        if isinstance(top, list):
            ordered.extend(top)
            continue
        group, depth = top
        depth = branch_depth(group, depth)
        ends_here = [req for prefix, _, req in group if len(prefix) == depth]
        children: dict[int, list[Item]] = {}
        for item in group:
            if len(item[0]) > depth:
                children.setdefault(item[0][depth], []).append(item)
        stack.append(ends_here)
        for child in sorted(children.values(), key=lambda g: (len(g), -g[0][1])):  # lightest pushed first, popped last
            stack.append((child, depth + 1))
    return ordered


def branch_depth(group: list[Item], depth: int) -> int:
    """The first depth >= ``depth`` where a member's prefix ends or two members' prefixes differ."""
    first = group[0][0]
    end = min(len(prefix) for prefix, _, _ in group)
    while depth < end and all(prefix[depth] == first[depth] for prefix, _, _ in group):
        depth += 1
    return depth
