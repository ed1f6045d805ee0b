"""Token-choice top-k routing with optional capacity dropping (Switch Transformer, GShard).

Each token picks its k best experts by ``score``; with a capacity factor, each
expert serves at most ceil(capacity_factor * T * k / E) assignments in GShard's
order (all first choices by token position, then all second choices, ...; for
k = 1 this is Switch's position order) and drops the rest. Null options take
the checkpoint's values, so ``k=null score=null renormalize=null`` reproduces
native routing of the softmax families. On DeepSeek-V3 this is plain top-k:
no correction bias, no group limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext
from moeframe.routers.capacity import drop_assignments, expert_capacity, gshard_priority, keep_within_capacity
from moeframe.routers.gate_topk import FusedSoftmaxTopKRouter, GateTopK
from moeframe.routers.native import softmax_topk
from moeframe.routers.options import (
    check_k,
    check_positive,
    check_scoring,
    resolve_k,
    resolve_renormalize,
    resolve_scoring,
)
from moeframe.routers.plan import RoutingPlan
from moeframe.routers.scoring import assignment_weights, expert_scores


@dataclass(frozen=True)
class TopKParams:
    k: int | None = None
    score: str | None = None
    renormalize: bool | None = None
    capacity_factor: float | None = None

    def __post_init__(self) -> None:
        check_k(self.k)
        check_scoring(self.score)
        check_positive("capacity_factor", self.capacity_factor)


@ROUTERS.register("top_k", params=TopKParams)
class TopKRouter(FusedSoftmaxTopKRouter):
    def __init__(self, params: TopKParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.k = resolve_k(params.k, moe)
        self.scoring = resolve_scoring(params.score, moe)
        self.renormalize = resolve_renormalize(params.renormalize, moe)
        self.capacity_factor = params.capacity_factor
        self.scale = moe.routed_scaling_factor
        self.batch_dependent = params.capacity_factor is not None
        self.gate_topk = GateTopK()

    @property
    def plain_softmax(self) -> bool:
        """Softmax top-k without capacity: the path native routing takes, with its fused kernels on CUDA."""
        return self.capacity_factor is None and self.scoring == "softmax"

    def softmax_topk_args(self) -> tuple[int, bool, float] | None:
        return (self.k, self.renormalize, self.scale) if self.plain_softmax else None

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        if self.plain_softmax:
            # the native softmax path (one kernel on CUDA), so top1/top2 ablations cost what native costs
            return softmax_topk(gate_logits, self.k, self.renormalize, self.scale)
        scores = expert_scores(gate_logits, self.scoring)
        ids = torch.topk(scores, self.k, dim=-1).indices
        plan = RoutingPlan(ids, assignment_weights(scores, ids, renormalize=self.renormalize, scale=self.scale))
        if self.capacity_factor is None:
            return plan
        num_tokens, num_experts = scores.shape
        capacity = expert_capacity(self.capacity_factor, num_tokens, self.k, num_experts)
        priority = gshard_priority(num_tokens, self.k, scores.device)
        return drop_assignments(plan, keep_within_capacity(ids, priority, capacity, num_experts))
