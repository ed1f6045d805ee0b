"""expert_choice: experts take their top-C tokens; E columns per token."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext
from moeframe.routers.expert_choice import ExpertChoiceRouter


def expert_choice(num_experts=2, top_k=1, **params):
    moe = MoESpec(num_experts=num_experts, top_k=top_k, intermediate_size=8)
    return ROUTERS.build({"name": "expert_choice", **params}, moe=moe, layer_idx=0)


def test_each_expert_takes_its_top_c_tokens():
    # C = ceil(1.0 * 4 * 1 / 2) = 2; expert 0 likes tokens 2 and 0 best, expert 1 likes tokens 3 and 1
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.5], [2.0, 0.0], [0.0, 3.0]])
    plan = expert_choice().route(logits, RouteContext())
    assert plan.topk_ids.tolist() == [[0, -1], [-1, 1], [0, -1], [-1, 1]]
    probs = torch.softmax(logits, dim=-1)
    assert torch.equal(plan.topk_weights, torch.where(plan.kept, probs, 0.0))


def test_a_token_may_get_no_expert_or_several():
    # C = ceil(1.0 * 3 * 1 / 3) = 1; token 0 is the favourite of experts 0 and 1, token 2 of expert 2
    logits = torch.tensor([[3.0, 3.0, -9.0], [0.0, 0.0, 0.0], [-9.0, -9.0, 0.0]])
    plan = expert_choice(num_experts=3).route(logits, RouteContext())
    assert plan.topk_ids.tolist() == [[0, 1, -1], [-1, -1, -1], [-1, -1, 2]]


def test_capacity_is_capped_at_the_batch_so_a_lone_token_visits_every_expert():
    plan = expert_choice(num_experts=4, top_k=2, capacity_factor=2.0).route(torch.randn(1, 4), RouteContext())
    assert plan.topk_ids.tolist() == [[0, 1, 2, 3]]


def test_a_later_token_changes_an_earlier_tokens_experts():
    first = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    alone = expert_choice().route(first, RouteContext())
    with_later = expert_choice().route(torch.cat([first, torch.tensor([[9.0, 0.0], [9.0, 0.0]])]), RouteContext())
    assert alone.topk_ids[0].tolist() == [0, -1]
    assert with_later.topk_ids[0].tolist() == [-1, 1]


def test_expert_choice_says_it_is_non_causal_across_the_batch():
    assert ExpertChoiceRouter.batch_dependent
    assert "non-causal across the batch" in ExpertChoiceRouter.__doc__


@settings(max_examples=60, deadline=None)
@given(
    num_tokens=st.integers(1, 40),
    num_experts=st.integers(2, 9),
    k=st.integers(1, 3),
    capacity_factor=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
)
def test_every_expert_takes_exactly_min_c_t_tokens(num_tokens, num_experts, k, capacity_factor, seed):
    k = min(k, num_experts)
    logits = torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(seed))
    plan = expert_choice(num_experts, k, capacity_factor=capacity_factor).route(logits, RouteContext())
    capacity = min(num_tokens, math.ceil(round(capacity_factor * num_tokens * k / num_experts, 9)))
    assert plan.expert_counts(num_experts).tolist() == [capacity] * num_experts
    # a chosen token scores at least as high, for that expert, as any token it passed over
    probs = torch.softmax(logits, dim=-1)
    lowest_chosen = torch.where(plan.kept, probs, float("inf")).min(dim=0).values
    highest_skipped = torch.where(plan.kept, float("-inf"), probs).max(dim=0).values
    assert bool((lowest_chosen >= highest_skipped).all())
