"""Expert capacity: how many assignments an expert takes in one batch, and which it drops.

The capacity rule is GShard's and Switch Transformer's (Lepikhin et al., 2020;
Fedus et al., 2021): C = ceil(capacity_factor * T * k / E); assignments past
C are dropped (id -1, weight 0) and the token keeps its other experts (and its
residual path). Dropping makes a token's output depend on its batch-mates.
"""

from __future__ import annotations

import math

import torch

from moeframe.routers.plan import RoutingPlan


def expert_capacity(factor: float, num_tokens: int, k: int, num_experts: int) -> int:
    # rounding first keeps an exact product such as 2.5 * 1.2 from ceiling up to 4
    return math.ceil(round(factor * num_tokens * k / num_experts, 9))


def gshard_priority(num_tokens: int, k: int, device: torch.device) -> torch.Tensor:
    """[T, k] serving order of GShard: every token's first choice by position, then the second choices, ..."""
    rank = torch.arange(k, device=device).expand(num_tokens, k)
    position = torch.arange(num_tokens, device=device).unsqueeze(1)
    return rank * num_tokens + position


def keep_within_capacity(ids: torch.Tensor, priority: torch.Tensor, capacity: int, num_experts: int) -> torch.Tensor:
    """Kept mask [T, k]: each expert keeps its ``capacity`` assignments of lowest ``priority``.

    Ties in ``priority`` go to the earlier assignment in row-major order.
    """
    flat_ids = ids.flatten()
    n = flat_ids.numel()
    service_rank = torch.empty(n, dtype=torch.long, device=ids.device)
    service_rank[torch.sort(priority.flatten(), stable=True).indices] = torch.arange(n, device=ids.device)
    # dropped ids form group E, which keeps nothing
    group = torch.where(flat_ids >= 0, flat_ids, num_experts)
    grouped = torch.argsort(group * n + service_rank)
    # scatter_add_, unlike bincount, needs no device sync (so CUDA graphs can capture it)
    group_sizes = torch.zeros(num_experts + 1, dtype=torch.long, device=ids.device).scatter_add_(0, group, torch.ones_like(group))
    group_starts = torch.cumsum(group_sizes, 0) - group_sizes
    sorted_group = group[grouped]
    rank_in_group = torch.arange(n, device=ids.device) - group_starts[sorted_group]
    kept = torch.empty(n, dtype=torch.bool, device=ids.device)
    kept[grouped] = (rank_in_group < capacity) & (sorted_group < num_experts)
    return kept.view_as(ids)


def drop_assignments(plan: RoutingPlan, kept: torch.Tensor) -> RoutingPlan:
    """The plan with every assignment outside ``kept`` marked dropped."""
    kept = kept & plan.kept
    return RoutingPlan(
        topk_ids=torch.where(kept, plan.topk_ids, -1),
        topk_weights=torch.where(kept, plan.topk_weights, 0.0),
    )
