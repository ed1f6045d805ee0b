"""The expert-load recorder's update as Triton kernels: counts, drops, tokens, unrouted.

Each program takes blocks of a plan's rows, adds one to its layer's count of
every kept expert id with an atomic add (a GPU histogram's usual scatter; the
torch path's index_add_ does the same on CUDA), and adds its share of the
three per-layer scalars at the end. The adds are relaxed: nothing in the
launch reads them back, and the kernel boundary orders them before any
reader. The drop count is ``max(T * budget_k - kept, 0)`` over the whole
plan: when no row can hold more than ``budget_k`` ids each share is already
non-negative and the programs add them; otherwise (expert-choice plans) a
single program sees the whole plan and clamps the total.

``accumulate_kernel`` takes one plan (one launch per MoE layer);
``accumulate_layers_kernel`` takes the plans of many layers as a tuple of
pointers, one grid row per plan, so a forward's plans are counted in one
launch without first copying them into one buffer (the grouped-GEMM kernels
of Triton's distributed examples pass their per-rank buffers the same way).

This module is imported lazily (see expert_load.py): Triton decides at
decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait


@triton.jit
def _block_ids(topk_ids_ptr, start, num_tokens, num_columns, stride_t, stride_c, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The ids of rows ``start ..`` (-1 past the plan) and which of those rows exist."""
    cols = tl.arange(0, BLOCK_C)
    rows = start + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    mask = row_ok[:, None] & (cols < num_columns)[None, :]
    offsets = rows.to(tl.int64)[:, None] * stride_t + cols[None, :] * stride_c
    return tl.load(topk_ids_ptr + offsets, mask=mask, other=-1), row_ok


@triton.jit
def _count_block(ids, row_ok, counts_ptr, num_kept, num_rows, num_unrouted):
    """One block's kept ids added to the counts; the three running totals with its rows added."""
    kept = ids >= 0
    tl.atomic_add(counts_ptr + ids, tl.full(ids.shape, 1, dtype=tl.int64), mask=kept, sem="relaxed")
    kept_per_row = tl.sum(kept.to(tl.int32), axis=1)
    num_kept += tl.sum(kept_per_row).to(tl.int64)
    num_rows += tl.sum(row_ok.to(tl.int32)).to(tl.int64)
    num_unrouted += tl.sum((row_ok & (kept_per_row == 0)).to(tl.int32)).to(tl.int64)
    return num_kept, num_rows, num_unrouted


@triton.jit
def _accumulate_rows(
    topk_ids_ptr,
    counts_ptr,
    dropped_ptr,
    tokens_ptr,
    unrouted_ptr,
    num_tokens,
    num_columns,
    stride_t,
    stride_c,
    budget_k,
    first_ids,
    first_ok,
    CLAMP_TOTAL: tl.constexpr,
    HAS_FIRST: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """This program's share (axis 0) of one plan's rows, added to one layer's counters; with ``HAS_FIRST`` its first
    block's ids were read already (``first_ids``, ``first_ok``)."""
    num_kept = tl.zeros([], dtype=tl.int64)
    num_rows = tl.zeros([], dtype=tl.int64)
    num_unrouted = tl.zeros([], dtype=tl.int64)
    first = tl.program_id(0) * BLOCK_T
    step = tl.num_programs(0) * BLOCK_T
    if HAS_FIRST:
        num_kept, num_rows, num_unrouted = _count_block(first_ids, first_ok, counts_ptr, num_kept, num_rows, num_unrouted)
        first += step
    for start in range(first, num_tokens, step):
        ids, row_ok = _block_ids(topk_ids_ptr, start, num_tokens, num_columns, stride_t, stride_c, BLOCK_T, BLOCK_C)
        num_kept, num_rows, num_unrouted = _count_block(ids, row_ok, counts_ptr, num_kept, num_rows, num_unrouted)
    short = num_rows * budget_k - num_kept
    if CLAMP_TOTAL:
        short = tl.maximum(short, 0)
    tl.atomic_add(dropped_ptr, short, sem="relaxed")
    tl.atomic_add(tokens_ptr, num_rows, sem="relaxed")
    tl.atomic_add(unrouted_ptr, num_unrouted, sem="relaxed")


@triton.jit
def accumulate_kernel(
    topk_ids_ptr,
    counts_ptr,
    dropped_ptr,
    tokens_ptr,
    unrouted_ptr,
    num_tokens,
    num_columns,
    stride_ids,
    budget_k,
    CLAMP_TOTAL: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    _accumulate_rows(
        topk_ids_ptr, counts_ptr, dropped_ptr, tokens_ptr, unrouted_ptr, num_tokens, num_columns, stride_ids, 1,
        budget_k, 0, 0, CLAMP_TOTAL, False, BLOCK_T, BLOCK_C,
    )  # fmt: skip


@triton.jit
def accumulate_layers_kernel(
    topk_ids_ptrs,
    layers,
    counts_ptr,
    dropped_ptr,
    tokens_ptr,
    unrouted_ptr,
    num_tokens,
    num_columns,
    stride_t,
    stride_c,
    stride_counts,
    budget_k,
    NUM_PLANS: tl.constexpr,
    CLAMP_TOTAL: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SETTLED: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Plan ``program_id(1)`` of the tuple ``topk_ids_ptrs``, into recorder row ``layers[program_id(1)]``.

    The plans share their shape, strides and budget; ``counts_ptr`` is the
    recorder's [L, E] counts, the other three its [L] counters. ``SETTLED``:
    no plan comes from the launch just before this one (the recorder flushes
    after the last MoE layer's experts), so each program reads its first
    block of ids before the PDL wait, beside that launch, and only adds them
    after it (no write before the wait).
    """
    plan = tl.program_id(1)
    # a tuple is indexed by constants only: pick this program's entry with a select per plan
    topk_ids_ptr = topk_ids_ptrs[0]
    layer = tl.zeros([], dtype=tl.int64) + layers[0]
    for i in tl.static_range(1, NUM_PLANS):
        topk_ids_ptr = tl.where(plan == i, topk_ids_ptrs[i], topk_ids_ptr)
        layer = tl.where(plan == i, layers[i], layer)
    first_ids, first_ok = _block_ids(
        topk_ids_ptr, tl.program_id(0) * BLOCK_T, tl.where(SETTLED, num_tokens, 0), num_columns, stride_t, stride_c,
        BLOCK_T, BLOCK_C,
    )  # fmt: skip
    pdl_wait(USE_PDL)
    _accumulate_rows(
        topk_ids_ptr, counts_ptr + layer * stride_counts, dropped_ptr + layer, tokens_ptr + layer,
        unrouted_ptr + layer, num_tokens, num_columns, stride_t, stride_c, budget_k, first_ids, first_ok, CLAMP_TOTAL,
        SETTLED, BLOCK_T, BLOCK_C,
    )  # fmt: skip
