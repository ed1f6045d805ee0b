"""Dynamic top-p routing (Huang et al., ACL 2024, "Harder Tasks Need More Experts: Dynamic Routing in MoE Models").

Each token takes the fewest experts, best first, whose softmax probability
mass reaches ``p``, never more than ``max_k``: a confident gate spends one
expert, an unsure one up to ``max_k``. The plan keeps ``max_k`` columns and
marks the columns a token does not use -1 with weight 0, the dropped
assignments every expert kernel already skips (RoutingPlan), so shapes stay
static (CUDA graphs capture it) and the fused kernels run unchanged. Weights
are the kept probabilities, renormalised over the kept experts when asked
(null: the checkpoint's norm_topk_prob), times routed_scaling_factor.
``p = 1`` keeps all ``max_k`` columns: top_k with k = max_k, number for number.
The probabilities are a softmax over the gate logits whatever the
checkpoint's scoring (a sigmoid gate's affinities do not sum to one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.options import check_k, resolve_k, resolve_renormalize
from moeframe.routers.plan import RoutingPlan
from moeframe.routers.scoring import assignment_weights


@dataclass(frozen=True)
class TopPParams:
    p: float = 0.9
    max_k: int | None = None  # null: the checkpoint's top_k
    renormalize: bool | None = None

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise ValueError(f"p={self.p}: the probability mass to reach must lie in (0, 1]")
        check_k(self.max_k)


def top_p_ids(probs: torch.Tensor, p: float, max_k: int) -> torch.Tensor:
    """[T, max_k] ids of the fewest best experts whose mass reaches p (-1 in the columns past them)."""
    top_probs, ids = torch.topk(probs, max_k, dim=-1)
    if p >= 1:
        return ids
    mass_before = top_probs.cumsum(dim=-1) - top_probs
    # the best expert always stays: its mass_before is exactly 0
    return ids.masked_fill(mass_before >= p, -1)


@ROUTERS.register("top_p", params=TopPParams)
class TopPRouter(Router):
    def __init__(self, params: TopPParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.p = params.p
        self.max_k = resolve_k(params.max_k, moe)
        self.renormalize = resolve_renormalize(params.renormalize, moe)
        self.scale = moe.routed_scaling_factor

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        probs = torch.softmax(gate_logits.float(), dim=-1)
        ids = top_p_ids(probs, self.p, self.max_k)
        return RoutingPlan(ids, assignment_weights(probs, ids, renormalize=self.renormalize, scale=self.scale))
