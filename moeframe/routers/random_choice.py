"""Uniform random routing: the floor of any routing ablation.

Each token gets k distinct experts drawn uniformly, from a generator seeded by
(seed, layer) so a run is repeatable; every kept expert weighs 1/k (times the
checkpoint's routed_scaling_factor). The generator advances with every
forward, so the draw depends on the order of forwards, never on batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.options import check_k, resolve_k
from moeframe.routers.plan import RoutingPlan


@dataclass(frozen=True)
class RandomParams:
    k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_k(self.k)


@ROUTERS.register("random", params=RandomParams)
class RandomRouter(Router):
    def __init__(self, params: RandomParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.k = resolve_k(params.k, moe)
        self.seed = params.seed * 100_003 + layer_idx
        self.scale = moe.routed_scaling_factor
        self.generator: torch.Generator | None = None

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        if self.generator is None:
            self.generator = torch.Generator(device=gate_logits.device).manual_seed(self.seed)
        noise = torch.rand(gate_logits.shape, generator=self.generator, device=gate_logits.device)
        ids = torch.topk(noise, self.k, dim=-1).indices
        return RoutingPlan(ids, torch.full(ids.shape, self.scale / self.k, device=ids.device))
