"""Host side of _down_prefetch_kernel.py: the down projection of a few tokens, expert weights loaded before the PDL wait.

Used by triton_moe.fused_moe where every assignment has a block of its own
(``one_per_block``, batch 1 and 2): the expert ids come straight from the
router, two launches before, so each program may start its weight stream
while gate/up runs. A program holds ``BLOCK_N`` whole rows of its expert's
down matrix (I padded to a power of two) in registers, at most
``TILE_BYTES``; an intermediate size whose single row exceeds that keeps the
pipelined down kernel.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.gpu.l2_prefetch import weight_eviction
from moeframe.gpu.pdl import pdl_args
from moeframe.gpu.register_tiles import whole_rows

# Bytes of weight one program holds in registers: 16 rows of OLMoE's I = 1024 in bf16.
TILE_BYTES = 32 * 1024


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.experts import _down_prefetch_kernel

    return _down_prefetch_kernel


def down_prefetch_rows(inter: int, dtype: torch.dtype) -> int | None:
    """Rows of w2 one program holds within ``TILE_BYTES``; None if one row is more."""
    return whole_rows(inter, dtype, TILE_BYTES)


def run_down_prefetch(act: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor, flat_ids: torch.Tensor, out: torch.Tensor) -> None:
    """out[a] = weights[a] * (act[a] @ w2[flat_ids[a]]^T) for each assignment a; zeros where flat_ids[a] is -1.

    ``flat_ids`` [A] and ``weights`` [A] (float32) are contiguous; ``act`` [A, I]
    and ``out`` [A, H] have unit stride along their last dim.
    """
    num_experts, hidden, inter = w2.shape
    block_n = down_prefetch_rows(inter, w2.dtype)
    if block_n is None:
        raise ValueError(f"run_down_prefetch holds whole rows of at most {TILE_BYTES} bytes: I = {inter} is too long")
    num_assignments = flat_ids.numel()
    if num_assignments == 0:
        return
    block_k = triton.next_power_of_2(inter)
    grid = (num_assignments, -(-hidden // block_n))
    _kernels().down_prefetch_kernel[grid](
        act, w2, out, weights, flat_ids, hidden, inter, num_experts,
        act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, WEIGHT_EVICT=weight_eviction(act), num_warps=8 if block_n * block_k >= 8192 else 4,
        **pdl_args(act),
    )  # fmt: skip
