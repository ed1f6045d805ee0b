"""The Triton kernels of the fused MoE: gate/up with SiLU-and-multiply, and down with routing weights.

The design is vLLM's and SGLang's ``fused_moe``: rows come in expert order,
padded per expert to ``BLOCK_M`` (moe_align.py), and each program computes one
``BLOCK_M x BLOCK_N`` tile of one expert's GEMM, gathering its input rows by
index. The gate/up kernel keeps two accumulators (gate rows ``[0:I]`` and up
rows ``[I:2I]`` of ``w13``) so the activation ``silu(gate) * up`` is applied
in the epilogue and the ``[*, 2I]`` product never reaches memory. The down
kernel multiplies each row by its routing weight before the store.

At decode sizes an expert holds about one row, so a block is mostly padding;
the kernels are then weight-streaming GEMVs (one program per expert block and
N-block) and the tuned configs pick small ``BLOCK_N`` and deep pipelines to
keep enough loads in flight. At batch 1 (``ONE_PER_BLOCK``) the alignment is
skipped altogether: block b is assignment b, its expert read from topk_ids.
Whatever the layout, gate/up writes act row ``t * k + j`` for assignment j of
token t, so at decode sizes ``down_topk_sum_kernel`` can replace the down
kernel and the top-k sum by reading each token's k rows itself.

Every kernel takes ``USE_PDL`` and waits for the previous grid before its first
load (moeframe/gpu/pdl.py), so the experts' launches overlap each other's
ramp-up and tail in a decode step.

This module is imported lazily (see triton_moe.py): Triton decides at
decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait


@triton.jit
def _block_rows(
    sorted_ids_ptr,
    block_expert_ptr,
    num_rows_ptr,
    padded_rows,
    N,
    num_assignments,
    num_experts,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
    ONE_PER_BLOCK: tl.constexpr,
):
    """This program's N block, its expert (-1: nothing to do) and the assignment of each of its rows."""
    # Grouped ordering: GROUP_M row blocks sweep the N blocks together so the
    # rows they gather stay in L2 (the ordering of Triton's matmul tutorial).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(padded_rows, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_in_group = GROUP_M * num_pid_n
    first_m = (pid // pids_in_group) * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % pids_in_group) % group_size
    pid_n = (pid % pids_in_group) // group_size
    offs = tl.arange(0, BLOCK_M)
    if ONE_PER_BLOCK:
        # Decode layout, no alignment pass: block b holds assignment b alone
        # and block_expert_ptr is topk_ids itself (-1, dropped, goes to the
        # zero-writing bucket num_experts).
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int32)
        expert = tl.where(expert < 0, num_experts, expert)
        assignment = tl.where(offs == 0, pid_m, num_assignments)
    else:
        in_use = pid_m * BLOCK_M < tl.load(num_rows_ptr)
        expert = tl.load(block_expert_ptr + pid_m, mask=in_use, other=-1)
        assignment = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + offs)
    return pid_n, expert, assignment


@triton.jit
def _silu_gate_up(
    x_ptrs,
    gate_ptrs,
    up_offset,
    stride_wk,
    row_ok,
    col_ok,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """silu(x . W_gate) * (x . W_up) of a [BLOCK_M, BLOCK_N] tile in float32, over the K dimension.

    ``x_ptrs`` [BLOCK_M, BLOCK_K] and ``gate_ptrs`` [BLOCK_K, BLOCK_N] point at
    the first K block; the up rows sit ``up_offset`` elements after the gate rows.
    """
    offs_k = tl.arange(0, BLOCK_K)
    up_ptrs = gate_ptrs + up_offset
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        gate = tl.dot(x, tl.load(gate_ptrs, mask=w_mask, other=0.0), gate)
        up = tl.dot(x, tl.load(up_ptrs, mask=w_mask, other=0.0), up)
        x_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K * stride_wk
        up_ptrs += BLOCK_K * stride_wk
    return gate * tl.sigmoid(gate) * up


@triton.jit(do_not_specialize=["num_assignments"])
def gate_up_silu_kernel(
    x_ptr,
    w13_ptr,
    act_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_rows_ptr,
    padded_rows,
    N,
    K,
    num_assignments,
    num_experts,
    top_k,
    stride_xm,
    stride_we,
    stride_wn,
    stride_wk,
    stride_am,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ONE_PER_BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """act[a, n] = silu(x[a // k] . w13[e, n]) * (x[a // k] . w13[e, N + n]) for rows a of expert e."""
    pdl_wait(USE_PDL)
    pid_n, expert, assignment = _block_rows(
        sorted_ids_ptr, block_expert_ptr, num_rows_ptr, padded_rows, N, num_assignments, num_experts,
        BLOCK_M, BLOCK_N, GROUP_M, ONE_PER_BLOCK,
    )  # fmt: skip
    if (expert < 0) | (expert >= num_experts):
        return
    row_ok = assignment < num_assignments
    token = assignment // top_k
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    x_ptrs = x_ptr + token[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    gate_ptrs = w13_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    act = _silu_gate_up(x_ptrs, gate_ptrs, N * stride_wn, stride_wk, row_ok, col_ok, K, BLOCK_M, BLOCK_N, BLOCK_K)
    act_ptrs = act_ptr + assignment[:, None].to(tl.int64) * stride_am + offs_n[None, :]
    tl.store(act_ptrs, act.to(act_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["num_assignments"])
def down_weighted_kernel(
    act_ptr,
    w2_ptr,
    out_ptr,
    weights_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_rows_ptr,
    padded_rows,
    N,
    K,
    num_assignments,
    num_experts,
    stride_am,
    stride_we,
    stride_wn,
    stride_wk,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ONE_PER_BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """out[a, n] = weight[a] * (act[a] . w2[e, n]) for rows a of expert e; zeros for dropped rows."""
    pdl_wait(USE_PDL)
    pid_n, expert, assignment = _block_rows(
        sorted_ids_ptr, block_expert_ptr, num_rows_ptr, padded_rows, N, num_assignments, num_experts,
        BLOCK_M, BLOCK_N, GROUP_M, ONE_PER_BLOCK,
    )  # fmt: skip
    if expert < 0:
        return
    row_ok = assignment < num_assignments
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    out_ptrs = out_ptr + assignment[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    out_mask = row_ok[:, None] & col_ok[None, :]
    if expert >= num_experts:
        tl.store(out_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=out_ptr.dtype.element_ty), mask=out_mask)
        return

    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = act_ptr + assignment[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    w_ptrs = w2_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk

    weight = tl.load(weights_ptr + assignment, mask=row_ok, other=0.0)
    acc = acc * weight[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def down_topk_sum_kernel(
    act_ptr,
    w2_ptr,
    out_ptr,
    topk_ids_ptr,
    weights_ptr,
    N,
    K,
    top_k,
    num_experts,
    stride_am,
    stride_we,
    stride_wn,
    stride_wk,
    stride_om,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_TOPK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """out[t, n] = sum_j weight[a] * (act[a] . w2[topk_ids[a], n]), a = t * k + j, for one token t and one block of n.

    The down GEMV and the top-k sum of decode-sized batches in one launch
    (vLLM and SGLang run the sum as a separate moe_sum kernel). A program owns
    ``BLOCK_N`` output columns of one token and loops over the token's k
    assignments, so the sum stays in registers: no [T * k, H] intermediate, no
    atomics (unlike single_pass_moe_kernel), no zero fill, and a fixed
    summation order, hence bitwise-reproducible outputs. Dropped assignments
    (id -1) are masked out, their act rows never read.

    The tiling is for weight streaming: at batch 1 each w2 byte is read once,
    and ``BLOCK_N`` 16 gives H / 16 = 128 programs at H=2048, about one per SM
    of an H100 (132), each streaming 16 contiguous rows of its k experts' w2
    (8 x 16 x 1024 x 2 B = 256 KB at OLMoE's shape) in ``BLOCK_K`` chunks; a
    wider block leaves SMs idle, a narrower one is below tl.dot's minimum.
    The k assignments and the K chunks are one flat loop so the software
    pipeline (``num_stages`` - 1 chunks in flight) runs across expert
    boundaries instead of draining at each one. Triton 3.9 pipelines only
    loads that feed ``tl.dot`` (checked in the sm_90 PTX), and an address
    loaded inside the loop costs a pipeline stage, so the act row is a 16-row
    dot operand whose other rows are masked (cp.async fetches nothing for
    them) and the k expert ids and weights are loaded once, before the loop.
    Each assignment's product is accumulated alone in float32, then scaled by
    its weight into the token's sum.

    The grid puts tokens first, so programs of one column block run side by
    side and tokens sharing an expert may find its rows in L2; still, each
    token streams its own experts, so past a few tokens the aligned down
    kernel, which reads each expert once for all its rows, should win
    (triton_moe.MAX_DOWN_TOPK_SUM_TOKENS).
    """
    pdl_wait(USE_PDL)
    token = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    is_row = tl.arange(0, 16) == 0
    offs_j = tl.arange(0, BLOCK_TOPK)
    ids = tl.load(topk_ids_ptr + token * top_k + offs_j, mask=offs_j < top_k, other=-1).to(tl.int32)
    ids = tl.where((ids >= 0) & (ids < num_experts), ids, -1)
    weights = tl.load(weights_ptr + token * top_k + offs_j, mask=ids >= 0, other=0.0).to(tl.float32)

    num_k_blocks = tl.cdiv(K, BLOCK_K)
    partial = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    total = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for step in range(0, top_k * num_k_blocks):
        j = step // num_k_blocks
        k0 = (step - j * num_k_blocks) * BLOCK_K
        expert = tl.sum(tl.where(offs_j == j, ids, 0))
        k_ok = offs_k < tl.where(expert >= 0, K - k0, 0)
        a_ptrs = act_ptr + (token * top_k + j).to(tl.int64) * stride_am + k0 + offs_k[None, :]
        a = tl.load(a_ptrs, mask=is_row[:, None] & k_ok[None, :], other=0.0)
        w_ptrs = w2_ptr + tl.maximum(expert, 0).to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + (k0 + offs_k)[:, None] * stride_wk
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        partial = tl.dot(a, w, partial)
        last = k0 + BLOCK_K >= K
        weight = tl.sum(tl.where(offs_j == j, weights, 0.0))
        total = tl.where(last, total + partial * weight, total)
        partial = tl.where(last, 0.0, partial)
    # rows 1..15 of the dot operands are zeros, so this sum is row 0 exactly
    out = tl.sum(total, 0)
    tl.store(out_ptr + token.to(tl.int64) * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _bucket_onehot(topk_ids_ptr, start, num_assignments, num_experts, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    offs = start + tl.arange(0, CHUNK)
    ok = offs < num_assignments
    ids = tl.load(topk_ids_ptr + offs, mask=ok, other=0)
    bucket = tl.where(ids >= 0, ids, num_experts)
    bucket = tl.where(ok, bucket, BLOCK_E)
    return (bucket[:, None] == tl.arange(0, BLOCK_E)[None, :]).to(tl.int32)


@triton.jit(do_not_specialize=["num_assignments", "padded_rows"])
def align_kernel(
    topk_ids_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_rows_ptr,
    num_assignments,
    num_experts,
    padded_rows,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """moe_align.align_by_expert in one program, for decode-sized batches.

    The torch version is a dozen small kernels, as long as the expert GEMMs
    themselves at batch 1 (SGLang and vLLM write moe_align_block_size as one
    CUDA kernel for the same reason). Two passes over the assignments: a
    histogram, then each assignment's rank within its expert (a cumulative
    sum of one-hot rows) gives its padded row.
    """
    pdl_wait(USE_PDL)
    offs_e = tl.arange(0, BLOCK_E)
    counts = tl.zeros((BLOCK_E,), dtype=tl.int32)
    for start in range(0, num_assignments, CHUNK):
        counts += tl.sum(_bucket_onehot(topk_ids_ptr, start, num_assignments, num_experts, CHUNK, BLOCK_E), 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded_end = tl.cumsum(padded, 0)
    padded_start = padded_end - padded

    for start in range(0, padded_rows, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(sorted_ids_ptr + offs, tl.zeros((CHUNK,), dtype=tl.int32) + num_assignments, mask=offs < padded_rows)
    tl.debug_barrier()
    seen = tl.zeros((BLOCK_E,), dtype=tl.int32)
    for start in range(0, num_assignments, CHUNK):
        onehot = _bucket_onehot(topk_ids_ptr, start, num_assignments, num_experts, CHUNK, BLOCK_E)
        earlier_same = tl.cumsum(onehot, 0) - onehot + seen[None, :]
        dest = tl.sum(onehot * (earlier_same + padded_start[None, :]), 1)
        offs = start + tl.arange(0, CHUNK)
        tl.store(sorted_ids_ptr + dest, offs, mask=offs < num_assignments)
        seen += tl.sum(onehot, 0)

    num_blocks = padded_rows // BLOCK_M
    ends = tl.where(offs_e <= num_experts, padded_end, 1 << 30)
    for start in range(0, num_blocks, CHUNK):
        block = start + tl.arange(0, CHUNK)
        expert = tl.sum((ends[None, :] <= (block * BLOCK_M)[:, None]).to(tl.int32), 1)
        tl.store(block_expert_ptr + block, tl.where(expert <= num_experts, expert, -1), mask=block < num_blocks)
    tl.store(num_rows_ptr, tl.sum(padded, 0))


@triton.jit(do_not_specialize=["num_assignments"])
def single_pass_moe_kernel(
    x_ptr,
    w13_ptr,
    w2_ptr,
    out_ptr,
    topk_ids_ptr,
    weights_ptr,
    inter,
    hidden,
    num_assignments,
    num_experts,
    top_k,
    stride_xm,
    stride_ue,
    stride_un,
    stride_uk,
    stride_de,
    stride_dn,
    stride_dk,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """out[t] += weight[a] * w2[e, :, n] . act[a, n] for one assignment a and one block n of the expert width.

    Batch-1 path in one launch: the act slice a program computes (silu(gate) *
    up over BLOCK_N columns) is all the down projection needs from it when the
    down GEMM is split along its reduction dimension, so no program waits for
    another. Each program adds its partial [H] row into a zeroed fp32 ``out``
    with relaxed atomics; every weight byte is still read exactly once. This
    is split-K of the down GEMM (atomic accumulation, as in CUTLASS's and
    Triton's split-K GEMMs) fused with its producer, trading two dependent
    short launches for one stream of weights.
    """
    pdl_wait(USE_PDL)
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(inter, BLOCK_N)
    assignment = pid // num_pid_n
    pid_n = pid % num_pid_n
    expert = tl.load(topk_ids_ptr + assignment).to(tl.int32)
    if (expert < 0) | (expert >= num_experts):
        return
    token = assignment // top_k
    offs_m = tl.arange(0, BLOCK_M)
    row_ok = offs_m == 0
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < inter
    offs_k = tl.arange(0, BLOCK_K)

    x_ptrs = x_ptr + token.to(tl.int64) * stride_xm + offs_m[:, None] * 0 + offs_k[None, :]
    gate_ptrs = w13_ptr + expert.to(tl.int64) * stride_ue + offs_n[None, :] * stride_un + offs_k[:, None] * stride_uk
    act = _silu_gate_up(x_ptrs, gate_ptrs, inter * stride_un, stride_uk, row_ok, col_ok, hidden, BLOCK_M, BLOCK_N, BLOCK_K)
    act = act.to(w2_ptr.dtype.element_ty)

    weight = tl.load(weights_ptr + assignment)
    offs_h = tl.arange(0, BLOCK_K)
    w2_ptrs = w2_ptr + expert.to(tl.int64) * stride_de + offs_n[:, None] * stride_dk + offs_h[None, :] * stride_dn
    out_ptrs = out_ptr + token.to(tl.int64) * stride_om + offs_m[:, None] * 0 + offs_h[None, :]
    for h0 in range(0, hidden, BLOCK_K):
        h_ok = offs_h < hidden - h0
        w = tl.load(w2_ptrs, mask=col_ok[:, None] & h_ok[None, :], other=0.0)
        part = tl.dot(act, w) * weight
        tl.atomic_add(out_ptrs, part, mask=row_ok[:, None] & h_ok[None, :], sem="relaxed")
        w2_ptrs += BLOCK_K * stride_dn
        out_ptrs += BLOCK_K
