"""Row-wise argmax of float logits in one Triton launch; see greedy.py for why and for the order of ties.

Each program of ``argmax_kernel`` takes one BLOCK-wide chunk of one row (a
single load) and writes its best (value, index, has-NaN) triple; then it
bumps its row's counter with a gpu-scope acq_rel atomic, and the program that
finds every other chunk of the row done picks the row's best over the chunks
and sets the counter back to 0 for the next launch or CUDA-graph replay (the
"last block" reduction of routers/_gate_topk_kernel.py). The order is the one
``torch.argmax`` follows: NaN ranks above every number, and among equal
values the lowest index wins.

Imported lazily (greedy.py): Triton decides at decoration time whether to
compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait


@triton.jit
def _best(values, indices, nan, sentinel):
    """(value, lowest index, has NaN) of the best entries: a NaN if any, else the largest value."""
    has_nan = tl.max(nan.to(tl.int32), 0)
    top = tl.max(tl.where(nan, float("-inf"), values), 0)
    chosen = tl.where(has_nan > 0, nan, (values == top) & ~nan)
    return top, tl.min(tl.where(chosen, indices, sentinel), 0), has_nan


@triton.jit
def argmax_kernel(
    logits_ptr,
    part_val_ptr,
    part_idx_ptr,
    part_nan_ptr,
    counts_ptr,
    out_ptr,
    vocab,
    stride_row,
    num_chunks,
    BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    idx = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = idx < vocab
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + idx, mask=ok, other=float("-inf")).to(tl.float32)
    top, best_idx, has_nan = _best(x, tl.where(ok, idx, vocab), (x != x) & ok, vocab)
    out = row * num_chunks + chunk
    tl.store(part_val_ptr + out, top)
    tl.store(part_idx_ptr + out, best_idx)
    tl.store(part_nan_ptr + out, has_nan)
    # every thread's stores come before the release below
    tl.debug_barrier()
    finished_before = tl.atomic_add(counts_ptr + row, 1, sem="acq_rel", scope="gpu")
    if finished_before == num_chunks - 1:
        offs = tl.arange(0, BLOCK_C)
        in_row = offs < num_chunks
        at = row * num_chunks + offs
        values = tl.load(part_val_ptr + at, mask=in_row, other=float("-inf"))
        indices = tl.load(part_idx_ptr + at, mask=in_row, other=vocab)
        nan = tl.load(part_nan_ptr + at, mask=in_row, other=0) > 0
        # a chunk of -inf only still names its first index: the row's answer if every value is -inf
        values = tl.where(indices < vocab, values, float("-inf"))
        _, row_best, _ = _best(values, indices, nan, vocab)
        tl.store(out_ptr + row, row_best.to(tl.int64))
        tl.store(counts_ptr + row, 0)
