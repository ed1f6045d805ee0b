"""The ranking arguments of the decode GEMV expert kernels when the router left its top-k to them.

Under ``experts.rank_topk`` the router's launch stops at the gate logits
(routers/gate_topk.py, plan.PendingTopk) and each program of gate/up and down
ranks its token's logits for its own assignment (routers/_topk_kernel.py's
routed_assignment): the routing launch then ends without its last-program count
and top-k, a memory round trip and a reduction on a batch-1 step's path.
"""

from __future__ import annotations

import torch

from moeframe.routers.plan import PendingTopk

# Experts a program ranks at once: routed_assignment compares every pair of a token's E scores (E * E in registers),
# as softmax_topk_rows does up to its RANK_TILE of 16,384 comparisons.
MAX_RANKED_EXPERTS = 128


def pending_args(
    pending: PendingTopk | None, top_k: int, num_experts: int, flat_ids: torch.Tensor, flat_weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    """(logits, weights, scale, renormalize) for a GEMV kernel's ranking arguments (placeholders without ``pending``)."""
    if pending is None:
        return flat_ids, flat_ids, 1.0, False
    logits = pending.logits
    if pending.k != top_k or logits.shape != (flat_ids.numel() // top_k, num_experts) or not logits.is_contiguous():
        raise ValueError(
            f"pending top-{pending.k} logits {list(logits.shape)} for {flat_ids.numel()} assignments of top-{top_k} "
            f"over {num_experts} experts: want a contiguous [{flat_ids.numel() // top_k}, {num_experts}] and k = {top_k}"
        )
    if flat_weights is None or flat_weights.dtype != torch.float32 or flat_weights.numel() != flat_ids.numel():
        raise ValueError("a pending top-k needs the assignments' float32 weights to write")
    return logits, flat_weights, float(pending.scale), pending.renormalize
