"""Expert placement: contiguous uneven blocks, EPLB-style replicas, and the replica choice of each token."""

from __future__ import annotations

import itertools

import pytest
import torch

from moeframe.parallel.dispatch import SlotTables
from moeframe.parallel.placement import LayerPlacement, add_redundant_experts, contiguous_placement, imbalance


def test_contiguous_placement_gives_uneven_blocks_covering_every_expert_once() -> None:
    placed = contiguous_placement(num_experts=7, world_size=3)
    assert placed.rank_experts == ((0, 1, 2), (3, 4), (5, 6))


def test_predicted_load_splits_a_replicated_experts_tokens_evenly() -> None:
    placed = LayerPlacement(3, ((0, 1), (2, 0)))
    counts = torch.tensor([10.0, 4.0, 6.0])
    assert placed.predicted_load(counts) == [5.0 + 4.0, 6.0 + 5.0]


def brute_force_best_imbalance(base: LayerPlacement, counts: torch.Tensor, extra: int) -> float:
    """Smallest imbalance over every way to add ``extra`` replicas (each on a rank not holding that expert)."""
    options = [(e, r) for e in range(base.num_experts) for r in range(base.world_size) if e not in base.rank_experts[r]]
    best = imbalance(base.predicted_load(counts))
    for chosen in itertools.combinations(options, extra):
        ranks = [list(x) for x in base.rank_experts]
        for e, r in chosen:
            ranks[r].append(e)
        best = min(best, imbalance(LayerPlacement(base.num_experts, tuple(map(tuple, ranks))).predicted_load(counts)))
    return best


def test_redundant_replica_of_one_hot_expert_reaches_the_brute_force_optimum() -> None:
    base = contiguous_placement(4, 2)
    counts = torch.tensor([100.0, 10.0, 10.0, 10.0])
    placed = add_redundant_experts(base, counts, 1)
    assert placed.rank_experts == ((0, 1), (2, 3, 0))
    assert imbalance(placed.predicted_load(counts)) == brute_force_best_imbalance(base, counts, 1)


def test_redundant_experts_never_raise_predicted_imbalance() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        counts = torch.randint(0, 50, (6,), generator=g).double() ** 2
        base = contiguous_placement(6, 3)
        placed = add_redundant_experts(base, counts, 2)
        assert imbalance(placed.predicted_load(counts)) <= imbalance(base.predicted_load(counts)) + 1e-12
        assert sum(placed.slots_per_rank) == 8


def test_replicas_stop_once_every_rank_holds_the_expert() -> None:
    placed = add_redundant_experts(contiguous_placement(2, 2), torch.tensor([5.0, 1.0]), 5)
    assert sum(placed.slots_per_rank) == 4


def test_replicas_share_an_experts_tokens_round_robin_by_token() -> None:
    placed = LayerPlacement(2, ((0, 1), (0,)))  # expert 0 in global slots 0 and 2
    tables = SlotTables(placed, torch.device("cpu"))
    topk_ids = torch.tensor([[0, 1], [0, -1], [1, 0], [0, 1]])
    assert tables.slots_of(topk_ids).tolist() == [[0, 1], [2, -1], [1, 0], [2, 1]]


def load_key(placement: LayerPlacement, counts: torch.Tensor) -> tuple[float, float]:
    loads = placement.predicted_load(counts)
    return max(loads), sum(x * x for x in loads)


def test_one_replica_is_the_brute_force_best_single_addition() -> None:
    g = torch.Generator().manual_seed(1)
    for trial in range(30):
        num_experts, world = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(2, 4, (1,), generator=g))
        base = contiguous_placement(num_experts, world)
        counts = torch.randint(1, 100, (num_experts,), generator=g).double()
        keys = []
        for e in range(num_experts):
            for r in range(world):
                if e not in base.rank_experts[r]:
                    ranks = [list(x) for x in base.rank_experts]
                    ranks[r].append(e)
                    keys.append(load_key(LayerPlacement(num_experts, tuple(map(tuple, ranks))), counts))
        placed = add_redundant_experts(base, counts, 1)
        best = min(keys)
        if best < load_key(base, counts):
            assert load_key(placed, counts) == pytest.approx(best)
        else:
            assert placed == base
