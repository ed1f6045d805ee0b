"""Expert-choice routing (Zhou et al., 2022, "Mixture-of-Experts with Expert Choice Routing").

Experts pick tokens instead of tokens picking experts: with token-to-expert
softmax scores S [T, E], each expert takes its top-C tokens of the batch,
C = ceil(capacity_factor * T * k / E) (at most T), so every expert is exactly
full and a token gets anywhere from 0 to E experts. The plan therefore has E
columns: column e holds e where expert e chose the token (weight S[t, e]) and
-1 elsewhere.

Non-causal across the batch: whether a token reaches an expert depends on the
scores of every other token in the same forward, including later positions and
other requests, so outputs change with batch composition (batch_dependent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.capacity import expert_capacity
from moeframe.routers.options import check_k, check_positive, resolve_k
from moeframe.routers.plan import RoutingPlan
from moeframe.routers.scoring import expert_scores


@dataclass(frozen=True)
class ExpertChoiceParams:
    capacity_factor: float = 1.0
    k: int | None = None

    def __post_init__(self) -> None:
        check_positive("capacity_factor", self.capacity_factor)
        check_k(self.k)


@ROUTERS.register("expert_choice", params=ExpertChoiceParams)
class ExpertChoiceRouter(Router):
    """Each expert takes its top-C tokens of the batch: non-causal across the batch, batch_dependent."""

    batch_dependent = True

    def __init__(self, params: ExpertChoiceParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.k = resolve_k(params.k, moe)
        self.capacity_factor = params.capacity_factor
        self.scale = moe.routed_scaling_factor

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        scores = expert_scores(gate_logits, "softmax")
        num_tokens, num_experts = scores.shape
        capacity = min(num_tokens, expert_capacity(self.capacity_factor, num_tokens, self.k, num_experts))
        # ties go to the earlier token
        chosen_tokens = torch.sort(scores, dim=0, descending=True, stable=True).indices[:capacity]
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(0, chosen_tokens, True)
        expert_ids = torch.arange(num_experts, device=scores.device).expand(num_tokens, num_experts)
        return RoutingPlan(
            topk_ids=torch.where(chosen, expert_ids, -1),
            topk_weights=torch.where(chosen, scores * self.scale, 0.0),
        )
