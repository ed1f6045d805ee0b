"""The gate GEMV and softmax top-k of decode batches in one Triton launch, joined by a last-program-finishes count.

The GEMV wants many programs (one expert row and a block of tokens each, as in
_gate_kernel.py) to stream the fp32 gate weight at bandwidth; top-k wants every
logit of a token in one program. The grid is the GEMV's: each program stores
its logits, then bumps its token block's counter with a gpu-scope acq_rel
atomic; the program that finds ``count == num_experts - 1`` is the last of its
block, and routes that block's tokens (the code of _topk_kernel.py) from the
logits the others stored. This is the "last block" reduction of CUDA's
threadFenceReduction sample and of split-K / stream-K GEMM fix-ups: the
barrier orders every thread's stores before the one thread's release, the
acquire orders the last program's loads after every other program's release,
and no program ever waits on another, so it needs no co-resident grid. The last
program sets the counter back to 0, so the next launch (or CUDA-graph replay)
starts from zero with no host-side reset.

Where a token block's whole hidden row fits one tile (``ROW_IN_TILE``) each
program loads its gate row (and, with ``NORM``, the norm weight) before the
PDL wait, so those loads overlap the kernel before (the o projection).

With ``NORM`` the programs first run the residual add and RMSNorm that
precede the gate (norm_gate_logits_tile in _gate_kernel.py): each computes the
rms of its token block's rows itself and routes from the normed rows, and
between them they write the summed and normed rows once. Those writes come
after the PDL wait; the launches that read them (the experts kernel, the next
layer's norm) come later in the stream.

This module is imported lazily (see gate_topk.py): Triton decides at
decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait
from moeframe.routers._gate_kernel import gate_logits_tile, norm_gate_logits_tile
from moeframe.routers._topk_kernel import softmax_topk_rows


@triton.jit
def gate_softmax_topk_kernel(
    x_ptr,
    res_ptr,
    norm_w_ptr,
    sum_ptr,
    normed_ptr,
    w_ptr,
    logits_ptr,
    bias_ptr,
    counts_ptr,
    topk_ids_ptr,
    topk_weights_ptr,
    num_tokens,
    hidden,
    num_experts,
    k,
    stride_x,
    stride_res,
    stride_w,
    eps,
    scale,
    NORM: tl.constexpr,
    ROW_IN_TILE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    expert = tl.program_id(0)
    token_block = tl.program_id(1)
    # The gate row and the norm weight are weights: whole-row tiles are loaded before the wait, overlapping the
    # kernel before.
    offs = tl.arange(0, BLOCK_H)
    w_row = tl.zeros([BLOCK_H], dtype=tl.float32)
    norm_w_row = tl.zeros([BLOCK_H], dtype=tl.float32)
    if ROW_IN_TILE:
        w_row = tl.load(w_ptr + expert * stride_w + offs, mask=offs < hidden, other=0.0).to(tl.float32)
        if NORM:
            norm_w_row = tl.load(norm_w_ptr + offs, mask=offs < hidden, other=0.0).to(tl.float32)
    pdl_wait(USE_PDL)
    if NORM:
        norm_gate_logits_tile(
            x_ptr, res_ptr, norm_w_ptr, sum_ptr, normed_ptr, w_ptr, w_row, norm_w_row, logits_ptr, expert, num_experts,
            token_block, num_tokens, hidden, stride_x, stride_res, stride_w, num_experts, eps, BLOCK_T, BLOCK_H,
            ROW_IN_TILE,
        )  # fmt: skip
    else:
        gate_logits_tile(
            x_ptr, w_ptr, logits_ptr, expert, token_block, num_tokens, hidden, stride_x, stride_w, num_experts,
            BLOCK_T, BLOCK_H,
        )  # fmt: skip
    # every thread's logit stores come before the release below
    tl.debug_barrier()
    finished_before = tl.atomic_add(counts_ptr + token_block, 1, sem="acq_rel", scope="gpu")
    if finished_before == num_experts - 1:
        rows = token_block * BLOCK_T + tl.arange(0, BLOCK_T)
        softmax_topk_rows(
            logits_ptr, bias_ptr, topk_ids_ptr, topk_weights_ptr, rows, num_tokens, num_experts, k, num_experts, scale,
            HAS_BIAS, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K,
        )  # fmt: skip
        tl.store(counts_ptr + token_block, 0)
