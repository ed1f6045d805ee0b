"""The residual add + RMSNorm that opens a decoder layer, with the MoE's top-k sum, letting the qkv projection launch first.

normed[t], total[t] = rms_norm(round(sum_j parts[t, j]) (+ addend) + residual[t]),
the sum, the add and every rounding as norm.py's add_topk_rms_norm takes them
(topk_sum.assignment_total: the k rows summed in float32 in order, rounded to
the dtype; _rms_norm_jit.py: the rest). One program per token row.

It calls ``pdl_launch_then_wait``: the kernel after it, the qkv projection
(model/layers/_prefetch_gemv_kernel.py), launches as soon as this one does and
streams its weights while the MoE's down projection before this norm still
runs; it reads its activations only after its own wait, which this norm's
completion releases. That successor loads nothing else early, which is what
pdl.py asks of a kernel that follows one launching its successor first.

Imported lazily (see early_norm.py): Triton decides at decoration time
whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_launch_then_wait
from moeframe.model.layers._rms_norm_jit import rms_normed_by


@triton.jit
def topk_add_rms_norm_kernel(
    parts_ptr,
    addend_ptr,
    res_ptr,
    norm_w_ptr,
    normed_ptr,
    total_ptr,
    hidden,
    eps,
    stride_pt,
    stride_pk,
    stride_at,
    stride_rt,
    stride_nt,
    stride_tt,
    TOP_K: tl.constexpr,
    HAS_ADDEND: tl.constexpr,
    BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_H)
    col_ok = offs < hidden
    # a weight, loaded before the wait: after it, a second memory round trip behind the sum of squares
    norm_w = tl.load(norm_w_ptr + offs, mask=col_ok, other=0.0).to(tl.float32)
    pdl_launch_then_wait(USE_PDL)
    row = tl.program_id(0)
    # one row as a [1, BLOCK_H] tile, the shape _rms_norm_jit's helpers take
    cols, mask = offs[None, :], col_ok[None, :]
    dtype = res_ptr.dtype.element_ty
    acc = tl.zeros([1, BLOCK_H], dtype=tl.float32)
    # unrolled: the k row loads are independent and issue together, where a loop would wait on each in turn
    for j in tl.static_range(TOP_K):
        acc += tl.load(parts_ptr + row * stride_pt + j * stride_pk + cols, mask=mask, other=0.0).to(tl.float32)
    moe_out = acc.to(dtype)
    if HAS_ADDEND:
        addend = tl.load(addend_ptr + row * stride_at + cols, mask=mask, other=0.0)
        moe_out = (moe_out.to(tl.float32) + addend.to(tl.float32)).to(dtype)
    residual = tl.load(res_ptr + row * stride_rt + cols, mask=mask, other=0.0)
    total = (moe_out.to(tl.float32) + residual.to(tl.float32)).to(dtype)
    total_f32 = total.to(tl.float32)
    inv_rms = tl.math.rsqrt(tl.sum(total_f32 * total_f32, axis=1) / hidden + eps)
    normed = rms_normed_by(total, inv_rms, norm_w)
    tl.store(total_ptr + row * stride_tt + cols, total, mask=mask)
    tl.store(normed_ptr + row * stride_nt + cols, normed, mask=mask)
