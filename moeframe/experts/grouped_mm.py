"""``experts=grouped_mm``: the MoE as two ``torch._grouped_mm`` calls over tokens sorted by expert.

The layout torchtitan uses for its MoE: gather the kept assignments in expert
order, run one grouped GEMM per projection with the group ends (``offs``,
int32) of each expert, apply SiLU-and-multiply between them, then put the
weighted rows back in assignment order and sum each token's k rows. Shapes
are static (dropped assignments ride at the end, past the last group, and are
masked out), so it can be captured in a CUDA graph.

``torch._grouped_mm`` wants 16-byte aligned data and, in each matrix, one
unit stride with the other stride a multiple of 16 bytes; on CUDA it runs bf16
on compute capability 9.0 and newer (CUTLASS) and falls back to a loop of
matmuls on some older parts, depending on the torch build. A shape or device
it cannot take fails at the first forward with a message naming the fix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeframe.experts import EXPERTS
from moeframe.experts.base import ExpertsKernel
from moeframe.registry import NoParams
from moeframe.routers.plan import RoutingPlan


class GroupedMMUnsupported(RuntimeError):
    """torch._grouped_mm cannot run these shapes, dtype or device; choose experts=triton or experts=reference."""


def check_supported(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> None:
    if not hasattr(torch, "_grouped_mm"):
        raise GroupedMMUnsupported(f"torch {torch.__version__} has no torch._grouped_mm; use experts=triton or experts=reference")
    align = 16 // hidden.element_size()
    hidden_size, inter = w2.shape[1], w2.shape[2]
    if hidden_size % align or inter % align:
        raise GroupedMMUnsupported(
            f"torch._grouped_mm needs hidden ({hidden_size}) and expert width ({inter}) to be multiples of {align} "
            f"for {hidden.dtype} (16-byte strides); use experts=triton or experts=reference"
        )
    if hidden.device.type == "cuda" and hidden.dtype != torch.bfloat16:
        raise GroupedMMUnsupported(f"torch._grouped_mm on CUDA runs bfloat16 only, got {hidden.dtype}; use experts=triton")


def grouped_experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
    num_tokens, top_k = plan.topk_ids.shape
    num_experts = w13.shape[0]
    flat_ids = plan.topk_ids.reshape(-1)
    kept = flat_ids >= 0
    # Dropped assignments sort last, into the rows past the final group end.
    order = torch.sort(torch.where(kept, flat_ids, num_experts), stable=True).indices
    counts = torch.zeros(num_experts, dtype=torch.int32, device=hidden.device)
    counts.scatter_add_(0, flat_ids.clamp(min=0), kept.to(torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)

    token_of_row = order // top_k
    x = hidden[token_of_row]
    gate_up = torch._grouped_mm(x, w13.transpose(1, 2), offs=offs)
    gate, up = gate_up.chunk(2, dim=-1)
    act = (F.silu(gate) * up).contiguous()
    y = torch._grouped_mm(act, w2.transpose(1, 2), offs=offs)

    weight_of_row = plan.topk_weights.reshape(-1)[order].float()
    weighted = torch.where(kept[order, None], y.float() * weight_of_row[:, None], 0.0)
    # Back to assignment order, then a sum over k: deterministic, unlike an atomic scatter-add.
    per_assignment = torch.empty_like(weighted)
    per_assignment[order] = weighted
    return per_assignment.view(num_tokens, top_k, -1).sum(dim=1).to(hidden.dtype)


@EXPERTS.register("grouped_mm")
class GroupedMMExperts(ExpertsKernel):
    def __init__(self, params: NoParams, **_: object) -> None:
        self._checked: set[tuple] = set()

    def forward(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        key = (hidden.device, hidden.dtype, tuple(w2.shape))
        if key not in self._checked:
            check_supported(hidden, w13, w2)
            self._checked.add(key)
        return grouped_experts(hidden, w13, w2, plan)
