"""The expert-load accumulate kernel against the torch accumulate (the CPU path), exact counts."""

from __future__ import annotations

import pytest
import torch

from moeframe.telemetry.expert_load import accumulate, accumulate_fused


def counters(num_experts: int, device: torch.device | str) -> list[torch.Tensor]:
    """counts [E], dropped, tokens, unrouted [1], all int64 zeros."""
    return [torch.zeros(num_experts, dtype=torch.long, device=device)] + [
        torch.zeros(1, dtype=torch.long, device=device) for _ in range(3)
    ]


def random_ids(num_tokens: int, columns: int, num_experts: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_experts, (num_tokens, columns), generator=generator)
    return ids.masked_fill(torch.rand(num_tokens, columns, generator=generator) < 0.3, -1)


def assert_same_counters(fused: list[torch.Tensor], reference: list[torch.Tensor]) -> None:
    for got, expected in zip(fused, reference, strict=True):
        assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("num_tokens", [1, 3, 37])
@pytest.mark.parametrize("k", [1, 2, 6, 8])
@pytest.mark.parametrize("num_experts", [8, 60, 64, 128])
def test_fused_accumulate_equals_torch_accumulate(num_experts, k, num_tokens, device):
    ids = random_ids(num_tokens, k, num_experts, seed=num_experts + k + num_tokens)
    fused, reference = counters(num_experts, device), counters(num_experts, "cpu")
    for _ in range(2):
        accumulate_fused(ids.to(device), *fused, k)
        accumulate(ids, *reference, k)
    assert_same_counters(fused, reference)


def test_fused_accumulate_counts_one_expert_repeated_across_tokens(device):
    ids = torch.full((37, 8), 5)
    ids[3] = -1
    fused = counters(8, device)
    accumulate_fused(ids.to(device), *fused, 8)
    assert fused[0].cpu().tolist() == [0, 0, 0, 0, 0, 36 * 8, 0, 0]
    assert [int(c) for c in fused[1:]] == [8, 37, 1]


@pytest.mark.parametrize("num_tokens", [3, 37])
def test_fused_accumulate_clamps_drops_of_plans_wider_than_the_budget(num_tokens, device):
    # an expert-choice plan: E columns, a budget of 2, some tokens kept by many experts
    ids = random_ids(num_tokens, 60, 60, seed=num_tokens)
    ids[0] = torch.arange(60)
    fused, reference = counters(60, device), counters(60, "cpu")
    accumulate_fused(ids.to(device), *fused, 2)
    accumulate(ids, *reference, 2)
    assert_same_counters(fused, reference)


def test_fused_accumulate_of_a_plan_over_its_budget_drops_nothing(device):
    ids = torch.tensor([[0, 1, 2], [-1, -1, -1]])
    fused = counters(3, device)
    accumulate_fused(ids.to(device), *fused, 1)
    assert fused[0].cpu().tolist() == [1, 1, 1]
    assert [int(c) for c in fused[1:]] == [0, 2, 1]


def test_fused_accumulate_spreads_long_plans_over_programs(device):
    ids = random_ids(600, 8, 64, seed=9)
    fused, reference = counters(64, device), counters(64, "cpu")
    accumulate_fused(ids.to(device), *fused, 8)
    accumulate(ids, *reference, 8)
    assert_same_counters(fused, reference)


def test_fused_accumulate_writes_only_its_layer_of_the_recorder_tensors(device):
    ids = random_ids(3, 2, 8, seed=10)
    counts = torch.zeros(3, 8, dtype=torch.long, device=device)
    per_layer = [torch.zeros(3, dtype=torch.long, device=device) for _ in range(3)]
    accumulate_fused(ids.to(device), counts[1], *(t[1:2] for t in per_layer), 2)
    reference = counters(8, "cpu")
    accumulate(ids, *reference, 2)
    assert torch.equal(counts.cpu(), torch.stack([torch.zeros(8, dtype=torch.long), reference[0], torch.zeros(8, dtype=torch.long)]))
    for got, expected in zip(per_layer, reference[1:], strict=True):
        assert got.cpu().tolist() == [0, int(expected), 0]
