"""balanced: the load cap always holds; greedy equals the sequential algorithm; Sinkhorn balances."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext
from moeframe.routers.balanced import greedy_assign, sinkhorn_balance


def balanced(num_experts=2, top_k=1, norm=False, **params):
    moe = MoESpec(num_experts=num_experts, top_k=top_k, intermediate_size=8, norm_topk_prob=norm)
    return ROUTERS.build({"name": "balanced", **params}, moe=moe, layer_idx=0)


def sequential_greedy(scores: torch.Tensor, k: int, capacity: int) -> list[list[int]]:
    """The greedy assignment as a loop: pairs by descending score, ties in row-major order."""
    num_tokens, num_experts = scores.shape
    pairs = sorted(
        ((scores[t, e].item(), t * num_experts + e) for t in range(num_tokens) for e in range(num_experts)),
        key=lambda pair: -pair[0],
    )
    taken: list[list[int]] = [[] for _ in range(num_tokens)]
    load = [0] * num_experts
    for _, flat in pairs:
        t, e = divmod(flat, num_experts)
        if len(taken[t]) < k and load[e] < capacity:
            taken[t].append(e)
            load[e] += 1
    return [row + [-1] * (k - len(row)) for row in taken]


def test_greedy_gives_the_contested_expert_to_its_strongest_claimants():
    # all four tokens prefer expert 0; capacity = ceil(4 * 1 / 2) = 2
    logits = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    plan = balanced().route(logits, RouteContext())
    assert plan.topk_ids.tolist() == [[1], [0], [1], [0]]
    probs = torch.softmax(logits, dim=-1)
    assert torch.equal(plan.topk_weights, probs.gather(1, plan.topk_ids))


def test_slack_raises_the_cap():
    logits = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    # capacity = ceil(4 * 1 / 2 * 1.5) = 3
    plan = balanced(slack=0.5).route(logits, RouteContext())
    assert plan.topk_ids.tolist() == [[0], [0], [1], [0]]


@settings(max_examples=80, deadline=None)
@given(
    num_tokens=st.integers(1, 12),
    num_experts=st.integers(2, 7),
    k=st.integers(1, 3),
    extra=st.integers(0, 4),
    coarse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_greedy_assign_equals_the_sequential_loop(num_tokens, num_experts, k, extra, coarse, seed):
    k = min(k, num_experts)
    generator = torch.Generator().manual_seed(seed)
    # coarse scores make ties common, so the tie convention is checked too
    scores = torch.randint(0, 3, (num_tokens, num_experts), generator=generator).float() if coarse else torch.rand(num_tokens, num_experts, generator=generator)
    capacity = math.ceil(num_tokens * k / num_experts) + extra
    assert greedy_assign(scores, k, capacity).tolist() == sequential_greedy(scores, k, capacity)


@settings(max_examples=80, deadline=None)
@given(
    num_tokens=st.integers(1, 48),
    num_experts=st.integers(2, 9),
    k=st.integers(1, 4),
    slack=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    method=st.sampled_from(["greedy", "sinkhorn"]),
    skew=st.floats(0.0, 4.0),
    seed=st.integers(0, 2**16),
)
def test_balanced_never_exceeds_its_capacity(num_tokens, num_experts, k, slack, method, skew, seed):
    k = min(k, num_experts)
    router = balanced(num_experts, k, norm=True, method=method, slack=slack)
    logits = torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(seed))
    logits[:, 0] += skew  # one popular expert
    plan = router.route(logits, RouteContext())
    capacity = math.ceil(round(num_tokens * k / num_experts * (1 + slack), 9))
    assert int(plan.expert_counts(num_experts).max()) <= capacity
    kept_ids = [sorted(e for e in row if e >= 0) for row in plan.topk_ids.tolist()]
    assert all(len(set(row)) == len(row) for row in kept_ids)
    has_kept = plan.kept.any(dim=1)
    torch.testing.assert_close(plan.topk_weights.sum(dim=1)[has_kept], torch.ones(int(has_kept.sum())))


def test_sinkhorn_equalises_expert_mass_and_keeps_rows_normalised():
    log_scores = torch.log_softmax(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) + torch.tensor([3.0, 0, 0, 0]), -1)
    balanced_scores = sinkhorn_balance(log_scores, iterations=50).exp()
    torch.testing.assert_close(balanced_scores.sum(dim=1), torch.ones(64))
    torch.testing.assert_close(balanced_scores.sum(dim=0), torch.full((4,), 16.0), rtol=1e-3, atol=1e-3)


def test_sinkhorn_routing_spreads_load_a_skewed_gate_would_concentrate():
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) + torch.tensor([3.0, 0, 0, 0])
    plain = ROUTERS.build({"name": "top_k", "k": 1}, moe=MoESpec(num_experts=4, top_k=1, intermediate_size=8), layer_idx=0)
    # a generous slack: the balancing, not the cap, must spread the load
    plan = balanced(4, 1, method="sinkhorn", slack=3.0, sinkhorn_iters=10).route(logits, RouteContext())
    assert int(plan.expert_counts(4).max()) < int(plain.route(logits, RouteContext()).expert_counts(4).max())
    assert int(plan.expert_counts(4).max()) <= 20  # fair share: 16 each
