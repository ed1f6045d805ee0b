"""The router interface: gate logits of a layer in, a RoutingPlan out.

The MoE layer hands a router its hidden states and gate weight
(``route_hidden``); by default the router takes the float32 gate logits and
routes them (``route``). A router whose routing has a fused kernel that also
computes the logits (native and top_k's softmax top-k on CUDA decode,
gate_topk.py) overrides ``route_hidden`` to save the launch between them.
Likewise the MoE layer hands over the residual add and RMSNorm before it
(``route_residual``): by default the router runs the norm and then
``route_hidden``; one with a kernel that folds the norm in as well overrides it.

A router instance is built once per MoE layer, so a stateful router (such as
DeepSeek-V3's auxiliary-loss-free bias) keeps its own per-layer state. The MoE
layer never knows which router it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from moeframe.routers.gate import gate_logits
from moeframe.routers.plan import RoutingPlan


@dataclass
class RouteContext:
    """What a router may look at besides the gate logits."""

    token_ids: torch.Tensor | None = None
    correction_bias: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # each token's position in its sequence
    replay_ids: torch.Tensor | None = None  # [T, k] ids to follow, -1 rows where none is given (router=replay)


class NormedRouting(NamedTuple):
    """What ``Router.route_residual`` returns: the plan and the norm's two results."""

    plan: RoutingPlan
    hidden_states: torch.Tensor  # norm(h + residual): the experts' input
    residual: torch.Tensor  # h + residual: the residual stream after the block


class Router(ABC):
    # True when a token's routing depends on the other tokens of its batch
    # (expert choice, capacity-limited routing): outputs are then not causal
    # across a batch, and the engine reports it.
    batch_dependent: bool = False
    # False for a router whose plan ignores the gate logits (hash, random): a step on
    # the logits (routing.temperature, expert pruning) cannot act on it and is refused.
    reads_gate_logits: bool = True
    # True when the router follows given routes (RouteContext.replay_ids): the runner then
    # builds them per step from the requests, and decodes eagerly (a graph's inputs are fixed).
    replays_routes: bool = False

    @abstractmethod
    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        """gate_logits: [T, E] float32."""

    def route_hidden(self, hidden_states: torch.Tensor, gate_weight: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        """hidden_states: [T, H] in the model's dtype; gate_weight: [E, H]. Routes ``gate_logits`` unless overridden."""
        return self.route(gate_logits(hidden_states, gate_weight), ctx)

    def route_residual(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        norm: nn.Module,
        gate_weight: torch.Tensor,
        ctx: RouteContext,
    ) -> NormedRouting:
        """The residual add and norm before the block, then ``route_hidden`` of the normed rows.

        h: the attention output [T, H]; residual: the stream it adds to (None:
        no add, as norm.add_forward). Runs ``norm.add_forward`` unless
        overridden by a router whose fused kernel also runs the norm.
        """
        hidden_states, residual = norm.add_forward(h, residual)
        return NormedRouting(self.route_hidden(hidden_states, gate_weight, ctx), hidden_states, residual)
