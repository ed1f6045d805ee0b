"""The expert-load recorder's per-forward update as one Triton kernel: counts, drops, tokens, unrouted.

Each program takes blocks of a plan's rows, adds one to its layer's count of
every kept expert id with an atomic add (a GPU histogram's usual scatter; the
torch path's index_add_ does the same on CUDA), and adds its share of the
three per-layer scalars at the end. The adds are relaxed: nothing in the
launch reads them back, and the kernel boundary orders them before any
reader. The drop count is ``max(T * budget_k - kept, 0)`` over the whole
plan: when no row can hold more than ``budget_k`` ids each share is already
non-negative and the programs add them; otherwise (expert-choice plans) a
single program sees the whole plan and clamps the total.

This module is imported lazily (see expert_load.py): Triton decides at
decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait


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
    cols = tl.arange(0, BLOCK_C)
    ones = tl.full([BLOCK_T, BLOCK_C], 1, dtype=tl.int64)
    num_kept = tl.zeros([], dtype=tl.int64)
    num_rows = tl.zeros([], dtype=tl.int64)
    num_unrouted = tl.zeros([], dtype=tl.int64)
    for start in range(tl.program_id(0) * BLOCK_T, num_tokens, tl.num_programs(0) * BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        row_ok = rows < num_tokens
        mask = row_ok[:, None] & (cols < num_columns)[None, :]
        ids = tl.load(topk_ids_ptr + rows.to(tl.int64)[:, None] * stride_ids + cols[None, :], mask=mask, other=-1)
        kept = ids >= 0
        tl.atomic_add(counts_ptr + ids, ones, mask=kept, sem="relaxed")
        kept_per_row = tl.sum(kept.to(tl.int32), axis=1)
        num_kept += tl.sum(kept_per_row).to(tl.int64)
        num_rows += tl.sum(row_ok.to(tl.int32)).to(tl.int64)
        num_unrouted += tl.sum((row_ok & (kept_per_row == 0)).to(tl.int32)).to(tl.int64)
    short = num_rows * budget_k - num_kept
    if CLAMP_TOTAL:
        short = tl.maximum(short, 0)
    tl.atomic_add(dropped_ptr, short, sem="relaxed")
    tl.atomic_add(tokens_ptr, num_rows, sem="relaxed")
    tl.atomic_add(unrouted_ptr, num_unrouted, sem="relaxed")
