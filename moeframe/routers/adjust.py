"""Routing axes that compose with any router: a step on its gate logits before it, and on its plan after it.

- ``temperature``: the gate logits divided by it before the router reads
  them (softmax temperature, a balancing lever: above 1 flattens the gate's
  distribution, below 1 sharpens it).
- expert pruning: experts outside a layer's kept set get -inf logits, so
  every router that reads the logits routes among the kept experts only
  (their weights are dropped by engine/pruning.py, which ranks and sets them).
- ``skip_beta`` (dynamic skipping, Lu et al., ACL 2024, "Not All Experts are
  Equal"): a token's assignments weighing less than beta times its heaviest
  one are dropped (id -1, weight 0: the kernels skip them); the kept weights
  stay as the router made them, as the paper skips the computation only.
  beta = 0 drops nothing.

The base router is unchanged: with only skipping on, its fused gate launch
still runs; a logit step runs the gate GEMV and the router's torch (or
one-launch top-k) path instead. A router that ignores the gate logits (hash,
random) refuses a logit step rather than silently ignoring it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moeframe.routers.base import NormedRouting, RouteContext, Router
from moeframe.routers.gate import gate_logits
from moeframe.routers.plan import RoutingPlan


@dataclass(frozen=True)
class Adjustments:
    temperature: float = 1.0
    skip_beta: float = 0.0
    pruned: bool = False  # a kept-expert mask will be set (``AdjustedRouter.keep_only``)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"routing.temperature={self.temperature}: must be > 0 (1 leaves the gate as trained)")
        if not 0 <= self.skip_beta <= 1:
            raise ValueError(f"routing.skip_beta={self.skip_beta}: must lie in [0, 1] (0 skips nothing)")

    @property
    def touches_logits(self) -> bool:
        return self.temperature != 1.0 or self.pruned

    @property
    def any(self) -> bool:
        return self.touches_logits or self.skip_beta > 0


def skip_below(plan: RoutingPlan, beta: float) -> RoutingPlan:
    """Drop each token's assignments weighing less than beta times its heaviest kept one."""
    weights = plan.topk_weights
    top = weights.amax(dim=-1, keepdim=True)
    skip = plan.kept & (weights < beta * top)
    return RoutingPlan(plan.topk_ids.masked_fill(skip, -1), weights.masked_fill(skip, 0.0))


class AdjustedRouter(Router):
    """``base`` with the adjustments around it; built by ``adjusted`` only when some adjustment is on."""

    def __init__(self, base: Router, adjustments: Adjustments) -> None:
        if adjustments.touches_logits and not base.reads_gate_logits:
            raise ValueError(
                f"routing.temperature and routing.prune_experts act on the gate logits, which {type(base).__name__} ignores"
            )
        self.base, self.adjustments = base, adjustments
        self.batch_dependent = base.batch_dependent
        self.replays_routes = base.replays_routes
        self.logit_mask: torch.Tensor | None = None  # [E] float32: 0 for kept experts, -inf for pruned ones

    def keep_only(self, kept: torch.Tensor, num_experts: int) -> None:
        """Route among the experts ``kept`` (ids) only."""
        mask = torch.full((num_experts,), float("-inf"), device=kept.device)
        self.logit_mask = mask.index_fill_(0, kept, 0.0)

    def adjust_logits(self, gate_logits: torch.Tensor) -> torch.Tensor:
        logits = gate_logits.float()
        if self.adjustments.temperature != 1.0:
            logits = logits / self.adjustments.temperature
        if self.logit_mask is not None:
            logits = logits + self.logit_mask.to(logits.device)
        return logits

    def adjust_plan(self, plan: RoutingPlan) -> RoutingPlan:
        beta = self.adjustments.skip_beta
        return skip_below(plan, beta) if beta > 0 else plan

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        return self.adjust_plan(self.base.route(self.adjust_logits(gate_logits), ctx))

    def route_hidden(self, hidden_states: torch.Tensor, gate_weight: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        if self.adjustments.touches_logits:
            return self.route(gate_logits(hidden_states, gate_weight), ctx)
        return self.adjust_plan(self.base.route_hidden(hidden_states, gate_weight, ctx))

    def route_residual(
        self, h: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module, gate_weight: torch.Tensor, ctx: RouteContext
    ) -> NormedRouting:
        if self.adjustments.touches_logits:
            return super().route_residual(h, residual, norm, gate_weight, ctx)
        routed = self.base.route_residual(h, residual, norm, gate_weight, ctx)
        return routed._replace(plan=self.adjust_plan(routed.plan))


def adjusted(router: Router, adjustments: Adjustments) -> Router:
    """The router itself when no adjustment is on, so a default run takes exactly the path it took before."""
    return AdjustedRouter(router, adjustments) if adjustments.any else router
