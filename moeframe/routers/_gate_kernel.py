"""The gate projection of decode-sized batches as one Triton GEMV: logits [T, E] = x [T, H] @ W [E, H]^T in float32.

At batch 1 the gate is a memory-bound matrix-vector product over the fp32
gate weight (512 KB at OLMoE's E=64, H=2048): one program reading all of it
would stream it through a single SM, so the grid spreads it over many small
programs, one expert row (and a block of up to 4 tokens) each, which keeps
enough loads in flight across the SMs. The activations are cast to float32
as they are loaded, so no separate cast kernel runs. Products accumulate
elementwise across the H loop and are reduced once at the end: plain float32
arithmetic in another summation order than cuBLAS, never TF32.

``norm_gate_logits_tile`` also runs the residual add and RMSNorm before the
gate (gate_topk.py's fused-norm launch), as norm_gemv folds the input norm into
the qkv projection (moeframe/model/layers/_gemv_kernel.py).

This module is imported lazily (see gate.py): Triton decides at decoration
time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait
from moeframe.model.layers._rms_norm_jit import rms_normed, rms_normed_by, summed_rows


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
def norm_gate_logits_tile(
    x_ptr,
    res_ptr,
    norm_w_ptr,
    sum_ptr,
    normed_ptr,
    w_ptr,
    w_row,
    norm_w_row,
    out_ptr,
    expert,
    num_experts,
    token_block,
    num_tokens,
    hidden,
    stride_x,
    stride_res,
    stride_w,
    stride_out,
    eps,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ROW_IN_TILE: tl.constexpr,
):
    """``gate_logits_tile`` of rms_norm(x + residual), norm.py's add_rms_norm computed in the gate's own programs.

    Every program needs the rms of its token block's full summed rows, so
    each takes it itself (a few KB read from L2) and then normalises the row
    as it streams its gate row, rounding where norm.py rounds: the sum to the
    dtype, the normed row to the dtype, its product with the norm weight to
    the dtype. With ``ROW_IN_TILE`` (hidden <= BLOCK_H: batch 1 up to
    H = 4096) every operand is loaded once, up front, and the gate row and
    the norm weight come in as ``w_row`` and ``norm_w_row`` (float32), loaded
    by the caller before its PDL wait (loaded after it, the norm weight was a
    second round trip to memory behind the sum of squares, on the critical
    path of a batch-1 step);
    otherwise two passes over H chunks, the first for the sum of squares,
    reading the gate row from ``w_ptr``. The summed rows (the residual stream) and
    the normed rows (the experts' input) are written once between all
    programs: the program of expert e writes columns
    [e * ceil(H / E), (e + 1) * ceil(H / E)) of its token block.
    """
    rows = token_block * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    offs = tl.arange(0, BLOCK_H)
    share = tl.cdiv(hidden, num_experts)
    own_lo = expert * share
    row_offs = rows[:, None] * hidden
    if ROW_IN_TILE:
        col_ok = offs < hidden
        mask = row_ok[:, None] & col_ok[None, :]
        owned = mask & ((offs >= own_lo) & (offs < own_lo + share))[None, :]
        total = summed_rows(x_ptr, res_ptr, rows, offs, mask, stride_x, 1, stride_res, 1, True)
        tl.store(sum_ptr + row_offs + offs[None, :], total, mask=owned)
        total_f32 = total.to(tl.float32)
        inv_rms = tl.math.rsqrt(tl.sum(total_f32 * total_f32, axis=1) / hidden + eps)
        normed = rms_normed_by(total, inv_rms, norm_w_row)
        tl.store(normed_ptr + row_offs + offs[None, :], normed, mask=owned)
        logits = tl.sum(normed.to(tl.float32) * w_row[None, :], axis=1)
    else:
        sum_sq = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
        for start in range(0, hidden, BLOCK_H):
            cols = start + offs
            mask = row_ok[:, None] & (cols < hidden)[None, :]
            total = summed_rows(x_ptr, res_ptr, rows, cols, mask, stride_x, 1, stride_res, 1, True)
            owned = mask & ((cols >= own_lo) & (cols < own_lo + share))[None, :]
            tl.store(sum_ptr + row_offs + cols[None, :], total, mask=owned)
            total = total.to(tl.float32)
            sum_sq += total * total
        inv_rms = tl.math.rsqrt(tl.sum(sum_sq, axis=1) / hidden + eps)
        acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
        for start in range(0, hidden, BLOCK_H):
            cols = start + offs
            col_ok = cols < hidden
            mask = row_ok[:, None] & col_ok[None, :]
            total = summed_rows(x_ptr, res_ptr, rows, cols, mask, stride_x, 1, stride_res, 1, True)
            normed = rms_normed(total, inv_rms, norm_w_ptr, cols, col_ok)
            owned = mask & ((cols >= own_lo) & (cols < own_lo + share))[None, :]
            tl.store(normed_ptr + row_offs + cols[None, :], normed, mask=owned)
            w = tl.load(w_ptr + expert * stride_w + cols, mask=col_ok, other=0.0).to(tl.float32)
            acc += normed.to(tl.float32) * w[None, :]
        logits = tl.sum(acc, axis=1)
    tl.store(out_ptr + rows * stride_out + expert, logits, mask=row_ok)


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
