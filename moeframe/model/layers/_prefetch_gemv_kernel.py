"""A decode-sized projection whose weight tile is loaded before the PDL wait.

out [T, N] = x [T, K] @ W [N, K]^T (+ bias), T a few tokens. The weight does
not depend on the kernel before this one, so under programmatic dependent
launch (moeframe/gpu/pdl.py) a program may start streaming its rows while the
previous kernel still runs, and only the activations wait. Each program holds
``BLOCK_N`` whole rows (K padded to a power of two) in registers: it issues
every weight load, then waits, then reads each token's row (a few KB, from L2)
and reduces the products in float32, rounded once to the output dtype after
the bias (and widened again where the output is float32: the logits of the
lm_head, which then need no cast launch). The same overlap of a GEMV's weight stream with its predecessor is
what TensorRT-LLM's PDL-launched decode GEMMs rely on; here the prefetch is
the whole tile because Triton's software pipeline cannot start before the
wait. One program computes each output in one fixed reduction order.
Under ``runner.l2_prefetch`` the weight loads carry an evict-first L2 policy
and the programs may prefetch a later kernel's weight into L2 before their
wait (moeframe/gpu/l2_prefetch.py). Under ``runner.gemv_tail_prefetch`` the
first wave's programs prefetch the rows of the programs that cannot be
resident with them (the second wave), so that those read L2 when they start.

Imported lazily (see small_gemv.py): Triton decides at decoration time
whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._l2_prefetch_jit import prefetch_lines_to_l2
from moeframe.gpu._pdl_jit import pdl_wait

# Lines a program's prefetch instruction covers per step (one per thread of four warps).
PREFETCH_LINES = tl.constexpr(128)


@triton.jit
def prefetch_gemv_kernel(
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
    l2_ptr,
    l2_bytes,
    l2_parts,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WEIGHT_EVICT: tl.constexpr,
    L2_PREFETCH: tl.constexpr,
    L2_EVICT_LAST: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    col_ok = cols < K
    # Row offsets in int64: a vocabulary-sized weight can hold more than 2^31 elements.
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_wn + cols[None, :]
    w = tl.load(w_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0, eviction_policy=WEIGHT_EVICT)
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if L2_PREFETCH:
        # a later kernel's weight (moeframe/gpu/l2_prefetch.py) or this weight's rows past the first wave,
        # shared by programs [0, l2_parts), behind this program's own tile
        prefetch_lines_to_l2(l2_ptr, l2_bytes, pid, l2_parts, PREFETCH_LINES, L2_EVICT_LAST)
    pdl_wait(USE_PDL)
    for t in range(num_tokens):
        x = tl.load(x_ptr + t * stride_xt + cols * stride_xk, mask=col_ok, other=0.0).to(tl.float32)
        acc = tl.sum(w.to(tl.float32) * x[None, :], axis=1) + bias
        # rounded to the activations' dtype first: a float32 output holds the numbers a half-precision one would
        out = acc.to(x_ptr.dtype.element_ty).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + t * stride_ot + rows, out, mask=row_ok)
