"""Router.route_residual and MoEBlock.forward_residual: the residual add and RMSNorm before the block, then routing.

By default every router runs norm.add_forward and then routes the normed rows,
so forward_residual is the norm followed by the block's forward, bit for bit.
native and top_k's softmax routing fold the norm into their fused gate top-k
launch where it applies (CUDA decode); the CPU never does, so the fused branch
is forced here to run it in Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch
from fused_routing_cases import DEEPSEEK, HIDDEN, INTERPRETER_ONLY, build, fused_routers, unfused_routers

from moeframe.experts import EXPERTS
from moeframe.model.layers.moe import MoEBlock
from moeframe.model.layers.norm import RMSNorm
from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext
from moeframe.routers import gate_topk
from moeframe.routers.gate_topk import GateTopK

SOFTMAX = MoESpec(num_experts=12, top_k=3, intermediate_size=8, norm_topk_prob=True, routed_scaling_factor=1.5,
                  shared_intermediate_size=6, shared_expert_gate=True)
EPS = 1e-6

FUSED_ROUTERS = fused_routers(SOFTMAX)
UNFUSED_ROUTERS = [*unfused_routers(SOFTMAX), ({"name": "expert_choice"}, SOFTMAX)]


def every_registered_router() -> list[tuple[dict, MoESpec]]:
    return [({"name": name}, moe) for name in ROUTERS.names() for moe in (SOFTMAX, DEEPSEEK)]


def moe_block(config: dict, moe: MoESpec, seed: int) -> MoEBlock:
    torch.manual_seed(seed)
    block = MoEBlock(moe, HIDDEN, 0, build(config, moe), EXPERTS.build({"name": "reference"}))
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    if moe.has_correction_bias:
        block.e_score_correction_bias.copy_(torch.linspace(-0.1, 0.1, moe.num_experts))
    return block


def norm_inputs(num_tokens: int, seed: int, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    norm = RMSNorm(HIDDEN, EPS)
    norm.weight.data = 1 + 0.2 * torch.randn(HIDDEN, generator=generator)
    h = torch.randn(num_tokens, HIDDEN, generator=generator)
    residual = torch.randn(num_tokens, HIDDEN, generator=generator)
    return h.to(dtype), residual.to(dtype), norm.to(dtype)


@pytest.mark.parametrize(("config", "moe"), every_registered_router())
def test_forward_residual_on_the_cpu_is_the_norm_then_forward_bit_for_bit(config, moe):
    h, residual, norm = norm_inputs(5, seed=1)
    token_ids, positions = torch.arange(5) * 7, torch.arange(5)
    # two blocks of one seed, so stateful routers (aux_free) start alike
    out, new_residual = moe_block(config, moe, seed=2).forward_residual(h, residual, norm, token_ids, positions)
    normed, expected_residual = norm.add_forward(h, residual)
    expected = moe_block(config, moe, seed=2)(normed, token_ids, positions)
    assert torch.equal(out, expected) and torch.equal(new_residual, expected_residual)


def test_forward_residual_without_a_residual_norms_h_alone():
    h, _, norm = norm_inputs(3, seed=3)
    out, residual = moe_block({"name": "native"}, SOFTMAX, seed=4).forward_residual(h, None, norm)
    assert torch.equal(out, moe_block({"name": "native"}, SOFTMAX, seed=4)(norm(h))) and residual is h


@pytest.mark.skipif(torch.cuda.is_available(), reason=INTERPRETER_ONLY)
@pytest.mark.parametrize(("config", "moe"), FUSED_ROUTERS)
def test_softmax_top_k_routers_norm_and_route_in_the_fused_launch(config, moe, monkeypatch):
    h, residual, norm = norm_inputs(3, seed=5)
    gate = torch.randn(moe.num_experts, HIDDEN, generator=torch.Generator().manual_seed(6)) / HIDDEN**0.5
    expected = build(config, moe).route_residual(h, residual, norm, gate, RouteContext())
    launches = []
    fused_call = GateTopK.norm_and_route
    monkeypatch.setattr(GateTopK, "applies", staticmethod(lambda hidden_states, weight: True))
    monkeypatch.setattr(
        GateTopK, "norm_and_route", lambda self, *args: launches.append(args) or fused_call(self, *args)
    )
    routed = build(config, moe).route_residual(h, residual, norm, gate, RouteContext())
    assert len(launches) == 1
    assert torch.equal(routed.residual, expected.residual)
    torch.testing.assert_close(routed.hidden_states, expected.hidden_states, rtol=1e-6, atol=0)
    assert torch.equal(routed.plan.topk_ids, expected.plan.topk_ids)
    torch.testing.assert_close(routed.plan.topk_weights, expected.plan.topk_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("config", "moe"), UNFUSED_ROUTERS)
def test_group_limited_capacity_and_batch_routing_never_norm_in_the_fused_launch(config, moe, monkeypatch):
    def refuse(*args):
        raise AssertionError("the fused norm + gate top-k launch ran")

    monkeypatch.setattr(GateTopK, "applies", staticmethod(lambda hidden_states, weight: True))
    monkeypatch.setattr(GateTopK, "norm_and_route", refuse)
    h, residual, norm = norm_inputs(4, seed=7)
    gate = torch.randn(moe.num_experts, HIDDEN, generator=torch.Generator().manual_seed(8))
    bias = torch.linspace(-0.1, 0.1, moe.num_experts) if moe.has_correction_bias else None
    ctx = RouteContext(token_ids=torch.arange(4), correction_bias=bias)
    routed = build(config, moe).route_residual(h, residual, norm, gate, ctx)
    assert torch.equal(routed.residual, h + residual)


class ScaledNorm(RMSNorm):
    """An RMSNorm of another forward (as tensor parallelism swaps in its own norm modules)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_the_fused_norm_applies_only_to_a_plain_rms_norm_over_one_dtype_with_a_residual(monkeypatch):
    monkeypatch.setattr(GateTopK, "applies", staticmethod(lambda hidden_states, weight: True))
    h, residual, norm = norm_inputs(2, seed=9)
    gate = torch.randn(SOFTMAX.num_experts, HIDDEN)
    assert GateTopK.fuses_norm(h, residual, norm, gate)
    assert not GateTopK.fuses_norm(h, None, norm, gate)
    assert not GateTopK.fuses_norm(h, residual.half(), norm, gate)
    assert not GateTopK.fuses_norm(h, residual, norm.half(), gate)
    scaled = ScaledNorm(HIDDEN, EPS)
    assert not GateTopK.fuses_norm(h, residual, scaled, gate)


def test_set_fused_norm_false_keeps_the_norm_apart(monkeypatch):
    monkeypatch.setattr(GateTopK, "applies", staticmethod(lambda hidden_states, weight: True))
    h, residual, norm = norm_inputs(2, seed=10)
    gate = torch.randn(SOFTMAX.num_experts, HIDDEN)
    gate_topk.set_fused_norm(False)
    try:
        assert not GateTopK.fuses_norm(h, residual, norm, gate)
    finally:
        gate_topk.set_fused_norm(True)
    assert GateTopK.fuses_norm(h, residual, norm, gate)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_tokens", [1, 3, 64])
def test_native_route_residual_on_cuda_equals_add_rms_norm_then_route_hidden_at_the_olmoe_shape(num_tokens):
    moe = MoESpec(num_experts=64, top_k=8, intermediate_size=1024)
    generator = torch.Generator().manual_seed(num_tokens)
    h = torch.randn(num_tokens, 2048, generator=generator).to("cuda", torch.bfloat16)
    residual = (4 * torch.randn(num_tokens, 2048, generator=generator)).to("cuda", torch.bfloat16)
    norm = RMSNorm(2048, EPS).to("cuda", torch.bfloat16)
    norm.weight.data.uniform_(0.5, 1.5)
    gate = (torch.randn(64, 2048, generator=generator) / 2048**0.5).cuda()
    router = build({"name": "native"}, moe)
    for _ in range(2):  # the second launch reuses the counters the first reset
        routed = router.route_residual(h, residual, norm, gate, RouteContext())
        normed, summed = norm.add_forward(h, residual)
        expected = router.route_hidden(routed.hidden_states, gate, RouteContext())
        assert torch.equal(routed.residual, summed)
        torch.testing.assert_close(routed.hidden_states, normed, rtol=1.6e-2, atol=1e-5)  # two bf16 ulp
        assert torch.equal(routed.plan.topk_ids, expected.topk_ids)
        torch.testing.assert_close(routed.plan.topk_weights, expected.topk_weights, rtol=1e-5, atol=1e-6)
