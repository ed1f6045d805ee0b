"""The gate projection of decode-sized batches as one Triton GEMV: logits [T, E] = x [T, H] @ W [E, H]^T in float32.

At batch 1 the gate is a memory-bound matrix-vector product over the fp32
gate weight (512 KB at OLMoE's E=64, H=2048): one program reading all of it
would stream it through a single SM, so the grid spreads it over many small
programs, one expert row (and a block of up to 4 tokens) each, which keeps
enough loads in flight across the SMs. The activations are cast to float32
as they are loaded, so no separate cast kernel runs. Products accumulate
elementwise across the H loop and are reduced once at the end: plain float32
arithmetic in another summation order than cuBLAS, never TF32.

This module is imported lazily (see gate.py): Triton decides at decoration
time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait


@triton.jit
def gate_logits_tile(
    x_ptr,
    w_ptr,
    out_ptr,
    expert,
    token_block,
    num_tokens,
    hidden,
    stride_x,
    stride_w,
    stride_out,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Store the logits of one expert row for one block of BLOCK_T tokens (shared with _gate_topk_kernel.py)."""
    rows = token_block * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    offs = tl.arange(0, BLOCK_H)
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for start in range(0, hidden, BLOCK_H):
        cols = start + offs
        col_ok = cols < hidden
        w = tl.load(w_ptr + expert * stride_w + cols, mask=col_ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc += x.to(tl.float32) * w[None, :]
    tl.store(out_ptr + rows * stride_out + expert, tl.sum(acc, axis=1), mask=row_ok)


@triton.jit
def gate_gemv_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    num_tokens,
    hidden,
    stride_x,
    stride_w,
    stride_out,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    gate_logits_tile(
        x_ptr, w_ptr, out_ptr, tl.program_id(0), tl.program_id(1), num_tokens, hidden, stride_x, stride_w, stride_out,
        BLOCK_T, BLOCK_H,
    )  # fmt: skip
