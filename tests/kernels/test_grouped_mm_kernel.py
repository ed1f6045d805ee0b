"""experts=grouped_mm against the per-expert reference loop (torch._grouped_mm runs natively on the CPU)."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_experts, random_plan, tolerance

from moeframe.experts import EXPERTS
from moeframe.experts.grouped_mm import GroupedMMUnsupported


def run(name, hidden, w13, w2, plan):
    return EXPERTS.build({"name": name}).forward(hidden, w13, w2, plan)


@pytest.mark.parametrize("num_tokens,num_experts,top_k,drop", [(1, 5, 1, 0.0), (17, 7, 3, 0.0), (33, 6, 4, 0.3)])
def test_grouped_mm_matches_reference(device, num_tokens, num_experts, top_k, drop):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(num_tokens)
    w13, w2 = random_experts(num_experts, 64, 32, dtype, gen)
    plan = random_plan(num_tokens, num_experts, top_k, drop, gen)
    hidden = torch.randn(num_tokens, 64, generator=gen).to(dtype)
    hidden, w13, w2 = hidden.to(device), w13.to(device), w2.to(device)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    torch.testing.assert_close(
        run("grouped_mm", hidden, w13, w2, plan).float(), run("reference", hidden, w13, w2, plan).float(), **tolerance(dtype, device)
    )


def test_grouped_mm_zeroes_tokens_whose_assignments_are_all_dropped():
    gen = torch.Generator().manual_seed(5)
    w13, w2 = random_experts(4, 16, 16, torch.float32, gen)
    plan = random_plan(6, 4, 2, 0.0, gen)
    plan.topk_ids[2], plan.topk_weights[2] = -1, 0.0
    out = run("grouped_mm", torch.randn(6, 16, generator=gen), w13, w2, plan)
    assert torch.all(out[2] == 0) and torch.all(out[3] != 0)


def test_grouped_mm_rejects_unaligned_widths_with_a_clear_error():
    gen = torch.Generator().manual_seed(0)
    w13, w2 = random_experts(2, 16, 6, torch.bfloat16, gen)
    plan = random_plan(2, 2, 1, 0.0, gen)
    with pytest.raises(GroupedMMUnsupported, match="multiples of 8"):
        run("grouped_mm", torch.zeros(2, 16, dtype=torch.bfloat16), w13, w2, plan)
