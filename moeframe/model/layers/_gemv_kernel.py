"""A dense projection of a decode-sized batch as one Triton kernel: out [T, N] = x [T, K] @ W [N, K]^T (+ bias).

At a few tokens the product is a stream over the weight, bounded by memory
bandwidth. cuBLAS's small-batch kernels tile the output rows 64 at a time, so
a 2048-row projection runs on 32 of an H100's 132 SMs. Here each program owns
only ``BLOCK_N`` output rows (16-64) and every token of the batch: the grid
spreads the rows over a few hundred programs, the weight is read once for
the whole batch, and each program walks K in ``BLOCK_K`` chunks that
Triton's software pipeliner keeps ``num_stages`` deep in flight. The
product is a ``tl.dot`` of the token block (padded to the MMA's 16 rows,
which costs no extra memory traffic) with the weight tile, as the small-M
configs of vLLM's and SGLang's Triton fused MoE compute a GEMV; it
accumulates in float32 and is rounded to the activations' dtype once, after
the bias is added, as cuBLAS's epilogue does. One program computes each
output element in one fixed order, so results do not depend on scheduling.

With ``NORM`` the kernel also runs the RMSNorm that precedes the projection
(norm.py's rms_norm / add_rms_norm), as TensorRT-LLM and SGLang fold a
decode layer's input norm into its first GEMM's prologue: every program first
walks the token rows (x, plus the residual with ``HAS_RESIDUAL``; a few KB
read from L2) for their float32 sum of squares, then normalises each K chunk
as it streams the weight, rounding where norm.py rounds: the sum to the
dtype, the normed row to the dtype, its product with the norm weight to the
dtype. Program 0 writes the summed row, the residual stream of the rest of
the layer.

Launched with PDL (moeframe/gpu/pdl.py) it waits for the previous kernel
before anything else. This module is imported lazily (see small_gemv.py):
Triton decides at decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait
from moeframe.model.layers._rms_norm_jit import rms_normed, summed_rows


@triton.jit
def gemv_kernel(
    x_ptr,
    res_ptr,
    norm_w_ptr,
    sum_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    num_tokens,
    N,
    K,
    eps,
    stride_xt,
    stride_xk,
    stride_rt,
    stride_rk,
    stride_wn,
    stride_ot,
    NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE_FP32: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    tokens = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    token_ok = tokens < num_tokens
    if NORM:
        sum_sq = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + offs_k
            mask = token_ok[:, None] & (cols < K)[None, :]
            x = summed_rows(x_ptr, res_ptr, tokens, cols, mask, stride_xt, stride_xk, stride_rt, stride_rk, HAS_RESIDUAL)
            if HAS_RESIDUAL:
                if pid == 0:
                    tl.store(sum_ptr + tokens[:, None] * K + cols[None, :], x, mask=mask)
            x = x.to(tl.float32)
            sum_sq += x * x
        inv_rms = tl.math.rsqrt(tl.sum(sum_sq, axis=1) / K + eps)
    # The weight tile is loaded as W^T [BLOCK_K, BLOCK_N]: K is contiguous in memory either way.
    # Row offsets in int64: a vocabulary-sized weight can hold more than 2^31 elements.
    w_ptrs = w_ptr + rows.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + offs_k
        k_ok = cols < K
        x = summed_rows(
            x_ptr, res_ptr, tokens, cols, token_ok[:, None] & k_ok[None, :], stride_xt, stride_xk, stride_rt, stride_rk,
            HAS_RESIDUAL,
        )  # fmt: skip
        if NORM:
            x = rms_normed(x, inv_rms, norm_w_ptr, cols, k_ok)
        w = tl.load(w_ptrs + start, mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + tokens[:, None] * stride_ot + rows[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=token_ok[:, None] & row_ok[None, :])
