"""Host side of _moe_gemv_one_launch_kernel.py: gate/up + SiLU and the down projection of a few tokens in one launch.

Used by triton_moe.fused_moe where every assignment has a block of its own
(``one_per_block``, batch 1 and 2) and ``one_launch_gemv`` is on: the work of
gate_up_gemv.py and down_prefetch.py, their tiles and numbers, with one grid
ramp and tail instead of two and no kernel boundary between them. Its
programs wait on one another through int32 counters in device memory that
each launch leaves at zero; ``OneLaunchCounters`` owns them per device, as
routers/gate_topk.GateTopK owns its counts.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.experts.gate_up_gemv import gate_up_gemv_rows, gate_up_gemv_warps, tile_warps
from moeframe.gpu.l2_prefetch import weight_eviction
from moeframe.gpu.pdl import pdl_args
from moeframe.gpu.register_tiles import whole_rows

# Bytes of w2 a down tile holds: as many as gate/up's tile (gate_up_gemv.TILE_BYTES), 32 rows of
# OLMoE's I = 1024 in bf16, so at the 16 warps gate/up runs with each thread holds as many weights
# in either kind of tile (the launch has one num_warps).
DOWN_TILE_BYTES = 64 * 1024
# Counters ahead of the per-assignment ones: the tile drawn next, programs finished.
HEAD_COUNTERS = 2


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.experts import _moe_gemv_one_launch_kernel

    return _moe_gemv_one_launch_kernel


def one_launch_down_rows(inter: int, dtype: torch.dtype) -> int | None:
    """Rows of w2 a down tile holds within ``DOWN_TILE_BYTES``; None if one row is more."""
    return whole_rows(inter, dtype, DOWN_TILE_BYTES)


def one_launch_fits(hidden: int, inter: int, dtype: torch.dtype) -> bool:
    """Whether a gate/up row pair and a down row each fit their tile (else the two-launch or tiled kernels run)."""
    return gate_up_gemv_rows(hidden, dtype) is not None and one_launch_down_rows(inter, dtype) is not None


def one_launch_warps(gate_rows: int, hidden_block: int, down_rows: int, inter_block: int) -> int:
    """gate/up's warps (gate_up_gemv_warps), or more where the down tile is the larger."""
    return max(gate_up_gemv_warps(gate_rows, hidden_block), tile_warps(down_rows * inter_block))


def counter_elements(num_assignments: int) -> int:
    """int32 counters a launch over ``num_assignments`` uses: [tile, done, ready[A], taken[A]]."""
    return HEAD_COUNTERS + 2 * num_assignments


class OneLaunchCounters:
    """Zeroed counters per device, grown (newly zeroed) when a launch has more assignments than any before.

    Every launch leaves them at zero, so one tensor serves every layer and
    CUDA-graph replay; the first, eager step (before capture) sizes them.
    """

    def __init__(self) -> None:
        self._counters: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device, num_assignments: int) -> torch.Tensor:
        counters = self._counters.get(device)
        if counters is None or counters.numel() < counter_elements(num_assignments):
            counters = torch.zeros(counter_elements(num_assignments), dtype=torch.int32, device=device)
            self._counters[device] = counters
        return counters


def run_moe_gemv_one_launch(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    flat_ids: torch.Tensor,
    weights: torch.Tensor,
    act: torch.Tensor,
    out: torch.Tensor,
    top_k: int,
    counters: torch.Tensor,
) -> None:
    """run_gate_up_gemv then run_down_prefetch, as one launch: act and out as those two write them.

    ``x`` [T, H], ``act`` [A, I] and ``out`` [A, H] have unit stride along
    their last dim; ``flat_ids`` [A] and ``weights`` [A] (float32) are
    contiguous; ``counters`` (int32, contiguous, at least
    ``counter_elements(A)``) are zero and are left at zero.
    """
    num_experts, two_inter, hidden = w13.shape
    inter = two_inter // 2
    gate_rows, down_rows = gate_up_gemv_rows(hidden, w13.dtype), one_launch_down_rows(inter, w2.dtype)
    if gate_rows is None or down_rows is None:
        raise ValueError(f"run_moe_gemv_one_launch holds whole rows in its tiles: H = {hidden} or I = {inter} is too long")
    num_assignments = flat_ids.numel()
    if counters.dtype != torch.int32 or counters.numel() < counter_elements(num_assignments):
        raise ValueError(f"counters must be int32 with at least {counter_elements(num_assignments)} elements")
    if num_assignments == 0:
        return
    hidden_block, inter_block = triton.next_power_of_2(hidden), triton.next_power_of_2(inter)
    gate_tiles, down_tiles = -(-inter // gate_rows), -(-hidden // down_rows)
    grid = (num_assignments * (gate_tiles + down_tiles),)
    _kernels().moe_gemv_one_launch_kernel[grid](
        x, w13, w2, act, out, weights, flat_ids, counters,
        num_assignments, top_k, hidden, inter, num_experts, gate_tiles, down_tiles,
        x.stride(0), w13.stride(0), w13.stride(1), w2.stride(0), w2.stride(1), act.stride(0), out.stride(0),
        BLOCK_N_GATE=gate_rows, BLOCK_K_GATE=hidden_block, BLOCK_N_DOWN=down_rows, BLOCK_K_DOWN=inter_block,
        WEIGHT_EVICT=weight_eviction(x),
        num_warps=one_launch_warps(gate_rows, hidden_block, down_rows, inter_block), **pdl_args(x),
    )  # fmt: skip
