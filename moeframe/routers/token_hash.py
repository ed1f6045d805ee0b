"""Hash routing (Roller et al., 2021, "Hash Layers For Large Sparse Models").

A token's experts are a fixed function of its token id, never of its hidden
state: every (token id, expert) pair gets a 32-bit integer hash (Thomas
Mueller's multiply-xorshift mixer, salted with seed and layer), and the k
experts with the largest hashes are the token's, i.e. k hashes that cannot
collide. Each weighs 1/k (times the checkpoint's routed_scaling_factor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.options import check_k, resolve_k
from moeframe.routers.plan import RoutingPlan

MASK32 = 0xFFFFFFFF
MIX = 0x45D9F3B


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer on int64 tensors; products stay below 2**59, so nothing overflows."""
    x = (((x >> 16) ^ x) * MIX) & MASK32
    x = (((x >> 16) ^ x) * MIX) & MASK32
    return (x >> 16) ^ x


def token_expert_hash(token_ids: torch.Tensor, num_experts: int, salt: int) -> torch.Tensor:
    """[T, E] int64 hash of each (token id, expert) pair."""
    experts = torch.arange(num_experts, device=token_ids.device)
    pair = (token_ids.long().unsqueeze(1) * num_experts + experts) & MASK32
    return mix32(mix32(pair) ^ (salt & MASK32))


@dataclass(frozen=True)
class HashParams:
    k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_k(self.k)


@ROUTERS.register("hash", params=HashParams)
class HashRouter(Router):
    reads_gate_logits = False

    def __init__(self, params: HashParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.k = resolve_k(params.k, moe)
        self.salt = mix32(torch.tensor(params.seed * 100_003 + layer_idx)).item()
        self.scale = moe.routed_scaling_factor

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        if ctx.token_ids is None:
            raise ValueError("the hash router needs the token ids in RouteContext")
        num_experts = gate_logits.shape[1]
        # hash * E + expert is unique per token, so the top-k has no ties to break
        keys = token_expert_hash(ctx.token_ids.to(gate_logits.device), num_experts, self.salt) * num_experts
        ids = torch.topk(keys + torch.arange(num_experts, device=keys.device), self.k, dim=-1).indices
        return RoutingPlan(ids, torch.full(ids.shape, self.scale / self.k, device=ids.device))
