"""Which rank holds which expert, with EPLB-style replicas of the hottest experts.

The base placement gives rank r a contiguous block of experts (the first
``E % W`` ranks one more, so any E >= W works). Redundant experts follow
DeepSeek's EPLB (DeepSeek-V3 report, section 3.4), greedily: each replica
goes where it lowers the predicted per-rank load most (the base blocks stay,
so no expert's weights move), and tokens of a replicated expert are split
evenly between its replicas. Placement is per layer, from recorded
per-expert token counts.
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
    """``base`` plus up to ``num_redundant`` replicas, each the (expert, rank) pair that most lowers the load.

    A replica is added only while it strictly lowers the predicted (max, sum
    of squares) of per-rank loads, so the placement never gets worse than
    ``base``; ties go to the lower expert id, then the lower rank. Every
    candidate pair is scored at once on an [E, W] grid.
    """
    counts = counts.double()
    held = torch.zeros(base.num_experts, base.world_size, dtype=torch.bool)
    for rank, experts in enumerate(base.rank_experts):
        held[list(experts), rank] = True
    rank_experts = [list(experts) for experts in base.rank_experts]
    for _ in range(num_redundant):
        num_replicas = held.sum(dim=1).double()
        loads = (held.double() * (counts / num_replicas)[:, None]).sum(dim=0)  # [W]
        new_share = counts / (num_replicas + 1)  # [E] each replica's load after one more
        # [E, W]: every rank's load after expert e gets one more replica, before adding the new one
        after = loads[None, :] - held.double() * (counts / num_replicas - new_share)[:, None]
        top2 = after.topk(min(2, base.world_size), dim=1).values
        is_top = after == top2[:, :1]
        other_max = torch.where(is_top, top2[:, -1:], top2[:, :1]) if base.world_size > 1 else torch.zeros_like(after)
        gained = after + new_share[:, None]
        new_max = torch.maximum(other_max, gained)
        new_sum_sq = (after**2).sum(dim=1, keepdim=True) - after**2 + gained**2
        new_max[held | (counts == 0)[:, None]] = float("inf")
        best_max = new_max.min()
        ties = new_max == best_max
        best_sum_sq = torch.where(ties, new_sum_sq, float("inf")).min()
        if not (best_max < loads.max() or (best_max == loads.max() and best_sum_sq < (loads**2).sum() * (1 - 1e-12))):
            break
        expert, rank = (ties & (new_sum_sq == best_sum_sq)).nonzero()[0].tolist()
        held[expert, rank] = True
        rank_experts[rank].append(expert)
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
