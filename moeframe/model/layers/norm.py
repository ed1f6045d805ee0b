"""RMSNorm (Zhang & Sennrich, 2019), computed in float32 as the HF Llama family does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moeframe.model.layers.fusion import fused_on_cuda
from moeframe.model.layers.topk_sum import MoEOutput, PendingTopkSum, assignment_total, reduced


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: MoEOutput, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the residual add fused with the next norm (as vLLM's fused_add_rms_norm).

        The first layer has no residual stream yet: (norm(x), x). An MoE
        output whose top-k sum is pending is summed in the same kernel
        (``add_topk_rms_norm``).
        """
        if residual is None:
            x = reduced(x)
            return self(x), x
        if isinstance(x, PendingTopkSum):
            return add_topk_rms_norm(x.parts, x.addend, residual, self.weight, self.eps)
        return add_rms_norm(x, residual, self.weight, self.eps)


@fused_on_cuda
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    return weight * normed.to(x.dtype)


def _add_and_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    total = x + residual
    normed = F.rms_norm(total.float(), (total.shape[-1],), eps=eps)
    return weight * normed.to(total.dtype), total


@fused_on_cuda
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_and_norm(x, residual, weight, eps)


@fused_on_cuda
def add_topk_rms_norm(
    parts: torch.Tensor, addend: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_rms_norm(PendingTopkSum(parts, addend).reduce(), residual, ...)`` number for number, the sum in the norm's kernel."""
    return _add_and_norm(assignment_total(parts, addend), residual, weight, eps)
