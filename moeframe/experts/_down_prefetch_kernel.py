"""The down projection of a decode-sized MoE batch with its expert weights loaded before the PDL wait.

out[a, n] = weight[a] * (act[a] . w2[e_a, n]) for assignment a (row ``t * k + j``
of token t's j-th expert, the layout gate/up writes), zeros where e_a is -1.
In a decode step this kernel follows gate/up, and the routing that names the
experts was written two or more launches earlier, so under programmatic
dependent launch (moeframe/gpu/pdl.py) a program may read its expert id and
stream its whole ``[BLOCK_N, I]`` weight tile into registers while gate/up
still runs: only the activation row (a few KB, written by gate/up) and the
routing weight wait. The down kernel of _fused_moe_kernels.py waits before its
first load, so its weight stream starts only as gate/up drains; the same move
as _prefetch_gemv_kernel.py for the dense projections, per assignment here.
One program reduces each output in one fixed order (float32 products and sum,
scaled by the routing weight, rounded once), so a step's bits do not vary.
The tile's two halves: down_weight_tile before the wait, down_store_tile after it.

Imported lazily (see triton_moe.py): Triton decides at decoration time
whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait


@triton.jit
def down_weight_tile(
    w2_ptr,
    topk_ids_ptr,
    assignment,
    tile_n,
    hidden,
    inter,
    num_experts,
    stride_we,
    stride_wn,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WEIGHT_EVICT: tl.constexpr,
):
    """The expert id and ``[BLOCK_N, BLOCK_K]`` weight tile of one assignment: (tile, routed); no weight loaded if dropped.

    ``WEIGHT_EVICT``: the weight loads' L2 eviction policy (moeframe/gpu/l2_prefetch.py; "" for the default).
    """
    rows = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < inter
    expert = tl.load(topk_ids_ptr + assignment).to(tl.int32)
    routed = (expert >= 0) & (expert < num_experts)
    expert = tl.where(routed, expert, 0)
    w_ptrs = w2_ptr + expert.to(tl.int64) * stride_we + rows.to(tl.int64)[:, None] * stride_wn + cols[None, :]
    # a dropped assignment (routed false) loads no weight: no row is below a limit of 0
    load_rows = rows < tl.where(routed, hidden, 0)
    w = tl.load(w_ptrs, mask=load_rows[:, None] & col_ok[None, :], other=0.0, eviction_policy=WEIGHT_EVICT)
    return w, routed


@triton.jit
def down_store_tile(
    act_ptr,
    out_ptr,
    weights_ptr,
    w,
    routed,
    assignment,
    tile_n,
    hidden,
    inter,
    stride_am,
    stride_om,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out rows of one assignment from its loaded weight tile, its act row and routing weight; zeros if dropped."""
    rows = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < inter
    x = tl.load(act_ptr + assignment.to(tl.int64) * stride_am + cols, mask=col_ok, other=0.0).to(tl.float32)
    weight = tl.load(weights_ptr + assignment)
    acc = tl.sum(w.to(tl.float32) * x[None, :], axis=1) * weight
    acc = tl.where(routed, acc, 0.0)
    tl.store(out_ptr + assignment.to(tl.int64) * stride_om + rows, acc.to(out_ptr.dtype.element_ty), mask=rows < hidden)


@triton.jit
def down_prefetch_kernel(
    act_ptr,
    w2_ptr,
    out_ptr,
    weights_ptr,
    topk_ids_ptr,
    hidden,
    inter,
    num_experts,
    stride_am,
    stride_we,
    stride_wn,
    stride_om,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WEIGHT_EVICT: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    assignment = tl.program_id(0)
    tile_n = tl.program_id(1)
    w, routed = down_weight_tile(
        w2_ptr, topk_ids_ptr, assignment, tile_n, hidden, inter, num_experts, stride_we, stride_wn, BLOCK_N, BLOCK_K,
        WEIGHT_EVICT,
    )  # fmt: skip
    pdl_wait(USE_PDL)
    down_store_tile(
        act_ptr, out_ptr, weights_ptr, w, routed, assignment, tile_n, hidden, inter, stride_am, stride_om, BLOCK_N, BLOCK_K
    )
