"""The expert-kernel interface: tokens, stacked expert weights and a RoutingPlan in, mixed outputs out.

Weights arrive stacked as vLLM and SGLang keep them: ``w13`` [E, 2*I, H]
(gate rows first, then up rows) and ``w2`` [E, H, I]. A kernel may convert
them once at load (``prepare``) into the layout it wants.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from moeframe.routers.plan import RoutingPlan


class ExpertsKernel(ABC):
    def prepare(self, w13: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert stacked weights once at load; the default keeps them as they are."""
        return w13, w2

    @abstractmethod
    def forward(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        """hidden [T, H] -> sum over kept assignments of weight * down(silu(gate(h)) * up(h)), [T, H]."""
