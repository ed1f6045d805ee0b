"""Routing axes on hand-made logits: dynamic top-p, temperature, dynamic skipping and the pruned-expert mask."""

from __future__ import annotations

import math

import pytest
import torch

from moeframe.errors import ConfigError
from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext, RoutingPlan
from moeframe.routers.adjust import AdjustedRouter, Adjustments, adjusted, skip_below

SOFTMAX = MoESpec(num_experts=4, top_k=2, intermediate_size=8)
# softmax of these logits is exactly proportional to 0.5, 0.3, 0.15, 0.05
PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
LOGITS = PROBS.log()


def build(node: dict, moe: MoESpec = SOFTMAX):
    return ROUTERS.build(node, moe=moe, layer_idx=0)


def ctx(num_tokens: int) -> RouteContext:
    return RouteContext(token_ids=torch.arange(num_tokens), positions=torch.arange(num_tokens))


@pytest.mark.parametrize(
    ("p", "ids"),
    [(0.45, [0, -1, -1]), (0.7, [0, 1, -1]), (0.85, [0, 1, 2]), (0.99, [0, 1, 2])],  # max_k=3 caps the last
)
def test_top_p_takes_the_fewest_best_experts_whose_mass_reaches_p(p, ids):
    plan = build({"name": "top_p", "p": p, "max_k": 3, "renormalize": False}).route(LOGITS, ctx(1))
    assert plan.topk_ids.tolist() == [ids]
    expected = [PROBS[0, i].item() if i >= 0 else 0.0 for i in ids]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([expected]))


def test_top_p_renormalises_over_the_kept_experts():
    plan = build({"name": "top_p", "p": 0.7, "max_k": 4, "renormalize": True}).route(LOGITS, ctx(1))
    assert plan.topk_ids.tolist() == [[0, 1, -1, -1]]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))


def test_top_p_uses_a_varying_number_of_experts_per_token():
    logits = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # confident, then uniform
    plan = build({"name": "top_p", "p": 0.6, "max_k": 4}).route(logits, ctx(2))
    assert plan.kept.sum(dim=1).tolist() == [1, 3]


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("max_k", [1, 2, 3])
def test_top_p_with_p_one_equals_top_k_with_k_max_k(max_k, renormalize):
    moe = MoESpec(num_experts=8, top_k=2, intermediate_size=8, routed_scaling_factor=1.5)
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(max_k))
    plan = build({"name": "top_p", "p": 1.0, "max_k": max_k, "renormalize": renormalize}, moe).route(logits, ctx(64))
    expected = build({"name": "top_k", "k": max_k, "renormalize": renormalize}, moe).route(logits, ctx(64))
    assert torch.equal(plan.topk_ids, expected.topk_ids)
    assert torch.equal(plan.topk_weights, expected.topk_weights)


@pytest.mark.parametrize("p", [0.0, -0.5, 1.5])
def test_top_p_outside_zero_one_is_refused(p):
    with pytest.raises(ConfigError, match="p="):
        build({"name": "top_p", "p": p})


def test_skipping_drops_experts_below_beta_times_the_top_weight_and_keeps_the_rest_as_they_were():
    plan = RoutingPlan(torch.tensor([[2, 0, 3], [1, 3, -1]]), torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.1, 0.0]]))
    skipped = skip_below(plan, 0.4)  # thresholds 0.24 and 0.2
    assert skipped.topk_ids.tolist() == [[2, 0, -1], [1, -1, -1]]
    assert torch.equal(skipped.topk_weights, torch.tensor([[0.6, 0.3, 0.0], [0.5, 0.0, 0.0]]))


@pytest.mark.parametrize(
    "node", [{"name": "native"}, {"name": "top_k", "k": 3}, {"name": "top_p", "p": 0.8}, {"name": "expert_choice"},
             {"name": "balanced"}, {"name": "hash"}, {"name": "random"}],
)
def test_skipping_with_beta_zero_equals_the_base_router(node):
    logits = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    base = build(node).route(logits, ctx(32))
    wrapped = AdjustedRouter(build(node), Adjustments(skip_beta=0.0)).route(logits, ctx(32))
    assert torch.equal(wrapped.topk_ids, base.topk_ids) and torch.equal(wrapped.topk_weights, base.topk_weights)
    assert torch.equal(skip_below(base, 0.0).topk_ids, base.topk_ids)


def test_skipping_composes_with_the_router_after_it_routes():
    router = adjusted(build({"name": "top_k", "k": 3, "renormalize": False}), Adjustments(skip_beta=0.55))
    plan = router.route(LOGITS, ctx(1))  # threshold 0.55 * 0.5 = 0.275: 0.3 stays, 0.15 goes
    assert plan.topk_ids.tolist() == [[0, 1, -1]]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([[0.5, 0.3, 0.0]]))


def test_temperature_divides_the_gate_logits_before_the_router():
    router = adjusted(build({"name": "top_k", "k": 1, "renormalize": False}), Adjustments(temperature=2.0))
    logits = torch.tensor([[math.log(4.0), 0.0, 0.0, 0.0]])  # at T=2 the softmax is 2/5, 1/5, 1/5, 1/5
    plan = router.route(logits, ctx(1))
    assert plan.topk_ids.tolist() == [[0]]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([[0.4]]))


def test_temperature_one_and_beta_zero_leave_the_router_itself():
    router = build({"name": "native"})
    assert adjusted(router, Adjustments()) is router


@pytest.mark.parametrize("name", ["hash", "random"])
def test_logit_steps_are_refused_for_routers_that_ignore_the_gate(name):
    with pytest.raises(ValueError, match="ignores"):
        adjusted(build({"name": name}), Adjustments(temperature=0.5))


@pytest.mark.parametrize(("field", "value"), [("temperature", 0.0), ("skip_beta", -0.1), ("skip_beta", 1.5)])
def test_bad_adjustments_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        Adjustments(**{field: value})


def test_pruned_experts_are_never_chosen_and_the_kept_share_the_softmax():
    router = adjusted(build({"name": "top_k", "k": 2, "renormalize": False}), Adjustments(pruned=True))
    router.keep_only(torch.tensor([1, 3]), 4)
    plan = router.route(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), ctx(1))
    e2 = math.exp(2.0)
    assert plan.topk_ids.tolist() == [[1, 3]]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([[e2 / (e2 + 1), 1 / (e2 + 1)]]))


def test_top_p_among_pruned_experts_reaches_p_over_the_kept_ones():
    router = adjusted(build({"name": "top_p", "p": 0.8, "max_k": 4, "renormalize": False}), Adjustments(pruned=True))
    router.keep_only(torch.tensor([1, 2, 3]), 4)
    plan = router.route(LOGITS, ctx(1))  # kept mass 0.3, 0.15, 0.05 -> 0.6, 0.3, 0.1
    assert plan.topk_ids.tolist() == [[1, 2, -1, -1]]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([[0.6, 0.3, 0.0, 0.0]]))
