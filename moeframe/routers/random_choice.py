"""Uniform random routing: the floor of any routing ablation.

Each token gets k distinct experts drawn uniformly, every kept expert
weighing 1/k (times the checkpoint's routed_scaling_factor). The draw is a
seeded hash of (seed, layer, token id, position), the counter-based way of
drawing (as Philox draws from a key and a counter) rather than a generator
that advances with every forward: a token's experts depend on the token
alone, never on its row in the batch, its batch-mates or the order of
forwards, so the router is batch-invariant, a cached prefix keeps the
routing it was computed with, and a run repeats exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.options import check_k, resolve_k
from moeframe.routers.plan import RoutingPlan
from moeframe.routers.token_hash import MASK32, mix32, token_expert_hash


@dataclass(frozen=True)
class RandomParams:
    k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_k(self.k)


def random_keys(token_ids: torch.Tensor, positions: torch.Tensor, num_experts: int, salt: int) -> torch.Tensor:
    """[T, E] int64 pseudo-random keys, a function of (token id, position, expert, salt) only, distinct within a row."""
    position_salt = mix32((positions.long() & MASK32) ^ salt)
    keys = mix32(token_expert_hash(token_ids, num_experts, salt) ^ position_salt[:, None])
    # key * E + expert is unique per row, so the top-k has no ties to break
    return keys * num_experts + torch.arange(num_experts, device=keys.device)


@ROUTERS.register("random", params=RandomParams)
class RandomRouter(Router):
    reads_gate_logits = False

    def __init__(self, params: RandomParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.k = resolve_k(params.k, moe)
        self.salt = mix32(torch.tensor(params.seed * 100_003 + layer_idx + 0x5EED)).item()
        self.scale = moe.routed_scaling_factor

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        if ctx.token_ids is None or ctx.positions is None:
            raise ValueError("the random router needs the token ids and positions in RouteContext")
        device = gate_logits.device
        keys = random_keys(ctx.token_ids.to(device), ctx.positions.to(device), gate_logits.shape[1], self.salt)
        ids = torch.topk(keys, self.k, dim=-1).indices
        return RoutingPlan(ids, torch.full(ids.shape, self.scale / self.k, device=device))
