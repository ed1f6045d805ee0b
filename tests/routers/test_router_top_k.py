"""top_k: model-k equivalence with native, hand-made choices, and GShard capacity dropping."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext


def top_k(moe: MoESpec, **params):
    return ROUTERS.build({"name": "top_k", **params}, moe=moe, layer_idx=0)


def softmax_spec(num_experts=4, top_k=2, norm=False) -> MoESpec:
    return MoESpec(num_experts=num_experts, top_k=top_k, intermediate_size=8, norm_topk_prob=norm)


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_with_the_model_k_and_scoring_equals_native(k, norm):
    moe = softmax_spec(num_experts=8, top_k=k, norm=norm)
    logits = torch.randn(128, 8, generator=torch.Generator().manual_seed(k))
    expected = ROUTERS.build({"name": "native"}, moe=moe, layer_idx=0).route(logits, RouteContext())
    plan = top_k(moe).route(logits, RouteContext())
    assert torch.equal(plan.topk_ids, expected.topk_ids)
    assert torch.equal(plan.topk_weights, expected.topk_weights)


def test_top1_keeps_the_raw_probability_unless_renormalised():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0]])  # softmax: 1/6, 3/6, 1/6, 1/6
    raw = top_k(softmax_spec(), k=1, renormalize=False).route(logits, RouteContext())
    renormalised = top_k(softmax_spec(), k=1, renormalize=True).route(logits, RouteContext())
    assert raw.topk_ids.tolist() == renormalised.topk_ids.tolist() == [[1]]
    torch.testing.assert_close(raw.topk_weights, torch.tensor([[0.5]]))
    assert renormalised.topk_weights.tolist() == [[1.0]]


def test_sigmoid_top_k_on_a_sigmoid_model_is_plain_top_k_times_the_routed_scale():
    moe = MoESpec(num_experts=4, top_k=2, intermediate_size=8, scoring="sigmoid", norm_topk_prob=True,
                  n_group=2, topk_group=1, routed_scaling_factor=2.5, has_correction_bias=True)
    # group-limited routing would keep one group of two; plain top-k takes experts 0 and 2 from both
    logits = torch.tensor([[2.0, -3.0, 1.0, -3.0]])
    plan = top_k(moe).route(logits, RouteContext(correction_bias=torch.zeros(4)))
    s = torch.sigmoid(logits[0])
    assert plan.topk_ids.tolist() == [[0, 2]]
    torch.testing.assert_close(plan.topk_weights, 2.5 * torch.stack([s[0], s[2]]).unsqueeze(0) / (s[0] + s[2]))


def test_capacity_drops_overflow_in_token_order():
    # every token prefers expert 0; capacity = ceil(1.0 * 4 * 1 / 2) = 2
    logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [4.0, 0.0], [1.0, 0.0]])
    plan = top_k(softmax_spec(num_experts=2, top_k=1), capacity_factor=1.0).route(logits, RouteContext())
    assert plan.topk_ids.tolist() == [[0], [0], [-1], [-1]]
    probs = torch.softmax(logits, dim=-1)[:, :1]
    assert torch.equal(plan.topk_weights, torch.tensor([[1.0], [1.0], [0.0], [0.0]]) * probs)


def test_capacity_serves_every_first_choice_before_any_second_choice():
    # capacity = ceil(1.0 * 3 * 2 / 3) = 2; first choices 0, 0, 1; second choices 1, 1, 0
    logits = torch.tensor([[3.0, 2.0, 0.0], [3.0, 2.0, 0.0], [2.0, 3.0, 0.0]])
    plan = top_k(softmax_spec(num_experts=3, top_k=2, norm=True), capacity_factor=1.0).route(logits, RouteContext())
    assert plan.topk_ids.tolist() == [[0, 1], [0, -1], [1, -1]]
    kept_weight = torch.softmax(logits, dim=-1).max(dim=-1).values / torch.softmax(logits, dim=-1).topk(2).values.sum(-1)
    torch.testing.assert_close(plan.topk_weights[:, 0], kept_weight)
    assert plan.topk_weights[1:, 1].tolist() == [0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    num_tokens=st.integers(1, 40),
    num_experts=st.integers(2, 9),
    k=st.integers(1, 3),
    capacity_factor=st.floats(0.1, 2.0),
    seed=st.integers(0, 2**16),
)
def test_capacity_is_never_exceeded_and_kept_assignments_are_the_top_k(num_tokens, num_experts, k, capacity_factor, seed):
    k = min(k, num_experts)
    moe = softmax_spec(num_experts=num_experts, top_k=k)
    logits = torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(seed))
    plan = top_k(moe, capacity_factor=capacity_factor).route(logits, RouteContext())
    capacity = math.ceil(round(capacity_factor * num_tokens * k / num_experts, 9))
    assert int(plan.expert_counts(num_experts).max()) <= capacity
    uncapped = top_k(moe).route(logits, RouteContext())
    assert torch.equal(torch.where(plan.kept, uncapped.topk_ids, -1), plan.topk_ids)
    assert torch.equal(torch.where(plan.kept, uncapped.topk_weights, 0.0), plan.topk_weights)
