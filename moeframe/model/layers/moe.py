"""The MoE block: gate -> router -> expert kernel (-> shared experts).

    h -> router (gate logits -> routing) -> RoutingPlan -> parallel.dispatch -> experts -> parallel.combine

``forward_residual`` also takes the residual add and RMSNorm before the block,
so a router with a fused kernel can run them in its gate launch, and it may
hand on its output with the top-k sum still pending (topk_sum.py), for the
next layer's norm to take; ``forward`` always returns the summed [T, H].

The router, the expert kernel and the parallel strategy are components built
from the config and handed in; this block never knows which ones it holds.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from moeframe.experts.base import ExpertsKernel
from moeframe.model.layers.mlp import GatedMLP
from moeframe.model.layers.routes import StepRoutes
from moeframe.model.layers.small_gemv import project
from moeframe.model.layers.topk_sum import MoEOutput, plus, reduced
from moeframe.model.spec import MoESpec
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.plan import RoutingPlan


class RoutingObserver(Protocol):
    def record(self, layer_idx: int, plan: RoutingPlan) -> None: ...


class ExpertRunner(Protocol):
    """How routed tokens reach their experts: locally, or across ranks (moeframe/parallel).

    The output may leave its top-k sum pending (a PendingTopkSum); runners that
    move it between ranks return it summed.
    """

    def run_experts(
        self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan, kernel: ExpertsKernel
    ) -> MoEOutput: ...


class LocalExperts:
    """Every expert lives on this device: call the kernel directly, and let it leave the top-k sum to the next norm."""

    def run_experts(
        self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan, kernel: ExpertsKernel
    ) -> MoEOutput:
        return kernel.forward_unreduced(hidden, w13, w2, plan)


class MoEBlock(nn.Module):
    def __init__(
        self,
        spec: MoESpec,
        hidden_size: int,
        layer_idx: int,
        router: Router,
        kernel: ExpertsKernel,
        runner: ExpertRunner | None = None,
        observer: RoutingObserver | None = None,
    ) -> None:
        super().__init__()
        self.spec, self.layer_idx = spec, layer_idx
        self.router, self.kernel = router, kernel
        self.runner = runner or LocalExperts()
        self.observer = observer
        num_experts, inter = spec.num_experts, spec.intermediate_size
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        if spec.has_correction_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden_size))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, inter))
        self.shared_experts = GatedMLP(hidden_size, spec.shared_intermediate_size) if spec.shared_intermediate_size else None
        self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False) if spec.shared_expert_gate else None
        # After pruning (engine/pruning.py): expert id -> row of the cut w13/w2, -1 for a pruned expert;
        # one entry more than there are experts, so a dropped assignment's -1 reads the last one, -1.
        self.expert_rows: torch.Tensor | None = None

    def keep_experts(self, kept: torch.Tensor) -> None:
        """Keep the weights of the experts ``kept`` (ascending ids) only, freeing the others'."""
        self.w13 = nn.Parameter(self.w13.data[kept].clone(), requires_grad=False)
        self.w2 = nn.Parameter(self.w2.data[kept].clone(), requires_grad=False)
        rows = torch.full((self.spec.num_experts + 1,), -1, dtype=torch.int64, device=kept.device)
        self.expert_rows = rows.index_copy_(0, kept, torch.arange(kept.numel(), device=kept.device))

    def forward(
        self, x: torch.Tensor, token_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The block's output for normed hidden states x [T, H]."""
        plan = self.router.route_hidden(x, self.gate.weight, self._route_context(token_ids, positions))
        return reduced(self._run(x, plan))

    def forward_residual(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        norm: nn.Module,
        token_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        routes: StepRoutes | None = None,
    ) -> tuple[MoEOutput, torch.Tensor]:
        """(self(norm(h + residual)), h + residual): the block with the residual add and norm before it.

        The router runs the norm (``Router.route_residual``): native and top_k
        softmax routing fold it into their gate launch on CUDA decode batches;
        elsewhere it is ``norm.add_forward`` then ``forward``, number for number.
        The output's top-k sum may be pending: ``RMSNorm.add_forward`` takes it.
        ``routes``: the forward's routes to record and to follow (model/layers/routes.py).
        """
        replay = None if routes is None else routes.replay_ids(self.layer_idx)
        ctx = self._route_context(token_ids, positions, replay)
        routed = self.router.route_residual(h, residual, norm, self.gate.weight, ctx)
        out = self._run(routed.hidden_states, routed.plan)
        if routes is not None and routes.record is not None:
            routes.record.record(self.layer_idx, routed.plan)
        return out, routed.residual

    def _route_context(
        self, token_ids: torch.Tensor | None, positions: torch.Tensor | None, replay_ids: torch.Tensor | None = None
    ) -> RouteContext:
        bias = self.e_score_correction_bias if self.spec.has_correction_bias else None
        return RouteContext(token_ids=token_ids, correction_bias=bias, positions=positions, replay_ids=replay_ids)

    def _run(self, x: torch.Tensor, plan: RoutingPlan) -> MoEOutput:
        rows = plan if self.expert_rows is None else RoutingPlan(self.expert_rows[plan.topk_ids], plan.topk_weights)
        out = self.runner.run_experts(x, self.w13, self.w2, rows, self.kernel)
        if self.shared_experts is not None:
            shared = self.shared_experts(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(project(self.shared_expert_gate, x)) * shared
            out = plus(out, shared)
        # recorded after the experts: the batched recorder's launch at the last MoE layer then reads ids that
        # no longer come from the launch just before it, so it reads them beside the expert launches, off their path
        if self.observer is not None:
            self.observer.record(self.layer_idx, plan)
        return out
