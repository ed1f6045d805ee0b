"""Gate/up with SiLU-and-multiply of a decode-sized MoE batch as a GEMV per assignment.

act[a, n] = silu(x[t] . w13[e_a, n]) * (x[t] . w13[e_a, I + n]) for assignment
a = t * k + j of token t, through its expert e_a (rows of dropped assignments
are left untouched, as gate_up_silu_kernel leaves them). At one token an
expert's GEMM is a weight stream with a single useful row; the MMA-tiled
kernel of _fused_moe_kernels.py walks K in a software pipeline a few chunks
deep. Here a program issues every load of its tile at once: the expert id,
then its ``BLOCK_N`` gate rows and ``BLOCK_N`` up rows whole (K padded to a
power of two) and the token's row, so each SM has as many bytes in flight as
its registers hold (the shape of the prefetching GEMVs of
model/layers/_prefetch_gemv_kernel.py and _down_prefetch_kernel.py, which can
load before the PDL wait; this one cannot, as the router that names the
experts runs just before it). Products and sums in float32, SiLU and the
product in float32, rounded once, one fixed order per output.

Imported lazily (see gate_up_gemv.py): Triton decides at decoration time
whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait


@triton.jit
def gate_up_gemv_tile(
    x_ptr,
    w13_ptr,
    act_ptr,
    topk_ids_ptr,
    assignment,
    tile_n,
    top_k,
    hidden,
    inter,
    num_experts,
    stride_xm,
    stride_we,
    stride_wn,
    stride_am,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WEIGHT_EVICT: tl.constexpr,
):
    """Rows ``tile_n * BLOCK_N ..`` of act for one assignment; nothing where it is dropped (also the one-launch kernel's gate/up tile).

    ``WEIGHT_EVICT``: the weight loads' L2 eviction policy (moeframe/gpu/l2_prefetch.py; "" for the default).
    """
    rows = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    expert = tl.load(topk_ids_ptr + assignment).to(tl.int32)
    if (expert >= 0) & (expert < num_experts):
        row_ok = rows < inter
        col_ok = cols < hidden
        mask = row_ok[:, None] & col_ok[None, :]
        gate_ptrs = w13_ptr + expert.to(tl.int64) * stride_we + rows.to(tl.int64)[:, None] * stride_wn + cols[None, :]
        gate_w = tl.load(gate_ptrs, mask=mask, other=0.0, eviction_policy=WEIGHT_EVICT)
        up_w = tl.load(gate_ptrs + inter * stride_wn, mask=mask, other=0.0, eviction_policy=WEIGHT_EVICT)
        token = assignment // top_k
        x = tl.load(x_ptr + token.to(tl.int64) * stride_xm + cols, mask=col_ok, other=0.0).to(tl.float32)
        gate = tl.sum(gate_w.to(tl.float32) * x[None, :], axis=1)
        up = tl.sum(up_w.to(tl.float32) * x[None, :], axis=1)
        act = gate * tl.sigmoid(gate) * up
        tl.store(act_ptr + assignment.to(tl.int64) * stride_am + rows, act.to(act_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def gate_up_gemv_kernel(
    x_ptr,
    w13_ptr,
    act_ptr,
    topk_ids_ptr,
    top_k,
    hidden,
    inter,
    num_experts,
    stride_xm,
    stride_we,
    stride_wn,
    stride_am,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WEIGHT_EVICT: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    gate_up_gemv_tile(
        x_ptr, w13_ptr, act_ptr, topk_ids_ptr, tl.program_id(0), tl.program_id(1), top_k, hidden, inter, num_experts,
        stride_xm, stride_we, stride_wn, stride_am, BLOCK_N, BLOCK_K, WEIGHT_EVICT,
    )  # fmt: skip
