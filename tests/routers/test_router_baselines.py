"""random and hash baselines."""

from __future__ import annotations

import pytest
import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext
from moeframe.routers.token_hash import MASK32, MIX

MOE = MoESpec(num_experts=8, top_k=3, intermediate_size=8)


def build(name: str, layer_idx: int = 0, moe: MoESpec = MOE, **params):
    return ROUTERS.build({"name": name, **params}, moe=moe, layer_idx=layer_idx)


def tokens(num_tokens: int, token_id: int | None = None) -> RouteContext:
    """Token ids 0.. (or all ``token_id``) at positions 0.."""
    ids = torch.arange(num_tokens) if token_id is None else torch.full((num_tokens,), token_id)
    return RouteContext(token_ids=ids, positions=torch.arange(num_tokens))


def test_random_gives_k_distinct_experts_weighted_one_over_k():
    plan = build("random").route(torch.zeros(50, 8), tokens(50))
    assert plan.topk_ids.shape == (50, 3)
    assert all(len(set(row)) == 3 for row in plan.topk_ids.tolist())
    assert torch.equal(plan.topk_weights, torch.full((50, 3), 1 / 3))


def test_random_repeats_with_seed_and_layer_and_differs_across_layers_and_seeds():
    logits = torch.zeros(20, 8)
    a, b = build("random", seed=7).route(logits, tokens(20)), build("random", seed=7).route(logits, tokens(20))
    other_layer = build("random", layer_idx=1, seed=7).route(logits, tokens(20))
    other_seed = build("random", seed=8).route(logits, tokens(20))
    assert torch.equal(a.topk_ids, b.topk_ids)
    assert not torch.equal(a.topk_ids, other_layer.topk_ids)
    assert not torch.equal(a.topk_ids, other_seed.topk_ids)


def test_random_draw_is_a_function_of_token_id_and_position_not_of_the_row_or_the_forward():
    router = build("random", seed=3)
    alone = router.route(torch.randn(1, 8), RouteContext(token_ids=torch.tensor([42]), positions=torch.tensor([5])))
    router.route(torch.zeros(4, 8), tokens(4))  # an unrelated forward in between changes nothing
    batch = RouteContext(token_ids=torch.tensor([7, 42, 42, 9]), positions=torch.tensor([0, 5, 6, 5]))
    in_batch = router.route(torch.randn(4, 8), batch)
    assert in_batch.topk_ids[1].tolist() == alone.topk_ids[0].tolist()
    assert in_batch.topk_ids[2].tolist() != alone.topk_ids[0].tolist() or in_batch.topk_ids[3].tolist() != alone.topk_ids[0].tolist()


def test_random_ignores_the_gate_and_covers_experts_evenly_over_positions():
    plan = build("random", moe=MoESpec(num_experts=8, top_k=1, intermediate_size=8)).route(
        torch.tensor([[9.0] + [0.0] * 7]).expand(8000, 8), tokens(8000, token_id=11)
    )
    counts = plan.expert_counts(8)
    assert int(counts.min()) > 850 and int(counts.max()) < 1150  # 1000 each, ~5 standard deviations


def test_random_needs_token_ids_and_positions():
    with pytest.raises(ValueError, match="positions"):
        build("random").route(torch.zeros(2, 8), RouteContext(token_ids=torch.tensor([1, 2])))


def reference_hash(token_id: int, expert: int, num_experts: int, salt: int) -> int:
    def mix(x: int) -> int:
        x = (((x >> 16) ^ x) * MIX) & MASK32
        x = (((x >> 16) ^ x) * MIX) & MASK32
        return (x >> 16) ^ x

    return mix(mix((token_id * num_experts + expert) & MASK32) ^ salt)


def test_hash_experts_are_the_k_largest_of_a_fixed_hash_of_the_token_id():
    router = build("hash", layer_idx=2, seed=5)
    token_ids = torch.tensor([0, 1, 17, 31999, 17])
    plan = router.route(torch.randn(5, 8), RouteContext(token_ids=token_ids))
    for token_id, row in zip(token_ids.tolist(), plan.topk_ids.tolist()):
        ranked = sorted(range(8), key=lambda e: (reference_hash(token_id, e, 8, router.salt), e), reverse=True)
        assert row == ranked[:3]
    assert torch.equal(plan.topk_weights, torch.full((5, 3), 1 / 3))


def test_hash_depends_on_the_token_id_only():
    router = build("hash")
    alone = router.route(torch.randn(1, 8), RouteContext(token_ids=torch.tensor([42])))
    in_batch = router.route(torch.randn(3, 8), RouteContext(token_ids=torch.tensor([7, 42, 9])))
    assert alone.topk_ids[0].tolist() == in_batch.topk_ids[1].tolist()


def test_hash_spreads_a_vocabulary_evenly():
    plan = build("hash", moe=MoESpec(num_experts=8, top_k=1, intermediate_size=8)).route(
        torch.zeros(8000, 8), RouteContext(token_ids=torch.arange(8000))
    )
    counts = plan.expert_counts(8)
    assert int(counts.min()) > 850 and int(counts.max()) < 1150


def test_hash_needs_token_ids():
    with pytest.raises(ValueError, match="token ids"):
        build("hash").route(torch.zeros(2, 8), RouteContext())
