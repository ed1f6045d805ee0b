"""aux_free: DeepSeek-V3's bias balancing; update_rate 0 is native routing."""

from __future__ import annotations

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext

DEEPSEEK = MoESpec(num_experts=16, top_k=4, intermediate_size=8, scoring="sigmoid", norm_topk_prob=True,
                   n_group=4, topk_group=2, routed_scaling_factor=2.5, has_correction_bias=True)
MIXTRAL = MoESpec(num_experts=8, top_k=2, intermediate_size=8, norm_topk_prob=True)


def aux_free(moe: MoESpec, **params):
    return ROUTERS.build({"name": "aux_free", **params}, moe=moe, layer_idx=0)


def test_without_updates_it_is_native_routing():
    generator = torch.Generator().manual_seed(0)
    for moe, bias in ((DEEPSEEK, torch.randn(16, generator=generator) * 0.1), (MIXTRAL, None)):
        router, native = aux_free(moe, update_rate=0.0), ROUTERS.build({"name": "native"}, moe=moe, layer_idx=0)
        for _ in range(3):
            logits = torch.randn(32, moe.num_experts, generator=generator)
            ctx = RouteContext(correction_bias=bias)
            plan, expected = router.route(logits, ctx), native.route(logits, ctx)
            assert torch.equal(plan.topk_ids, expected.topk_ids)
            assert torch.equal(plan.topk_weights, expected.topk_weights)
    assert not router.batch_dependent


def test_bias_moves_by_the_update_rate_against_the_load():
    router = aux_free(MoESpec(num_experts=4, top_k=1, intermediate_size=8), update_rate=0.5)
    # loads 2, 1, 1, 0 against a mean of 1
    logits = torch.tensor([[5.0, 0, 0, 0], [5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    router.route(logits, RouteContext())
    assert router.bias.tolist() == [-0.5, 0.0, 0.0, 0.5]
    assert router.batch_dependent


def test_bias_starts_from_the_checkpoint_correction_bias():
    router = aux_free(DEEPSEEK, update_rate=0.0)
    start = torch.linspace(-0.1, 0.1, 16)
    router.route(torch.randn(3, 16), RouteContext(correction_bias=start))
    assert torch.equal(router.bias, start)


def test_bias_steers_choice_away_from_an_overloaded_expert_but_not_the_weights():
    router = aux_free(MoESpec(num_experts=2, top_k=1, intermediate_size=8), update_rate=0.15)
    logits = torch.tensor([[0.4, 0.0]] * 4)  # softmax ~ (0.60, 0.40): everyone picks expert 0
    first = router.route(logits, RouteContext())
    assert first.topk_ids.flatten().tolist() == [0, 0, 0, 0]
    # the update opened a bias gap of 0.3, more than the 0.2 score gap
    second = router.route(logits, RouteContext())
    assert second.topk_ids.flatten().tolist() == [1, 1, 1, 1]
    assert torch.equal(second.topk_weights, torch.softmax(logits, dim=-1)[:, 1:])
