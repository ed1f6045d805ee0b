"""Auxiliary-loss-free load balancing (DeepSeek-V3 technical report, section 2.1.2; Wang et al., 2024).

Each layer keeps a per-expert bias that is added to the scores for choosing
only; the mixing weights stay the unbiased scores. After every forward the
bias moves by ``update_rate`` toward balance: bias += update_rate *
sign(mean_load - load), so overloaded experts become less attractive. The
selection is the checkpoint's own (group-limited for DeepSeek-V3, plain top-k
of softmax otherwise), and the bias starts from the checkpoint's
e_score_correction_bias where it has one, so update_rate=0 is native routing.

DeepSeek updates once per training step; here the update follows every
forward (prefill chunk or decode step), so a token's experts depend on what the
engine served before it: batch_dependent unless update_rate is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.native import check_group_limits, group_limited_topk, grouped, softmax_topk
from moeframe.routers.options import check_k, resolve_k
from moeframe.routers.plan import RoutingPlan


@dataclass(frozen=True)
class AuxFreeParams:
    update_rate: float = 1e-3
    k: int | None = None

    def __post_init__(self) -> None:
        if self.update_rate < 0:
            raise ValueError(f"update_rate={self.update_rate}: must be >= 0")
        check_k(self.k)


@ROUTERS.register("aux_free", params=AuxFreeParams)
class AuxFreeRouter(Router):
    def __init__(self, params: AuxFreeParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.k = resolve_k(params.k, moe)
        if grouped(moe):
            check_group_limits(moe, self.k)
        self.moe = moe
        self.update_rate = params.update_rate
        self.batch_dependent = params.update_rate > 0
        self.bias: torch.Tensor | None = None

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        if self.bias is None:
            start = ctx.correction_bias
            self.bias = torch.zeros(gate_logits.shape[1], device=gate_logits.device) if start is None else start.float().clone()
        moe = self.moe
        if not grouped(moe):
            plan = softmax_topk(gate_logits, self.k, moe.norm_topk_prob, moe.routed_scaling_factor, self.bias)
        else:
            plan = group_limited_topk(gate_logits, moe, self.k, self.bias)
        self.update(plan)
        return plan

    def update(self, plan: RoutingPlan) -> None:
        if plan.num_tokens == 0 or self.update_rate == 0:
            return
        load = torch.zeros_like(self.bias).index_add_(0, plan.topk_ids.clamp_min(0).flatten(), plan.kept.flatten().float())
        self.bias += self.update_rate * torch.sign(load.mean() - load)
