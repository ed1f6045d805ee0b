"""experts=triton with defer_topk_sum: where and only where it hands back the k assignment rows unsummed."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_experts, random_plan

import moeframe.experts.triton_moe as triton_moe
from moeframe.experts import EXPERTS
from moeframe.experts.triton_moe import TritonMoEParams, fused_moe, fused_moe_unreduced
from moeframe.model.layers.topk_sum import PendingTopkSum


def inputs(num_tokens: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w13, w2 = random_experts(6, 32, 32, dtype, gen)
    plan = random_plan(num_tokens, 6, 3, drop_fraction=0.2, gen=gen)
    hidden = torch.randn(num_tokens, 32, generator=gen).to(dtype)
    plan.topk_ids, plan.topk_weights = plan.topk_ids.to(device), plan.topk_weights.to(device)
    return hidden.to(device), w13.to(device), w2.to(device), plan


def kernel(defer: bool):
    return EXPERTS.build({"name": "triton", "use_tuned_configs": False, "defer_topk_sum": defer})


def test_defer_topk_sum_is_on_by_default():
    assert TritonMoEParams().defer_topk_sum


@pytest.mark.parametrize("num_tokens", [1, 5])
def test_unreduced_output_sums_to_the_reduced_one_bitwise(device, num_tokens):
    hidden, w13, w2, plan = inputs(num_tokens, torch.float32, device)
    pending = kernel(True).forward_unreduced(hidden, w13, w2, plan)
    assert isinstance(pending, PendingTopkSum)
    assert pending.parts.shape == (num_tokens, 3, 32)
    assert torch.equal(pending.reduce(), kernel(False).forward(hidden, w13, w2, plan))


def test_forward_always_returns_the_summed_rows(device):
    """Parallel runners (moeframe/parallel) call forward and send its [T, H] output on."""
    hidden, w13, w2, plan = inputs(3, torch.float32, device)
    out = kernel(True).forward(hidden, w13, w2, plan)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32)
    assert torch.equal(out, fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights))


def test_defer_off_gives_the_summed_tensor_of_today(device):
    hidden, w13, w2, plan = inputs(3, torch.float32, device)
    out = kernel(False).forward_unreduced(hidden, w13, w2, plan)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, fused_moe(hidden, w13, w2, plan.topk_ids, plan.topk_weights))


def test_float16_is_summed_in_the_moe(device):
    """The consumer cannot round to float16 exactly inside a compiled kernel, so float16 keeps the separate sum."""
    hidden, w13, w2, plan = inputs(2, torch.float16, device)
    out = kernel(True).forward_unreduced(hidden, w13, w2, plan)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 32)


def test_batches_past_the_generated_sum_are_summed_in_the_moe(device, monkeypatch):
    monkeypatch.setattr(triton_moe, "MAX_GENERATED_SUM_TOKENS", 2)
    hidden, w13, w2, plan = inputs(3, torch.float32, device)
    out = fused_moe_unreduced(hidden, w13, w2, plan.topk_ids, plan.topk_weights)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32)


@pytest.mark.parametrize("fused_path", ["single_pass_tokens", "down_topk_sum_tokens"])
def test_paths_that_sum_inside_a_kernel_return_the_summed_rows(device, fused_path):
    hidden, w13, w2, plan = inputs(2, torch.float32, device)
    out = EXPERTS.build({"name": "triton", "use_tuned_configs": False, fused_path: 2}).forward_unreduced(hidden, w13, w2, plan)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 32)
