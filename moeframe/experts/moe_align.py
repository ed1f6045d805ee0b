"""Sort (token, expert) assignments by expert and pad each expert's run to a block of rows.

The fused-MoE kernels (vLLM's and SGLang's ``fused_moe``, whose design this
follows) compute one block of ``block_m`` rows against one expert's weights,
so the assignments are laid out expert by expert, each expert's run padded up
to a multiple of ``block_m``. Here that is plain torch with static shapes and
no host synchronisation, so it can be captured in a CUDA graph.

Dropped assignments (``topk_ids == -1``) are gathered into one extra bucket,
expert id ``num_experts``, laid out after the real experts: the gate/up kernel
skips its blocks and the down kernel writes zeros for them, so the output
buffer never needs clearing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExpertBlocks:
    """Assignments in expert order, padded per expert to ``block_m`` rows.

    ``sorted_ids`` [P] int32: flat assignment index ``t * k + j`` for each
    padded row, or ``num_assignments`` on padding rows; ``block_expert``
    [P // block_m] int32: the expert of each block (``num_experts`` for the
    dropped bucket, -1 past the end); ``num_rows`` [1] int32: rows in use.

    ``one_per_block`` is the batch-1 layout, made without any pass: block b
    holds assignment b alone and ``block_expert`` is the flat ``topk_ids``
    (``sorted_ids`` and ``num_rows`` are then not read).
    """

    sorted_ids: torch.Tensor
    block_expert: torch.Tensor
    num_rows: torch.Tensor
    block_m: int
    num_assignments: int
    one_per_block: bool = False

    @property
    def padded_rows(self) -> int:
        return self.num_assignments * self.block_m if self.one_per_block else self.sorted_ids.numel()


def one_per_block(topk_ids: torch.Tensor, block_m: int) -> ExpertBlocks:
    flat = topk_ids.reshape(-1)
    return ExpertBlocks(flat, flat, flat, block_m, flat.numel(), one_per_block=True)


def max_padded_rows(num_assignments: int, num_buckets: int, block_m: int) -> int:
    """Rows needed in the worst case: every non-empty bucket wastes up to ``block_m - 1`` rows."""
    worst = num_assignments + min(num_buckets, num_assignments) * (block_m - 1)
    return -(-worst // block_m) * block_m


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertBlocks:
    flat = topk_ids.reshape(-1)
    num_assignments = flat.numel()
    device = flat.device
    bucket = torch.where(flat >= 0, flat, num_experts)
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, bucket, torch.ones_like(bucket))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    start = torch.cumsum(counts, 0) - counts

    order = torch.sort(bucket, stable=True).indices
    sorted_bucket = bucket[order]
    rank = torch.arange(num_assignments, device=device) - start[sorted_bucket]
    dest = padded_start[sorted_bucket] + rank

    rows = max_padded_rows(num_assignments, num_experts + 1, block_m)
    sorted_ids = torch.full((rows,), num_assignments, dtype=torch.int32, device=device)
    sorted_ids[dest] = order.to(torch.int32)

    block_start = torch.arange(0, rows, block_m, device=device)
    block_expert = torch.searchsorted(padded_end, block_start, right=True)
    block_expert = torch.where(block_expert <= num_experts, block_expert, -1).to(torch.int32)
    return ExpertBlocks(
        sorted_ids=sorted_ids,
        block_expert=block_expert,
        num_rows=padded_end[-1:].to(torch.int32),
        block_m=block_m,
        num_assignments=num_assignments,
    )
