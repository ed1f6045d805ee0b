"""Softmax, choice bias, top-k, weight gather and renormalisation of gate logits in one Triton kernel.

The fused top-k of vLLM and SGLang (``topk_softmax``, ``biased_grouped_topk``)
keeps a token's scores in registers and selects the k best by k rounds of
argmax. Here each round is a single max-reduction: a choice score and its
expert id are packed into one int64 key (the float's bits remapped so that
integer order is float order, shifted left, and ``BLOCK_E - 1 - id`` in the
low bits), so the largest key is the largest score and, on exact ties, the
lowest id. A picked column's key drops to a sentinel below every real key.
NaN sorts above everything, as in ``torch.topk``, so ids stay in range.

Where a block's keys against themselves fit ``RANK_TILE`` comparisons (one
token of up to 128 experts), the k rounds of two cross-warp reductions each
become one: every column counts the keys above its own (its rank, all keys
being distinct), the columns ranked below k are the picks, and each stores
its id and probability at slot ``rank`` (selection by counting, as in
radix-select / rank-sort top-k; the same picks in the same order as the
rounds). At batch 1 the top-k is on the decode step's critical path once a
layer.

This module is imported lazily (see fused_topk.py): Triton decides at
decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait

ID_BITS = tl.constexpr(10)  # room for expert ids below 1024
ID_MASK = tl.constexpr(1023)
TAKEN = tl.constexpr(-(1 << 62))  # below every packed key
# Key comparisons a block may hold to rank its columns in one reduction instead of k rounds.
RANK_TILE = tl.constexpr(16384)


@triton.jit
def softmax_topk_rows(
    logits_ptr,
    bias_ptr,
    topk_ids_ptr,
    topk_weights_ptr,
    rows,
    num_tokens,
    num_experts,
    k,
    stride_logits,
    scale,
    HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Route the tokens ``rows`` (a block of row indices): shared with _gate_topk_kernel.py."""
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < num_tokens
    col_ok = cols < num_experts
    row_ptr = logits_ptr + rows.to(tl.int64) * stride_logits
    logits = tl.load(row_ptr[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=float("-inf"))
    row_max = tl.where(row_ok, tl.max(logits, axis=1), 0.0)
    exp = tl.exp(logits - row_max[:, None])
    denom = tl.where(row_ok, tl.sum(exp, axis=1), 1.0)  # padding rows: no 0 / 0
    choice = exp / denom[:, None]
    if HAS_BIAS:
        choice += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]

    bits = choice.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
    keys = (ordered << ID_BITS) | (BLOCK_E - 1 - cols).to(tl.int64)[None, :]
    keys = tl.where(col_ok[None, :], keys, TAKEN)

    if BLOCK_T * BLOCK_E * BLOCK_E <= RANK_TILE:
        ids, picked_exp, slot, picked = _ranked_picks(keys, exp, row_ok, cols, k, BLOCK_T)
    else:
        ids, picked_exp, slot, picked = _round_picks(keys, exp, row_ok, cols, k, BLOCK_T, BLOCK_E, BLOCK_K)
    weights = picked_exp / denom[:, None]
    if RENORMALIZE:
        weights = weights / tl.where(row_ok, tl.sum(tl.where(picked, weights, 0.0), axis=1), 1.0)[:, None]
    weights = weights * scale
    out = rows.to(tl.int64)[:, None] * k + slot
    tl.store(topk_ids_ptr + out, ids, mask=picked)
    tl.store(topk_weights_ptr + out, weights, mask=picked)


@triton.jit
def _ranked_picks(keys, exp, row_ok, cols, k, BLOCK_T: tl.constexpr):
    """(ids, exps, slots, picked) over the columns: each column's rank among its row's (distinct) keys is its slot,
    and the columns ranked below k are the picks."""
    # [t, j, i] = key j above key i, summed over j: Triton keeps that axis in a thread (sm_90 PTX at one token of 64
    # experts: 7 barriers and 12 shuffles from the count to the stores; summed over the last axis, 17 and 76)
    rank = tl.sum((keys[:, :, None] > keys[:, None, :]).to(tl.int32), axis=1)
    ids = tl.broadcast_to(cols.to(tl.int64)[None, :], [BLOCK_T, cols.shape[0]])
    return ids, exp, rank, row_ok[:, None] & (rank < k)


@triton.jit
def _round_picks(keys, exp, row_ok, cols, k, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    """(ids, exps, slots, picked) over BLOCK_K slots: k rounds of argmax over the keys, the picked column's key
    dropped to TAKEN after each."""
    slots = tl.arange(0, BLOCK_K)
    topk_ids = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int64)
    # the unbiased probability of each pick: its exp taken from the registers (a sum of it and zeros), not
    # reloaded from the logits in memory, which would put a round trip to L2 on the router's critical path
    picked_exp = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    for i in range(k):
        best = tl.max(keys, axis=1)
        picked = BLOCK_E - 1 - (best & ID_MASK)
        is_picked = cols[None, :] == picked[:, None]
        topk_ids = tl.where(slots[None, :] == i, picked[:, None], topk_ids)
        picked_exp = tl.where(slots[None, :] == i, tl.sum(tl.where(is_picked, exp, 0.0), axis=1)[:, None], picked_exp)
        keys = tl.where(is_picked, TAKEN, keys)
    slot = tl.broadcast_to(slots[None, :], [BLOCK_T, BLOCK_K])
    return topk_ids, picked_exp, slot, row_ok[:, None] & (slots < k)[None, :]


@triton.jit
def softmax_topk_kernel(
    logits_ptr,
    bias_ptr,
    topk_ids_ptr,
    topk_weights_ptr,
    num_tokens,
    num_experts,
    k,
    stride_logits,
    scale,
    HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    softmax_topk_rows(
        logits_ptr, bias_ptr, topk_ids_ptr, topk_weights_ptr, rows, num_tokens, num_experts, k, stride_logits, scale,
        HAS_BIAS, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K,
    )  # fmt: skip
