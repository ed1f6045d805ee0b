"""experts=triton (fused MoE) against the per-expert reference loop."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_experts, random_plan, tolerance

from moeframe.experts import EXPERTS
from moeframe.experts.moe_configs import MoEConfig, TileConfig, default_config
from moeframe.experts.triton_moe import fused_moe

# Small tiles so that a few tokens already span several blocks per expert and
# the hidden/expert widths are not multiples of the tiles.
SMALL_TILES = MoEConfig(16, TileConfig(16, 32), TileConfig(32, 16))


def reference(hidden, w13, w2, plan):
    return EXPERTS.build({"name": "reference"}).forward(hidden, w13, w2, plan)


@pytest.mark.parametrize(
    "num_tokens,num_experts,top_k",
    [(1, 6, 1), (1, 7, 4), (5, 5, 2), (40, 3, 2), (23, 9, 3)],
)
def test_fused_moe_matches_reference_in_float32(device, num_tokens, num_experts, top_k):
    gen = torch.Generator().manual_seed(num_tokens * 100 + num_experts)
    hidden_size, inter = 48, 40
    w13, w2 = random_experts(num_experts, hidden_size, inter, torch.float32, gen)
    plan = random_plan(num_tokens, num_experts, top_k, drop_fraction=0.0, gen=gen)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen)
    hidden, w13, w2 = hidden.to(device), w13.to(device), w2.to(device)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    out = fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights, SMALL_TILES)
    torch.testing.assert_close(out, reference(hidden, w13, w2, plan), **tolerance(torch.float32, device))


def test_fused_moe_skips_dropped_assignments(device):
    gen = torch.Generator().manual_seed(7)
    w13, w2 = random_experts(5, 32, 32, torch.float32, gen)
    plan = random_plan(30, 5, 3, drop_fraction=0.4, gen=gen)
    plan.topk_ids[4] = -1
    plan.topk_weights[4] = 0.0
    hidden = torch.randn(30, 32, generator=gen)
    args = [t.to(device) for t in (hidden, w13, w2, plan.topk_ids, plan.topk_weights)]
    out = fused_moe(*args, SMALL_TILES)
    plan.topk_ids, plan.topk_weights = args[3], args[4]
    torch.testing.assert_close(out, reference(*args[:3], plan), **tolerance(torch.float32, device))
    assert torch.all(out[4] == 0)


@pytest.mark.parametrize("num_tokens", [1, 3])
def test_one_assignment_per_block_layout_matches_reference_with_dropped_assignments(device, num_tokens):
    gen = torch.Generator().manual_seed(9)
    w13, w2 = random_experts(6, 32, 32, torch.float32, gen)
    plan = random_plan(num_tokens, 6, 4, drop_fraction=0.0, gen=gen)
    plan.topk_ids[0, 1], plan.topk_weights[0, 1] = -1, 0.0
    hidden = torch.randn(num_tokens, 32, generator=gen)
    args = [t.to(device) for t in (hidden, w13, w2, plan.topk_ids, plan.topk_weights)]
    out = fused_moe(*args, SMALL_TILES, one_per_block_tokens=num_tokens, single_pass_tokens=0)
    plan.topk_ids, plan.topk_weights = args[3], args[4]
    torch.testing.assert_close(out, reference(*args[:3], plan), **tolerance(torch.float32, device))


def test_fused_moe_matches_reference_in_low_precision_with_default_tiles(device, low_precision):
    gen = torch.Generator().manual_seed(3)
    num_tokens, num_experts, top_k = 20, 6, 2
    w13, w2 = random_experts(num_experts, 64, 32, low_precision, gen)
    plan = random_plan(num_tokens, num_experts, top_k, drop_fraction=0.1, gen=gen)
    hidden = torch.randn(num_tokens, 64, generator=gen).to(low_precision)
    hidden, w13, w2 = hidden.to(device), w13.to(device), w2.to(device)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    out = fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights, default_config(num_tokens, top_k, num_experts))
    torch.testing.assert_close(out.float(), reference(hidden, w13, w2, plan).float(), **tolerance(low_precision, device))


def test_registered_triton_kernel_builds_from_its_config_and_matches_reference(device):
    gen = torch.Generator().manual_seed(11)
    kernel = EXPERTS.build({"name": "triton", "use_tuned_configs": False})
    w13, w2 = random_experts(4, 32, 16, torch.float32, gen)
    plan = random_plan(3, 4, 2, drop_fraction=0.0, gen=gen)
    hidden = torch.randn(3, 32, generator=gen)
    hidden, w13, w2 = hidden.to(device), w13.to(device), w2.to(device)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    w13p, w2p = kernel.prepare(w13, w2)
    torch.testing.assert_close(kernel.forward(hidden, w13p, w2p, plan), reference(hidden, w13, w2, plan), **tolerance(torch.float32, device))


def test_fused_moe_rejects_mismatched_weight_shapes():
    w13, w2 = torch.zeros(4, 32, 16), torch.zeros(4, 16, 8)
    with pytest.raises(ValueError, match="w2 must be"):
        fused_moe(torch.zeros(2, 16), w13, w2, torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1))


@pytest.mark.parametrize("num_tokens", [1, 2])
def test_single_pass_path_matches_reference_with_dropped_assignments(device, num_tokens):
    gen = torch.Generator().manual_seed(11)
    # widths not multiples of the single-pass tile, so its masks are exercised
    w13, w2 = random_experts(6, 200, 72, torch.float32, gen)
    plan = random_plan(num_tokens, 6, 4, drop_fraction=0.0, gen=gen)
    plan.topk_ids[0, 2], plan.topk_weights[0, 2] = -1, 0.0
    hidden = torch.randn(num_tokens, 200, generator=gen)
    args = [t.to(device) for t in (hidden, w13, w2, plan.topk_ids, plan.topk_weights)]
    out = fused_moe(*args, SMALL_TILES, single_pass_tokens=num_tokens)
    plan.topk_ids, plan.topk_weights = args[3], args[4]
    torch.testing.assert_close(out, reference(*args[:3], plan), **tolerance(torch.float32, device))
