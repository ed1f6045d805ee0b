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

This module is imported lazily (see small_gemv.py): Triton decides at
decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gemv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    num_tokens,
    N,
    K,
    stride_xt,
    stride_xk,
    stride_wn,
    stride_ot,
    HAS_BIAS: tl.constexpr,
    IEEE_FP32: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tokens = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    token_ok = tokens < num_tokens
    x_ptrs = x_ptr + tokens[:, None] * stride_xt + offs_k[None, :] * stride_xk
    # The weight tile is loaded as W^T [BLOCK_K, BLOCK_N]: K is contiguous in memory either way.
    w_ptrs = w_ptr + rows[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        k_ok = offs_k < K - start
        x = tl.load(x_ptrs, mask=token_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + tokens[:, None] * stride_ot + rows[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=token_ok[:, None] & row_ok[None, :])
