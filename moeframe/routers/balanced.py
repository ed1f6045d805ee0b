"""Load-balanced routing: no expert serves more than ceil(T * k / E * (1 + slack)) assignments.

``method=greedy`` is capacity-constrained greedy assignment (the greedy
relaxation of BASE Layers' balanced assignment, Lewis et al., 2021): (token,
expert) pairs are taken in order of descending score while the token has
fewer than k experts and the expert has room. ``method=sinkhorn`` first
balances the score matrix with a few Sinkhorn iterations (as S-BASE does,
Clark et al., 2022), takes each token's top-k of the balanced scores, then
enforces the same cap by dropping each expert's lowest-scored overflow.
Balanced scores only choose; the weights are the checkpoint-style scores of
the experts a token finally kept (renormalised over those when asked). A
token whose experts all ran full keeps fewer than k (dropped columns are -1).
Batch-dependent: a token's experts depend on its batch-mates' scores. The
greedy loop syncs with the host once per round, so it cannot sit inside a
captured CUDA graph; Sinkhorn can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.capacity import expert_capacity, keep_within_capacity
from moeframe.routers.options import check_k, resolve_k, resolve_renormalize
from moeframe.routers.plan import RoutingPlan
from moeframe.routers.scoring import assignment_weights, expert_log_scores, expert_scores

METHODS = ("greedy", "sinkhorn")


def greedy_assign(scores: torch.Tensor, k: int, capacity: int) -> torch.Tensor:
    """Sequential greedy by descending score, computed vectorised: ids [T, k], best first, -1 padded.

    Pairs are served in one global order (score descending, ties by row-major
    index). Without caps every token would keep its first k live pairs. Where
    an expert's wanted pairs first overflow its capacity, that expert's pairs
    from there on can never be served (removing pairs only lets tokens want
    more pairs, so the expert fills no later than that), so they are removed
    for every overflowing expert at once and the token ranks recomputed; the
    fixed point is the sequential loop's result.
    """
    num_tokens, num_experts = scores.shape
    n = scores.numel()
    device = scores.device
    position = torch.empty(n, dtype=torch.long, device=device)
    position[torch.sort(scores.flatten(), descending=True, stable=True).indices] = torch.arange(n, device=device)
    position = position.view(num_tokens, num_experts)
    by_token = position.argsort(dim=1)  # each token's experts in serving order
    by_expert = position.argsort(dim=0)  # each expert's tokens in serving order
    position_by_expert = position.gather(0, by_expert)
    alive = torch.ones_like(scores, dtype=torch.bool)
    # (cumsum of a bool tensor is slow on CPU, hence the int casts)
    while True:
        alive_by_token = alive.gather(1, by_token)
        wanted_by_token = alive_by_token & (alive_by_token.int().cumsum(dim=1) <= k)
        wanted = torch.zeros_like(alive).scatter_(1, by_token, wanted_by_token)
        wanted_by_expert = wanted.gather(0, by_expert)
        overflow = wanted_by_expert & (wanted_by_expert.int().cumsum(dim=0) > capacity)
        if not overflow.any():
            break
        first_overflow = position_by_expert.gather(0, overflow.int().argmax(dim=0, keepdim=True))
        alive &= position < torch.where(overflow.any(dim=0, keepdim=True), first_overflow, n)
    chosen_by_token = wanted.gather(1, by_token)
    # chosen experts first, each token's in serving (= score) order
    columns = torch.sort((~chosen_by_token).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    ids = by_token.gather(1, columns)
    return torch.where(chosen_by_token.gather(1, columns), ids, -1)


def sinkhorn_balance(log_scores: torch.Tensor, iterations: int) -> torch.Tensor:
    """Alternately normalise experts' columns and tokens' rows (log space); rows end summing to 1."""
    for _ in range(iterations):
        log_scores = log_scores - log_scores.logsumexp(dim=0, keepdim=True)
        log_scores = log_scores - log_scores.logsumexp(dim=1, keepdim=True)
    return log_scores


@dataclass(frozen=True)
class BalancedParams:
    method: str = "greedy"
    slack: float = 0.0
    k: int | None = None
    renormalize: bool | None = None
    sinkhorn_iters: int = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method='{self.method}': valid choices are {', '.join(METHODS)}")
        if self.slack < 0:
            raise ValueError(f"slack={self.slack}: must be >= 0 (capacity is T*k/E*(1+slack))")
        if self.sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters={self.sinkhorn_iters}: must be >= 1")
        check_k(self.k)


@ROUTERS.register("balanced", params=BalancedParams)
class BalancedRouter(Router):
    batch_dependent = True

    def __init__(self, params: BalancedParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.k = resolve_k(params.k, moe)
        self.renormalize = resolve_renormalize(params.renormalize, moe)
        self.method, self.slack, self.sinkhorn_iters = params.method, params.slack, params.sinkhorn_iters
        self.scoring, self.scale = moe.scoring, moe.routed_scaling_factor

    def capacity(self, num_tokens: int, num_experts: int) -> int:
        return expert_capacity(1.0 + self.slack, num_tokens, self.k, num_experts)

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        scores = expert_scores(gate_logits, self.scoring)
        capacity = self.capacity(*scores.shape)
        if self.method == "greedy":
            ids = greedy_assign(scores, self.k, capacity)
        else:
            balanced = sinkhorn_balance(expert_log_scores(gate_logits, self.scoring), self.sinkhorn_iters)
            top = torch.topk(balanced, self.k, dim=-1)
            kept = keep_within_capacity(top.indices, -top.values, capacity, scores.shape[1])
            ids = torch.where(kept, top.indices, -1)
        # weights over what each token finally kept
        return RoutingPlan(ids, assignment_weights(scores, ids, renormalize=self.renormalize, scale=self.scale))
