"""Host side of _gate_up_gemv_kernel.py: gate/up + SiLU of a few tokens as one GEMV per assignment.

Used by triton_moe.fused_moe where every assignment has a block of its own
(``one_per_block``, batch 1 and 2) and ``gemv_gate_up`` is on. A program
holds ``BLOCK_N`` gate rows and as many up rows of its expert, whole, within
``TILE_BYTES``; an expert whose single pair of rows exceeds that keeps the
MMA-tiled kernel.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.gpu.l2_prefetch import weight_eviction
from moeframe.gpu.pdl import pdl_args
from moeframe.gpu.register_tiles import whole_rows

# Bytes of w13 one program holds in registers (gate and up rows together): 8 + 8 rows of OLMoE's H = 2048 in bf16.
TILE_BYTES = 64 * 1024
# Tile elements per warp: 16 warps at OLMoE's 32k-element tile. With 8, ptxas interleaved each
# thread's 16 weight loads with the FMAs (two in flight a warp); on an H100 the batch-1 step
# span fell from 1,133 to 1,105 us with 16 (1,137 with 4).
ELEMENTS_PER_WARP = 2048
MAX_WARPS = 16


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.experts import _gate_up_gemv_kernel

    return _gate_up_gemv_kernel


def gate_up_gemv_rows(hidden: int, dtype: torch.dtype) -> int | None:
    """Gate rows (and as many up rows) one program holds within ``TILE_BYTES``; None if one pair is more."""
    return whole_rows(hidden, dtype, TILE_BYTES, rows_per_block_row=2)


def tile_warps(elements: int) -> int:
    """Warps of a program holding a weight tile of ``elements``: one per ELEMENTS_PER_WARP, a power of two in 4..MAX_WARPS."""
    return min(MAX_WARPS, max(4, triton.next_power_of_2(elements // ELEMENTS_PER_WARP)))


def gate_up_gemv_warps(block_n: int, block_k: int) -> int:
    """Warps of a program holding ``block_n`` gate and up rows ``block_k`` wide (``tile_warps``)."""
    return tile_warps(2 * block_n * block_k)


def run_gate_up_gemv(x: torch.Tensor, w13: torch.Tensor, flat_ids: torch.Tensor, act: torch.Tensor, top_k: int) -> None:
    """act[a] = silu(x[a // k] @ w_gate^T) * (x[a // k] @ w_up^T) through expert flat_ids[a]; dropped rows untouched.

    ``x`` [T, H] and ``act`` [T * k, I] have unit stride along their last dim;
    ``flat_ids`` [T * k] is contiguous.
    """
    num_experts, two_inter, hidden = w13.shape
    inter = two_inter // 2
    block_n = gate_up_gemv_rows(hidden, w13.dtype)
    if block_n is None:
        raise ValueError(f"run_gate_up_gemv holds whole row pairs of at most {TILE_BYTES} bytes: H = {hidden} is too long")
    if flat_ids.numel() == 0:
        return
    block_k = triton.next_power_of_2(hidden)
    grid = (flat_ids.numel(), -(-inter // block_n))
    _kernels().gate_up_gemv_kernel[grid](
        x, w13, act, flat_ids, top_k, hidden, inter, num_experts,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, WEIGHT_EVICT=weight_eviction(x), num_warps=gate_up_gemv_warps(block_n, block_k),
        **pdl_args(x),
    )  # fmt: skip
