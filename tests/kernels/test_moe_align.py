"""align_by_expert: every kept assignment lands once, in a block of its own expert; dropped ones in the last bucket."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_plan

from moeframe.experts.moe_align import align_by_expert, max_padded_rows


def blocks_of(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[list[list[int]], list[int], int]:
    aligned = align_by_expert(topk_ids, num_experts, block_m)
    ids = aligned.sorted_ids.tolist()
    blocks = [ids[i : i + block_m] for i in range(0, len(ids), block_m)]
    return blocks, aligned.block_expert.tolist(), int(aligned.num_rows.item())


@pytest.mark.parametrize("num_tokens,num_experts,top_k,block_m", [(1, 7, 3, 16), (40, 5, 2, 16), (33, 8, 4, 4)])
def test_each_kept_assignment_sits_once_in_a_block_of_its_expert(num_tokens, num_experts, top_k, block_m):
    plan = random_plan(num_tokens, num_experts, top_k, drop_fraction=0.2, gen=torch.Generator().manual_seed(1))
    flat = plan.topk_ids.reshape(-1).tolist()
    blocks, block_expert, num_rows = blocks_of(plan.topk_ids, num_experts, block_m)
    seen = []
    for block, expert in zip(blocks, block_expert):
        for a in block:
            if a == len(flat):
                continue
            seen.append(a)
            assert expert == (flat[a] if flat[a] >= 0 else num_experts)
    assert sorted(seen) == list(range(len(flat)))
    assert num_rows % block_m == 0
    assert all(e == -1 for e in block_expert[num_rows // block_m :])


def test_dropped_assignments_form_the_last_bucket():
    topk_ids = torch.tensor([[2, -1], [-1, 0], [2, 1]])
    blocks, block_expert, num_rows = blocks_of(topk_ids, num_experts=3, block_m=2)
    used = [(e, b) for e, b in zip(block_expert, blocks) if e >= 0]
    assert used == [(0, [3, 6]), (1, [5, 6]), (2, [0, 4]), (3, [1, 2])]
    assert num_rows == 8


def test_padded_rows_bound_holds_when_every_token_picks_a_different_expert():
    num_experts, block_m = 64, 16
    topk_ids = torch.arange(num_experts).view(8, 8)
    aligned = align_by_expert(topk_ids, num_experts, block_m)
    assert int(aligned.num_rows.item()) == num_experts * block_m
    assert aligned.sorted_ids.numel() == max_padded_rows(64, num_experts + 1, block_m) >= num_experts * block_m


@pytest.mark.parametrize("num_tokens,num_experts,top_k,block_m", [(1, 64, 8, 16), (40, 5, 2, 16), (70, 9, 3, 32), (3, 3, 1, 64)])
def test_one_program_align_equals_the_torch_align(num_tokens, num_experts, top_k, block_m, device):
    from moeframe.experts.triton_moe import align

    plan = random_plan(num_tokens, num_experts, top_k, drop_fraction=0.2, gen=torch.Generator().manual_seed(2))
    topk_ids = plan.topk_ids.to(device)
    fast = align(topk_ids, num_experts, block_m, one_per_block_tokens=0)
    torch_ = align_by_expert(topk_ids, num_experts, block_m)
    assert torch.equal(fast.sorted_ids, torch_.sorted_ids)
    assert torch.equal(fast.block_expert, torch_.block_expert)
    assert torch.equal(fast.num_rows, torch_.num_rows)
