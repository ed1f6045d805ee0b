"""The expert-kernel interface: tokens, stacked expert weights and a RoutingPlan in, mixed outputs out.

Weights arrive stacked as vLLM and SGLang keep them: ``w13`` [E, 2*I, H]
(gate rows first, then up rows) and ``w2`` [E, H, I]. A kernel may convert
them once at load (``prepare``) into the layout it wants.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from moeframe.model.layers.topk_sum import MoEOutput
from moeframe.routers.plan import RoutingPlan


class ExpertsKernel(ABC):
    def prepare(self, w13: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert stacked weights once at load; the default keeps them as they are."""
        return w13, w2

    @abstractmethod
    def forward(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        """hidden [T, H] -> sum over kept assignments of weight * down(silu(gate(h)) * up(h)), [T, H]."""

    def forward_unreduced(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> MoEOutput:
        """``forward``, or the k weighted assignment rows unsummed (a PendingTopkSum) where summing them is a launch of its own.

        The block that holds the experts locally calls this, so the next norm
        can take the sum (model/layers/topk_sum.py); runners that send the
        output on (moeframe/parallel) call ``forward``. The default sums.
        """
        return self.forward(hidden, w13, w2, plan)
