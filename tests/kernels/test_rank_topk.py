"""experts.rank_topk: the gate/up and down GEMVs route their own assignments from a pending softmax top-k.

The router's fused launch can stop at the gate logits (routers/gate_topk.py,
``defer``); the two GEMV kernels then rank each token's logits for their
assignment (routers/_topk_kernel.routed_assignment) and gate/up writes the plan's
ids and weights. Checked against the fused softmax top-k kernel the router
runs otherwise (same picks in the same slots; weights to float32 rounding,
their sums may run in another order) and the experts' output through that
kernel's plan.
"""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_experts

from moeframe.experts import EXPERTS
from moeframe.experts.pending_topk import MAX_RANKED_EXPERTS
from moeframe.experts.triton_moe import TritonFusedMoE, TritonMoEParams, fused_moe_unreduced, ranks_pending_topk
from moeframe.model.layers.moe import MoEBlock
from moeframe.model.layers.topk_sum import reduced
from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.fused_topk import fused_softmax_topk
from moeframe.routers.gate_topk import GateTopK, new_counts, norm_gate_softmax_topk
from moeframe.routers.plan import PendingTopk

HIDDEN, INTER = 64, 32


def pending_and_routed(num_tokens: int, num_experts: int, k: int, renormalize: bool, scale: float, seed: int, device):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(num_tokens, num_experts, generator=gen)).to(device)
    return PendingTopk(logits, k, renormalize, scale), fused_softmax_topk(logits, k, renormalize, scale)


@pytest.mark.parametrize("num_tokens", [1, 2])
@pytest.mark.parametrize(("num_experts", "k", "renormalize", "scale"), [(64, 8, False, 1.0), (8, 2, True, 1.0), (60, 6, True, 2.5), (16, 1, False, 0.5)])
def test_the_gemvs_route_a_pending_top_k_as_the_fused_softmax_top_k(device, num_tokens, num_experts, k, renormalize, scale):
    pending, routed = pending_and_routed(num_tokens, num_experts, k, renormalize, scale, num_experts + k, device)
    gen = torch.Generator().manual_seed(num_tokens)
    hidden = torch.randn(num_tokens, HIDDEN, generator=gen).to(device)
    w13, w2 = (w.to(device) for w in random_experts(num_experts, HIDDEN, INTER, torch.float32, gen))
    ids = torch.full((num_tokens, k), -7, dtype=torch.int64, device=device)
    weights = torch.full((num_tokens, k), float("nan"), device=device)
    out = reduced(fused_moe_unreduced(hidden, w13, w2, ids, weights, pending=pending))
    assert torch.equal(ids, routed.topk_ids)
    torch.testing.assert_close(weights, routed.topk_weights, rtol=1e-6, atol=1e-7)
    expected = reduced(fused_moe_unreduced(hidden, w13, w2, routed.topk_ids, routed.topk_weights))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_a_pending_top_k_outside_the_gemv_path_is_refused(device):
    pending, _ = pending_and_routed(3, 8, 2, False, 1.0, 0, device)
    w13, w2 = (w.to(device) for w in random_experts(8, HIDDEN, INTER, torch.float32, torch.Generator().manual_seed(0)))
    ids, weights = torch.empty(3, 2, dtype=torch.int64, device=device), torch.empty(3, 2, device=device)
    with pytest.raises(ValueError, match="no ranking GEMV path"):
        fused_moe_unreduced(torch.randn(3, HIDDEN, device=device), w13, w2, ids, weights, pending=pending)


def test_the_kernel_ranks_only_under_its_switch_and_on_its_gemv_path():
    w13, w2 = random_experts(8, HIDDEN, INTER, torch.float32, torch.Generator().manual_seed(0))
    ranking = TritonFusedMoE(TritonMoEParams(rank_topk=True))
    assert ranking.ranks_logits(1, w13, w2) and ranking.ranks_logits(2, w13, w2)
    assert not ranking.ranks_logits(3, w13, w2)  # no block per assignment
    assert not TritonFusedMoE(TritonMoEParams()).ranks_logits(1, w13, w2)
    many = random_experts(MAX_RANKED_EXPERTS + 1, HIDDEN, INTER, torch.float32, torch.Generator().manual_seed(0))
    assert not ranks_pending_topk(1, *many)


@pytest.mark.parametrize("defer", [False, True])
def test_the_router_launch_leaves_its_top_k_pending_when_asked(device, defer):
    gen = torch.Generator().manual_seed(5)
    h, residual = (torch.randn(1, HIDDEN, generator=gen).to(device) for _ in range(2))
    norm_weight, gate = torch.rand(HIDDEN, generator=gen).to(device) + 0.5, torch.randn(16, HIDDEN, generator=gen).to(device)
    plan, normed, _ = norm_gate_softmax_topk(h, residual, norm_weight, 1e-6, gate, 4, True, 1.0, new_counts(device), defer=defer)
    reference, _, _ = norm_gate_softmax_topk(h, residual, norm_weight, 1e-6, gate, 4, True, 1.0, new_counts(device))
    if not defer:
        assert plan.pending is None and torch.equal(plan.topk_ids, reference.topk_ids)
        return
    assert plan.pending.k == 4 and plan.pending.renormalize
    torch.testing.assert_close(plan.pending.logits, normed.float() @ gate.float().t(), rtol=1e-5, atol=1e-5)
    assert torch.equal(fused_softmax_topk(plan.pending.logits, 4, True, 1.0).topk_ids, reference.topk_ids)


def test_a_router_launch_with_a_choice_bias_routes_itself(device):
    gen = torch.Generator().manual_seed(6)
    h, residual = (torch.randn(1, HIDDEN, generator=gen).to(device) for _ in range(2))
    norm_weight, gate = torch.ones(HIDDEN, device=device), torch.randn(16, HIDDEN, generator=gen).to(device)
    bias = torch.randn(16, generator=gen).to(device)
    plan, _, _ = norm_gate_softmax_topk(h, residual, norm_weight, 1e-6, gate, 4, True, 1.0, new_counts(device), bias, defer=True)
    assert plan.pending is None and bool((plan.topk_ids >= 0).all())


@pytest.mark.skipif(torch.cuda.is_available(), reason="forces the fused router launch on CPU tensors (the interpreter)")
@pytest.mark.parametrize("router", [{"name": "native"}, {"name": "top_k", "k": 2, "renormalize": False}])
@pytest.mark.parametrize("num_tokens", [1, 2])
def test_a_moe_block_whose_experts_rank_the_logits_computes_what_the_routed_block_does(router, num_tokens, monkeypatch):
    monkeypatch.setattr(GateTopK, "applies", staticmethod(lambda hidden_states, weight: True))
    spec = MoESpec(num_experts=16, top_k=4, intermediate_size=INTER, norm_topk_prob=True)
    outputs, recorded = [], []
    for rank_topk in (False, True):
        torch.manual_seed(0)
        block = MoEBlock(spec, HIDDEN, 0, ROUTERS.build(router, moe=spec, layer_idx=0),
                         EXPERTS.build({"name": "triton", "rank_topk": rank_topk}), observer=PlanLog(recorded))  # fmt: skip
        for weight in (block.gate.weight, block.w13, block.w2):
            torch.nn.init.normal_(weight, std=HIDDEN**-0.5)
        outputs.append(block(torch.randn(num_tokens, HIDDEN, generator=torch.Generator().manual_seed(1))))
    (routed, ranked), (routed_plan, ranked_plan) = outputs, recorded
    assert routed_plan.pending is None and ranked_plan.pending is not None
    assert torch.equal(ranked_plan.topk_ids, routed_plan.topk_ids)  # written by the gate/up launch
    torch.testing.assert_close(ranked_plan.topk_weights, routed_plan.topk_weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ranked, routed, rtol=1e-5, atol=1e-6)


class PlanLog:
    """A routing observer keeping every plan it is shown."""

    def __init__(self, plans: list) -> None:
        self.plans = plans

    def record(self, layer_idx: int, plan) -> None:
        self.plans.append(plan)
