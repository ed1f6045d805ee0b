"""native routing: hand-made logits, a brute-force restatement, and transformers' own router modules."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DeepseekV3Config, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext

HIDDEN = 16


def native(moe: MoESpec):
    return ROUTERS.build({"name": "native"}, moe=moe, layer_idx=0)


def deepseek_spec(num_experts=16, top_k=4, n_group=4, topk_group=2, norm=True, scale=2.5) -> MoESpec:
    return MoESpec(
        num_experts=num_experts, top_k=top_k, intermediate_size=8, scoring="sigmoid", norm_topk_prob=norm,
        n_group=n_group, topk_group=topk_group, routed_scaling_factor=scale, has_correction_bias=True,
    )


def test_softmax_native_takes_top_k_of_softmax_without_renormalising():
    moe = MoESpec(num_experts=4, top_k=2, intermediate_size=8, norm_topk_prob=False)
    plan = native(moe).route(torch.tensor([[0.0, 2.0, -1.0, 1.0]]), RouteContext())
    z = math.exp(0) + math.exp(2) + math.exp(-1) + math.exp(1)
    assert plan.topk_ids.tolist() == [[1, 3]]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([[math.exp(2) / z, math.exp(1) / z]]))


def test_mixtral_native_renormalises_over_the_top_k():
    moe = MoESpec(num_experts=4, top_k=2, intermediate_size=8, norm_topk_prob=True)
    plan = native(moe).route(torch.tensor([[0.0, 2.0, -1.0, 1.0]]), RouteContext())
    assert plan.topk_ids.tolist() == [[1, 3]]
    torch.testing.assert_close(plan.topk_weights, torch.tensor([[math.e / (math.e + 1), 1 / (math.e + 1)]]))


@pytest.mark.parametrize("norm", [False, True])
def test_native_softmax_equals_brute_force_restatement(norm):
    moe = MoESpec(num_experts=8, top_k=3, intermediate_size=8, norm_topk_prob=norm)
    logits = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    plan = native(moe).route(logits, RouteContext())
    for row, ids, weights in zip(logits.tolist(), plan.topk_ids.tolist(), plan.topk_weights.tolist()):
        z = sum(math.exp(x) for x in row)
        probs = [math.exp(x) / z for x in row]
        best = sorted(range(8), key=lambda e: -probs[e])[:3]
        total = sum(probs[e] for e in best) if norm else 1.0
        assert ids == best
        assert weights == pytest.approx([probs[e] / total for e in best], rel=1e-5)


SOFTMAX_FAMILIES = {
    "mixtral": (MixtralTopKRouter, lambda norm: MixtralConfig(hidden_size=HIDDEN, num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": (Qwen2MoeTopKRouter, lambda norm: Qwen2MoeConfig(hidden_size=HIDDEN, num_experts=8, num_experts_per_tok=2, norm_topk_prob=norm)),
    "qwen3_moe": (Qwen3MoeTopKRouter, lambda norm: Qwen3MoeConfig(hidden_size=HIDDEN, num_experts=8, num_experts_per_tok=3, norm_topk_prob=norm)),
    "olmoe": (OlmoeTopKRouter, lambda norm: OlmoeConfig(hidden_size=HIDDEN, num_experts=8, num_experts_per_tok=2, norm_topk_prob=norm)),
}


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("family", sorted(SOFTMAX_FAMILIES))
def test_native_equals_transformers_router_of_softmax_family(family, norm):
    router_cls, make_config = SOFTMAX_FAMILIES[family]
    config = make_config(norm)
    torch.manual_seed(0)
    reference = router_cls(config)
    torch.nn.init.normal_(reference.weight)
    hidden = torch.randn(64, HIDDEN)
    with torch.no_grad():
        logits, ref_weights, ref_ids = reference(hidden)
    moe = MoESpec(
        num_experts=reference.num_experts, top_k=reference.top_k, intermediate_size=8,
        norm_topk_prob=True if family == "mixtral" else norm,
    )
    plan = native(moe).route(logits.float(), RouteContext())
    assert torch.equal(plan.topk_ids, ref_ids)
    assert torch.equal(plan.topk_weights, ref_weights)


def sorted_by_expert(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = ids.argsort(dim=1)
    return ids.gather(1, order), weights.gather(1, order)


@pytest.mark.parametrize("n_group,topk_group,norm", [(4, 2, True), (1, 1, True), (8, 3, False)])
def test_native_equals_transformers_deepseek_v3_router(n_group, topk_group, norm):
    config = DeepseekV3Config(
        hidden_size=HIDDEN, n_routed_experts=16, num_experts_per_tok=4, n_group=n_group, topk_group=topk_group,
        norm_topk_prob=norm, routed_scaling_factor=2.5,
    )
    torch.manual_seed(1)
    reference = DeepseekV3TopkRouter(config)
    torch.nn.init.normal_(reference.weight)
    reference.e_score_correction_bias.normal_(0, 0.1)
    hidden = torch.randn(64, HIDDEN)
    with torch.no_grad():
        logits, ref_weights, ref_ids = reference(hidden)
    moe = deepseek_spec(n_group=n_group, topk_group=topk_group, norm=norm)
    plan = native(moe).route(logits, RouteContext(correction_bias=reference.e_score_correction_bias))
    ids, weights = sorted_by_expert(plan.topk_ids, plan.topk_weights)
    expected_ids, expected_weights = sorted_by_expert(ref_ids, ref_weights)
    assert torch.equal(ids, expected_ids)
    assert torch.equal(weights, expected_weights)


def brute_force_deepseek(logits: torch.Tensor, bias: torch.Tensor, moe: MoESpec) -> tuple[list[list[int]], list[list[float]]]:
    """DeepSeek-V3 routing restated token by token in plain Python."""
    group_size = moe.num_experts // moe.n_group
    all_ids, all_weights = [], []
    for row in logits.tolist():
        scores = [1 / (1 + math.exp(-x)) for x in row]
        choice = [s + b for s, b in zip(scores, bias.tolist())]
        group_score = [sum(sorted(choice[g * group_size:(g + 1) * group_size])[-2:]) for g in range(moe.n_group)]
        groups = sorted(range(moe.n_group), key=lambda g: -group_score[g])[: moe.topk_group]
        eligible = [e for e in range(moe.num_experts) if e // group_size in groups]
        ids = sorted(eligible, key=lambda e: -choice[e])[: moe.top_k]
        weights = [scores[e] for e in ids]
        total = sum(weights) + 1e-20 if moe.norm_topk_prob else 1.0
        all_ids.append(ids)
        all_weights.append([w / total * moe.routed_scaling_factor for w in weights])
    return all_ids, all_weights


def test_native_deepseek_equals_brute_force_restatement():
    moe = deepseek_spec()
    torch.manual_seed(2)
    logits, bias = torch.randn(32, 16), torch.randn(16) * 0.1
    plan = native(moe).route(logits, RouteContext(correction_bias=bias))
    ids, weights = brute_force_deepseek(logits, bias, moe)
    assert plan.topk_ids.tolist() == ids
    torch.testing.assert_close(plan.topk_weights, torch.tensor(weights))


def test_deepseek_group_limit_excludes_the_best_expert_of_a_weak_group():
    # 4 groups of 2; group 0 holds the single best expert but a poor partner
    moe = deepseek_spec(num_experts=8, top_k=2, n_group=4, topk_group=2, norm=True, scale=1.0)
    logits = torch.tensor([[5.0, -5.0, 1.0, 0.8, 2.0, 0.5, -1.0, -1.0]])
    plan = native(moe).route(logits, RouteContext(correction_bias=torch.zeros(8)))
    s = torch.sigmoid(logits[0])
    # group sums: g0 = s(5)+s(-5) = 1.0, g1 = s(1)+s(.8) ~ 1.42, g2 = s(2)+s(.5) ~ 1.50, g3 small -> groups 2, 1
    assert plan.topk_ids.tolist() == [[4, 2]]
    torch.testing.assert_close(plan.topk_weights, torch.stack([s[4], s[2]]).unsqueeze(0) / (s[4] + s[2]))


def test_deepseek_correction_bias_changes_choice_but_not_weights():
    moe = deepseek_spec(num_experts=4, top_k=1, n_group=1, topk_group=1, norm=False, scale=2.0)
    logits = torch.tensor([[1.0, 0.0, -1.0, -2.0]])
    plan = native(moe).route(logits, RouteContext(correction_bias=torch.tensor([0.0, 0.5, 0.0, 0.0])))
    assert plan.topk_ids.tolist() == [[1]]
    assert plan.topk_weights.tolist() == [[2.0 * 0.5]]


def test_deepseek_native_refuses_to_route_without_its_correction_bias():
    with pytest.raises(ValueError, match="e_score_correction_bias"):
        native(deepseek_spec()).route(torch.randn(2, 16), RouteContext())
