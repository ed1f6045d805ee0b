"""Row-wise argmax of float logits in two Triton launches; see greedy.py for why and for the order of ties.

Each program of ``argmax_partial_kernel`` takes one BLOCK-wide chunk of one row
(a single load) and writes its best (value, index, has-NaN) triple;
``argmax_merge_kernel`` picks the row's best over its chunks. The order is the
one ``torch.argmax`` follows: NaN ranks above every number, and among equal
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
def argmax_partial_kernel(
    logits_ptr, part_val_ptr, part_idx_ptr, part_nan_ptr, vocab, stride_row, num_chunks, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
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


@triton.jit
def argmax_merge_kernel(
    part_val_ptr, part_idx_ptr, part_nan_ptr, out_ptr, vocab, num_chunks, BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_C)
    ok = offs < num_chunks
    at = row * num_chunks + offs
    values = tl.load(part_val_ptr + at, mask=ok, other=float("-inf"))
    indices = tl.load(part_idx_ptr + at, mask=ok, other=vocab)
    nan = tl.load(part_nan_ptr + at, mask=ok, other=0) > 0
    # a chunk of -inf only still names its first index: the row's answer if every value is -inf
    values = tl.where(indices < vocab, values, float("-inf"))
    _, best_idx, _ = _best(values, indices, nan, vocab)
    tl.store(out_ptr + row, best_idx.to(tl.int64))
