"""Router.route_hidden: every router routes its hidden states as it routes their gate logits.

native and top_k take the fused gate top-k launch where it applies (CUDA decode);
the CPU never does, so the fused branch is forced here to run it in Triton's
interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fused_routing_cases import DEEPSEEK, HIDDEN, INTERPRETER_ONLY, build, fused_routers, unfused_routers

from moeframe.experts import EXPERTS
from moeframe.model.layers.moe import MoEBlock
from moeframe.model.spec import MoESpec
from moeframe.routers import RouteContext, Router, RoutingPlan
from moeframe.routers.gate import gate_logits
from moeframe.routers.gate_topk import GateTopK

SOFTMAX = MoESpec(num_experts=12, top_k=3, intermediate_size=8, norm_topk_prob=True, routed_scaling_factor=1.5)

ALL_ROUTERS = [
    ({"name": "native"}, SOFTMAX),
    ({"name": "native"}, DEEPSEEK),
    ({"name": "top_k", "k": 2, "renormalize": False}, SOFTMAX),
    ({"name": "top_k", "k": 2, "capacity_factor": 1.0}, SOFTMAX),
    ({"name": "expert_choice"}, SOFTMAX),
    ({"name": "balanced"}, SOFTMAX),
    ({"name": "balanced", "method": "sinkhorn"}, SOFTMAX),
    ({"name": "aux_free"}, SOFTMAX),
    ({"name": "aux_free"}, DEEPSEEK),
    ({"name": "random", "seed": 3}, SOFTMAX),
    ({"name": "hash"}, SOFTMAX),
]
FUSED_ROUTERS = fused_routers(SOFTMAX)
UNFUSED_ROUTERS = unfused_routers(SOFTMAX)


def hidden_and_gate(moe: MoESpec, num_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, HIDDEN, generator=generator)
    return hidden, torch.randn(moe.num_experts, HIDDEN, generator=generator) / HIDDEN**0.5


def context(moe: MoESpec, num_tokens: int) -> RouteContext:
    bias = torch.linspace(-0.1, 0.1, moe.num_experts) if moe.has_correction_bias else None
    return RouteContext(token_ids=torch.arange(num_tokens) * 7, correction_bias=bias, positions=torch.arange(num_tokens))


@pytest.mark.parametrize(("config", "moe"), ALL_ROUTERS)
def test_route_hidden_on_the_cpu_equals_route_of_the_float32_gate_logits(config, moe):
    hidden, gate = hidden_and_gate(moe, 5, seed=1)
    hidden = hidden.to(torch.bfloat16)
    # two routers of one config, so stateful routers (aux_free) start alike
    plan = build(config, moe).route_hidden(hidden, gate, context(moe, 5))
    expected = build(config, moe).route(F.linear(hidden.float(), gate), context(moe, 5))
    assert torch.equal(plan.topk_ids, expected.topk_ids)
    assert torch.equal(plan.topk_weights, expected.topk_weights)


@pytest.mark.skipif(torch.cuda.is_available(), reason=INTERPRETER_ONLY)
@pytest.mark.parametrize(("config", "moe"), FUSED_ROUTERS)
def test_softmax_top_k_routers_take_the_fused_launch_and_route_alike(config, moe, monkeypatch):
    hidden, gate = hidden_and_gate(moe, 3, seed=2)
    expected = build(config, moe).route(F.linear(hidden, gate), context(moe, 3))
    launches = []
    fused_call = GateTopK.__call__
    monkeypatch.setattr(GateTopK, "applies", staticmethod(lambda hidden_states, weight: True))
    monkeypatch.setattr(GateTopK, "__call__", lambda self, *args: launches.append(args) or fused_call(self, *args))
    plan = build(config, moe).route_hidden(hidden, gate, context(moe, 3))
    assert len(launches) == 1
    assert torch.equal(plan.topk_ids, expected.topk_ids)
    torch.testing.assert_close(plan.topk_weights, expected.topk_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("config", "moe"), UNFUSED_ROUTERS)
def test_group_limited_and_capacity_routing_never_take_the_fused_launch(config, moe, monkeypatch):
    def refuse(*args):
        raise AssertionError("the fused softmax top-k launch ran")

    monkeypatch.setattr(GateTopK, "applies", staticmethod(lambda hidden_states, weight: True))
    monkeypatch.setattr(GateTopK, "__call__", refuse)
    hidden, gate = hidden_and_gate(moe, 4, seed=3)
    plan = build(config, moe).route_hidden(hidden, gate, context(moe, 4))
    expected = build(config, moe).route(F.linear(hidden, gate), context(moe, 4))
    assert torch.equal(plan.topk_ids, expected.topk_ids)


class RecordingRouter(Router):
    """Routes every token to expert 0 and keeps what route_hidden was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, RouteContext]] = []

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        raise AssertionError("MoEBlock must route through route_hidden")

    def route_hidden(self, hidden_states: torch.Tensor, gate_weight: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        self.calls.append((hidden_states, gate_weight, ctx))
        num_tokens = hidden_states.shape[0]
        return RoutingPlan(torch.zeros(num_tokens, 1, dtype=torch.int64), torch.ones(num_tokens, 1))


def test_moe_block_hands_its_hidden_states_and_gate_weight_to_route_hidden():
    router = RecordingRouter()
    block = MoEBlock(DEEPSEEK, HIDDEN, 0, router, EXPERTS.build({"name": "reference"}))
    torch.nn.init.normal_(block.w13)
    torch.nn.init.normal_(block.w2)
    hidden, token_ids = torch.randn(2, HIDDEN), torch.tensor([5, 9])
    block(hidden, token_ids)
    (seen_hidden, seen_weight, ctx), = router.calls
    assert seen_hidden is hidden and seen_weight is block.gate.weight
    assert ctx.token_ids is token_ids and ctx.correction_bias is block.e_score_correction_bias


class OrderLog:
    """An expert runner and a routing observer writing one shared log of their calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, RoutingPlan]] = []

    def run_experts(self, hidden, w13, w2, plan, kernel):
        self.events.append(("experts", plan))
        return kernel.forward_unreduced(hidden, w13, w2, plan)

    def record(self, layer_idx: int, plan: RoutingPlan) -> None:
        self.events.append(("record", plan))


def test_moe_block_records_its_plan_after_its_experts_ran():
    # the batched load recorder's launch at the last MoE layer reads the ids before its PDL wait: they must not
    # come from the launch just before it, so the block records only once its experts are enqueued
    log = OrderLog()
    block = MoEBlock(DEEPSEEK, HIDDEN, 0, RecordingRouter(), EXPERTS.build({"name": "reference"}), log, log)
    block(torch.randn(2, HIDDEN))
    (first, plan), (second, recorded) = log.events
    assert (first, second) == ("experts", "record") and recorded is plan


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_tokens", [1, 3, 64])
def test_native_route_hidden_on_cuda_equals_its_two_launches_at_the_olmoe_shape(num_tokens):
    moe = MoESpec(num_experts=64, top_k=8, intermediate_size=1024)
    generator = torch.Generator().manual_seed(num_tokens)
    hidden = torch.randn(num_tokens, 2048, generator=generator).to("cuda", torch.bfloat16)
    gate = (torch.randn(64, 2048, generator=generator) / 2048**0.5).cuda()
    router = build({"name": "native"}, moe)
    for _ in range(2):  # the second launch reuses the counters the first reset
        plan = router.route_hidden(hidden, gate, RouteContext())
        expected = router.route(gate_logits(hidden, gate), RouteContext())
        assert torch.equal(plan.topk_ids, expected.topk_ids)
        torch.testing.assert_close(plan.topk_weights, expected.topk_weights, rtol=1e-5, atol=1e-6)
