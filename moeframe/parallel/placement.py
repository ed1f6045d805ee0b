"""Which rank holds which expert, with EPLB-style replicas of the hottest experts.

The base placement gives rank r a contiguous block of experts (the first
``E % W`` ranks one more, so any E >= W works). Redundant experts follow
DeepSeek's EPLB (DeepSeek-V3 report, section 3.4): repeatedly take the
expert whose load per replica is highest and put one more replica of it on
the least-loaded rank that does not hold it yet; tokens of a replicated
expert are then split evenly between its replicas. Placement is per layer,
from recorded per-expert token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.parallel.tp_layers import shard_range


@dataclass(frozen=True)
class LayerPlacement:
    """``rank_experts[r]``: the expert of each of rank r's local slots (its block first, then replicas)."""

    num_experts: int
    rank_experts: tuple[tuple[int, ...], ...]

    @property
    def world_size(self) -> int:
        return len(self.rank_experts)

    @property
    def slots_per_rank(self) -> list[int]:
        return [len(experts) for experts in self.rank_experts]

    def replicas(self) -> list[list[int]]:
        """Per expert, the global slot ids (ranks' slots numbered rank after rank) that hold it."""
        out: list[list[int]] = [[] for _ in range(self.num_experts)]
        slot = 0
        for experts in self.rank_experts:
            for expert in experts:
                out[expert].append(slot)
                slot += 1
        return out

    def predicted_load(self, counts: torch.Tensor) -> list[float]:
        """Tokens each rank computes if replicas split their expert's tokens evenly."""
        num_replicas = [len(r) for r in self.replicas()]
        return [sum(float(counts[e]) / num_replicas[e] for e in experts) for experts in self.rank_experts]


def contiguous_placement(num_experts: int, world_size: int) -> LayerPlacement:
    blocks = (shard_range(num_experts, world_size, r) for r in range(world_size))
    return LayerPlacement(num_experts, tuple(tuple(range(lo, hi)) for lo, hi in blocks))


def add_redundant_experts(base: LayerPlacement, counts: torch.Tensor, num_redundant: int) -> LayerPlacement:
    """``base`` plus ``num_redundant`` replicas placed greedily by load (ties go to the lower id)."""
    rank_experts = [list(experts) for experts in base.rank_experts]
    num_replicas = [0] * base.num_experts
    for experts in rank_experts:
        for e in experts:
            num_replicas[e] += 1
    for _ in range(num_redundant):
        rank_load = [sum(float(counts[e]) / num_replicas[e] for e in experts) for experts in rank_experts]
        candidates = [e for e in range(base.num_experts) if num_replicas[e] < base.world_size]
        if not candidates:
            break
        hottest = max(candidates, key=lambda e: (float(counts[e]) / num_replicas[e], -e))
        free_ranks = [r for r, experts in enumerate(rank_experts) if hottest not in experts]
        target = min(free_ranks, key=lambda r: (rank_load[r], r))
        rank_experts[target].append(hottest)
        num_replicas[hottest] += 1
    return LayerPlacement(base.num_experts, tuple(tuple(experts) for experts in rank_experts))


def imbalance(loads: list[float]) -> float:
    """max / mean of per-rank loads (1 = balanced; 0 when nothing ran)."""
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 0.0


def placement_report(layer_idx: int, base: LayerPlacement, placed: LayerPlacement, counts: torch.Tensor) -> dict:
    before, after = base.predicted_load(counts), placed.predicted_load(counts)
    return {
        "layer": layer_idx,
        "rank_experts": [list(experts) for experts in placed.rank_experts],
        "predicted_load_before": before,
        "predicted_load_after": after,
        "imbalance_before": imbalance(before),
        "imbalance_after": imbalance(after),
    }
