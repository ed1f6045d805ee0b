"""Decode attention over KV slots: one query token per request, split-KV (flash-decoding).

A decode batch has too few queries to fill the GPU, so each request's context
is cut into ``num_kv_splits`` chunks processed in parallel, each writing a
partial output and its log-sum-exp, and the chunks are merged (Dao et al.,
"Flash-Decoding for long-context inference", 2023; the two-stage layout of
SGLang's decode_attention). One program serves all query heads that share a
KV head (grouped-query attention), so each K/V row is gathered once through
``kv_indices`` and reused by the whole group in one MMA.

The number of splits depends only on the batch size, the KV head count and the
device, never on the context lengths (which the kernels read from
``kv_indptr``), so a captured CUDA graph stays valid as contexts grow. Inside
that fixed grid a split takes at least one tile of keys (``SPLIT_TILE_KEYS``):
a short context keeps only the first few splits busy, the rest write nothing,
and the merge reads the busy ones only (FlashInfer's split-KV planner likewise
bounds the chunk size from below). On an H100 at batch 1 (OLMoE: 16 KV heads,
17 splits, contexts of 129-192 tokens) a fixed 4 splits took the step from
1,352 to 1,276 us and 8 splits to 1,291 us, against 17 splits of ~10 keys.

The merge runs in the split launch by default (``fused_merge``): each busy
split stores its partials, then bumps its (request, KV head)'s counter with a
gpu-scope acq_rel atomic, and the one that finds all the other busy splits done
merges their partials for the group's query heads and sets the counter back to
0 for the next launch or CUDA-graph replay; a context that fits one split has
its output written by that split directly, with no partials and no atomic (the "last block" reduction of
CUDA's threadFenceReduction sample and of split-K GEMM fix-ups, as in
routers/_gate_topk_kernel.py). At batch 1 the separate merge launch cost ~2 us
a layer on an H100, most of it launch latency. Both paths run the same merge
code (``_merge_head``) over the same splits in the same order, so their outputs
are bitwise equal; ``fused_merge=False`` keeps the second launch for A/B.

``decode_attention_prologue`` also folds the qkv prologue (q/k norm, clip,
rotary, KV write: qkv_prologue.py) into the split launch, saving its launch
(~2.3 us a layer at batch 1 on an H100): every program computes its group's
q from the raw projection after the PDL wait (a full norm's statistics over
the whole 4 KB row included), the split that holds the newest key computes
its k and v row into registers, attends with it in place of the cache row,
and writes it to the cache at ``out_slots`` for the steps after. The old keys
of the first tile still load before the wait. The engine's default
(``runner.decode_attention_prologue=fused``): with tiles of 32 keys it took an
H100's batch-1 OLMoE step span from 1,080 to 1,053 us (with tiles of 64 it
lost, 896 against 918 tok/s: its registers left fewer programs resident).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from moeframe.attention._decode_prologue_jit import _head_weights, _norm_inv, _prologue_head
from moeframe.attention._qkv_prologue_kernels import _clamp
from moeframe.attention.batch import ForwardBatch
from moeframe.attention.qkv_prologue import QKVPrologue, check_qkv, rotary_blocks
from moeframe.gpu._pdl_jit import pdl_wait
from moeframe.gpu.pdl import pdl_args

LOG2_E = 1.4426950408889634
# Keys of a split's tiles where a context is cut into several splits (small batches), the first of which
# loads before the PDL wait; also the fewest keys a busy split takes. On an H100 at OLMoE's batch 1 (17
# splits, contexts of 129-192 keys, the prologue fused) tiles of 64 / 32 keys gave 896 / 938 tok/s, and 16
# keys 945-946 (937 with 32 in the same run): more splits busy, each a shorter chain after the wait, and
# fewer registers (sm_90, Triton 3.9: 224 / 168 / 128 a thread). A batch whose contexts take one split each
# walks them in tiles of WHOLE_CONTEXT_TILE_KEYS: fewer, longer steps (at batch 128 the 16-key tiles read
# 17,475 tok/s against 18,293 with 64 in an earlier session: not measured apart from the other changes).
SPLIT_TILE_KEYS = 16
WHOLE_CONTEXT_TILE_KEYS = 64
# Keys of a split's later tiles (contexts past num_splits * SPLIT_TILE_KEYS keys), which load after the wait:
# as short as the first by default; longer ones take fewer loop steps on long contexts but more registers
# (16 then 64 keys: 188 a thread against 128, sm_90, Triton 3.9). Neither timed on a long context yet.
LOOP_TILE_KEYS = 16

_merge_counts: dict[tuple[torch.device, int], torch.Tensor] = {}


@triton.jit
def _split_plan(kv_len, num_splits, MIN_SPLIT_TOKENS: tl.constexpr):
    """(tokens per split, splits holding keys): the context cut into num_splits chunks of at least MIN_SPLIT_TOKENS."""
    per_split = tl.maximum(tl.cdiv(kv_len, num_splits), MIN_SPLIT_TOKENS)
    return per_split, tl.cdiv(kv_len, per_split)


@triton.jit
def _attend_tile(q, k, v, n_ok, m_i, l_i, acc, scale_log2):
    """One online-softmax step over a tile of keys k [DK, N] and values v [N, DV] (Milakov & Gimelshein, 2018)."""
    scores = tl.dot(q, k) * scale_log2
    scores = tl.where(n_ok[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    p = tl.exp2(scores - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _merge_head(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    req,
    head,
    stride_on,
    stride_oh,
    num_q_heads,
    v_dim,
    num_splits,
    active,
    BLOCK_S: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """out[req, head] from the partials of its first ``active`` splits, weighted by their log-sum-exps."""
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    s_ok = offs_s < active
    dv_ok = offs_dv < v_dim
    row = (req * num_q_heads + head) * num_splits + offs_s
    lse = tl.load(part_lse_ptr + row, mask=s_ok, other=float("-inf"))
    weight = tl.exp2(lse - tl.max(lse, 0))
    weight = weight / tl.sum(weight, 0)
    parts = tl.load(part_out_ptr + row[:, None] * v_dim + offs_dv[None, :], mask=s_ok[:, None] & dv_ok[None, :], other=0.0)
    out = tl.sum(parts * weight[:, None], 0)
    tl.store(out_ptr + req * stride_on + head * stride_oh + offs_dv, out.to(out_ptr.dtype.element_ty), mask=dv_ok)


@triton.jit
def _store_partials(part_out_ptr, part_lse_ptr, row, out, lse, keep, offs_dv, dv_ok, v_dim):
    """A split's partial output and log-sum-exp, for the merge."""
    tl.store(part_out_ptr + row[:, None] * v_dim + offs_dv[None, :], out, mask=keep[:, None] & dv_ok[None, :])
    tl.store(part_lse_ptr + row, lse, mask=keep)


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    kv_indptr_ptr,
    kv_indices_ptr,
    part_out_ptr,
    part_lse_ptr,
    scale_log2,
    stride_qn,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    num_q_heads,
    k_dim,
    v_dim,
    num_splits,
    out_ptr,
    stride_on,
    stride_oh,
    counts_ptr,
    k_src_ptr,
    v_src_ptr,
    stride_kn,
    stride_vn,
    q_weight_ptr,
    k_weight_ptr,
    cos_ptr,
    sin_ptr,
    stride_cos,
    stride_sin,
    out_slots_ptr,
    num_kv_heads,
    rot_half,
    eps,
    clip,
    MIN_SPLIT_TOKENS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LOOP_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    FUSED_MERGE: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PROLOGUE: tl.constexpr,
    FULL_NORM: tl.constexpr,
    HEAD_NORM: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    INTERLEAVE: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # The host wrote kv_indptr and kv_indices before the step, and earlier steps wrote every
    # K/V row but this step's token (the last of the context, written by the qkv prologue):
    # the first tile of those is loaded before pdl_wait, while the kernels before this one run.
    kv_start = tl.load(kv_indptr_ptr + req)
    kv_len = tl.load(kv_indptr_ptr + req + 1) - kv_start
    per_split, active = _split_plan(kv_len, num_splits, MIN_SPLIT_TOKENS)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, kv_len)

    offs_h = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + offs_h
    head_ok = offs_h < GROUP
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    dk_ok = offs_dk < k_dim
    dv_ok = offs_dv < v_dim
    newest = kv_len - 1
    offs_n = lo + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hi
    old = n_ok & (offs_n != newest)
    slot = tl.load(kv_indices_ptr + kv_start + offs_n, mask=n_ok, other=0).to(tl.int64)
    k = tl.load(k_ptr + slot[None, :] * stride_ks + kv_head * stride_kh + offs_dk[:, None], mask=dk_ok[:, None] & old[None, :], other=0.0)
    v = tl.load(v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh + offs_dv[None, :], mask=old[:, None] & dv_ok[None, :], other=0.0)
    if PROLOGUE:
        # The split holding the newest key (anywhere in its range) computes its k and v; the norm weights
        # of that k head and of the group's first query head are loaded before the wait.
        holds_new = (newest >= lo) & (newest < hi)
        # (a split without the newest key loads nothing: no dim lies below a bound of 0)
        new_dk = offs_dk < tl.where(holds_new, k_dim, 0)
        new_dv = offs_dv < tl.where(holds_new, v_dim, 0)
        wk_a, wk_b = _head_weights(k_weight_ptr, kv_head * k_dim, new_dk, offs_dk, k_dim, rot_half, FULL_NORM, HEAD_NORM, INTERLEAVE)
        wq_a, wq_b = _head_weights(q_weight_ptr, kv_head * GROUP * k_dim, dk_ok, offs_dk, k_dim, rot_half, FULL_NORM, HEAD_NORM, INTERLEAVE)
    pdl_wait(USE_PDL)
    is_new = n_ok & (offs_n == newest)
    if PROLOGUE:
        # q, and the newest k and v row in the split that holds it, from the raw qkv projection
        # (_decode_prologue_jit.py); that split also writes k and v to the cache for later steps.
        q_row = q_ptr + req * stride_qn
        k_row = k_src_ptr + req * stride_kn
        cos_row = cos_ptr + req * stride_cos
        sin_row = sin_ptr + req * stride_sin
        q_inv = 1.0
        k_inv = 1.0
        if FULL_NORM:
            q_inv = _norm_inv(
                q_row, 0, num_q_heads, num_q_heads, k_dim, rot_half, eps, clip,
                True, HAS_CLIP, INTERLEAVE, BLOCK_HQ, BLOCK_R, BLOCK_P,
            )  # fmt: skip
            k_inv = _norm_inv(
                k_row, 0, tl.where(holds_new, num_kv_heads, 0), num_kv_heads, k_dim, rot_half, eps, clip,
                True, HAS_CLIP, INTERLEAVE, BLOCK_HK, BLOCK_R, BLOCK_P,
            )  # fmt: skip
        if HEAD_NORM:
            k_inv = tl.max(_norm_inv(
                k_row, kv_head, tl.where(holds_new, kv_head + 1, 0), num_kv_heads, k_dim, rot_half, eps, clip,
                False, HAS_CLIP, INTERLEAVE, 1, BLOCK_R, BLOCK_P,
            ), axis=0)  # fmt: skip
        # One query head at a time as a [BLOCK_DK] row (a group is 1 to 8 heads, a tile 16 rows), put in its row.
        q = tl.zeros((BLOCK_H, BLOCK_DK), dtype=q_ptr.dtype.element_ty)
        for member in tl.static_range(GROUP):
            q_head = kv_head * GROUP + member
            if HEAD_NORM:
                q_inv = tl.max(_norm_inv(
                    q_row, q_head, q_head + 1, num_q_heads, k_dim, rot_half, eps, clip,
                    False, HAS_CLIP, INTERLEAVE, 1, BLOCK_R, BLOCK_P,
                ), axis=0)  # fmt: skip
            if member > 0:
                wq_a, wq_b = _head_weights(q_weight_ptr, q_head * k_dim, dk_ok, offs_dk, k_dim, rot_half, FULL_NORM, HEAD_NORM, INTERLEAVE)
            q_g = _prologue_head(
                q_row, wq_a, wq_b, q_head * k_dim, dk_ok, offs_dk, q_inv, cos_row, sin_row,
                k_dim, rot_half, clip, FULL_NORM, HEAD_NORM, HAS_CLIP, INTERLEAVE,
            )  # fmt: skip
            q = tl.where(offs_h[:, None] == member, q_g[None, :], q)
        k_new = _prologue_head(
            k_row, wk_a, wk_b, kv_head * k_dim, new_dk, offs_dk, k_inv, cos_row, sin_row,
            k_dim, rot_half, clip, FULL_NORM, HEAD_NORM, HAS_CLIP, INTERLEAVE,
        ).to(k_ptr.dtype.element_ty)  # fmt: skip
        v_new = tl.load(v_src_ptr + req * stride_vn + kv_head * v_dim + offs_dv, mask=new_dv, other=0.0)
        if HAS_CLIP:
            v_new = _clamp(v_new.to(tl.float32), clip).to(v_src_ptr.dtype.element_ty)
        v_new = v_new.to(v_ptr.dtype.element_ty)
        out_slot = tl.load(out_slots_ptr + req).to(tl.int64)
        tl.store(k_ptr + out_slot * stride_ks + kv_head * stride_kh + offs_dk, k_new, mask=new_dk)
        tl.store(v_ptr + out_slot * stride_vs + kv_head * stride_vh + offs_dv, v_new, mask=new_dv)
    else:
        # The newest token's row, if this split's first tile holds it, read as one row after the wait.
        holds_new = (newest >= lo) & (newest < lo + BLOCK_N) & (newest < hi)
        new_slot = tl.load(kv_indices_ptr + kv_start + newest, mask=holds_new, other=0).to(tl.int64)
        # (a split without it loads nothing: no column lies below a bound of 0)
        k_new = tl.load(k_ptr + new_slot * stride_ks + kv_head * stride_kh + offs_dk, mask=offs_dk < tl.where(holds_new, k_dim, 0), other=0.0)
        v_new = tl.load(v_ptr + new_slot * stride_vs + kv_head * stride_vh + offs_dv, mask=offs_dv < tl.where(holds_new, v_dim, 0), other=0.0)
        q = tl.load(q_ptr + req * stride_qn + head[:, None] * stride_qh + offs_dk[None, :], mask=head_ok[:, None] & dk_ok[None, :], other=0.0)
    k = tl.where(is_new[None, :], k_new[:, None], k)
    v = tl.where(is_new[:, None], v_new[None, :], v)
    q = q.to(k_ptr.dtype.element_ty)

    m_i = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_DV), dtype=tl.float32)
    if lo < hi:
        m_i, l_i, acc = _attend_tile(q, k, v, n_ok, m_i, l_i, acc, scale_log2)
    for start in range(lo + BLOCK_N, hi, LOOP_N):
        # later tiles (LOOP_N keys) under their own names: a loop-carried value keeps its first tile's shape
        offs_t = start + tl.arange(0, LOOP_N)
        t_ok = offs_t < hi
        # Fused, the newest key comes from registers: its cache row is written by this launch.
        t_old = t_ok
        if PROLOGUE:
            t_old = t_ok & (offs_t != newest)
        t_slot = tl.load(kv_indices_ptr + kv_start + offs_t, mask=t_old, other=0).to(tl.int64)
        k_t = tl.load(k_ptr + t_slot[None, :] * stride_ks + kv_head * stride_kh + offs_dk[:, None], mask=dk_ok[:, None] & t_old[None, :], other=0.0)
        v_t = tl.load(v_ptr + t_slot[:, None] * stride_vs + kv_head * stride_vh + offs_dv[None, :], mask=t_old[:, None] & dv_ok[None, :], other=0.0)
        if PROLOGUE:
            t_new = t_ok & (offs_t == newest)
            k_t = tl.where(t_new[None, :], k_new[:, None], k_t)
            v_t = tl.where(t_new[:, None], v_new[None, :], v_t)
        m_i, l_i, acc = _attend_tile(q, k_t, v_t, t_ok, m_i, l_i, acc, scale_log2)

    # Splits past the active ones hold no keys and write nothing: the merge reads the active ones only.
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    row = (req * num_q_heads + head) * num_splits + split
    keep = head_ok & (offs_h * 0 + split < active)
    if FUSED_MERGE:
        if active == 1:
            # One split holds every key: its output is the merge's (a weight of exactly 1), written at once.
            if split == 0:
                out_ptrs = out_ptr + req * stride_on + head[:, None] * stride_oh + offs_dv[None, :]
                tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & dv_ok[None, :])
        else:
            _store_partials(part_out_ptr, part_lse_ptr, row, out, lse, keep, offs_dv, dv_ok, v_dim)
            # every thread's partial stores come before the release below
            tl.debug_barrier()
            if split < active:
                counter = counts_ptr + req * tl.num_programs(1) + kv_head
                finished_before = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                if finished_before == active - 1:
                    for g in range(GROUP):
                        _merge_head(
                            part_out_ptr, part_lse_ptr, out_ptr, req, kv_head * GROUP + g, stride_on, stride_oh,
                            num_q_heads, v_dim, num_splits, active, BLOCK_S, BLOCK_DV,
                        )  # fmt: skip
                    tl.store(counter, 0)
    else:
        _store_partials(part_out_ptr, part_lse_ptr, row, out, lse, keep, offs_dv, dv_ok, v_dim)


@triton.jit
def _decode_merge_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_on,
    stride_oh,
    num_q_heads,
    v_dim,
    num_splits,
    kv_indptr_ptr,
    MIN_SPLIT_TOKENS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    kv_len = tl.load(kv_indptr_ptr + req + 1) - tl.load(kv_indptr_ptr + req)
    _, active = _split_plan(kv_len, num_splits, MIN_SPLIT_TOKENS)
    pdl_wait(USE_PDL)
    _merge_head(
        part_out_ptr, part_lse_ptr, out_ptr, req, head, stride_on, stride_oh, num_q_heads, v_dim, num_splits, active,
        BLOCK_S, BLOCK_DV,
    )  # fmt: skip


def tile_keys(num_splits: int, block_dk: int) -> int:
    """Keys of the split kernel's tiles: SPLIT_TILE_KEYS where contexts are split, else WHOLE_CONTEXT_TILE_KEYS
    (half of it past 128 key dims, whose tiles take twice the registers)."""
    if num_splits > 1:
        return SPLIT_TILE_KEYS
    return WHOLE_CONTEXT_TILE_KEYS if block_dk <= 128 else WHOLE_CONTEXT_TILE_KEYS // 2


def loop_tile_keys(first_tile_keys: int) -> int:
    """Keys of the tiles after a split's first: LOOP_TILE_KEYS where split tiles are short, else the first's."""
    return LOOP_TILE_KEYS if first_tile_keys == SPLIT_TILE_KEYS else first_tile_keys


def default_num_kv_splits(batch_size: int, num_kv_heads: int, device: torch.device) -> int:
    """Enough (request, KV head, split) programs for about two waves over the GPU's SMs, at most 32 splits."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(32, math.ceil(2 * sms / (batch_size * num_kv_heads))))


def merge_counts(device: torch.device, num_groups: int) -> torch.Tensor:
    """The zeroed completion counters of ``num_groups`` (request, KV head) pairs, one tensor per (device, size).

    Kept for the life of the process: a CUDA graph captures the address, and
    every launch leaves the counters at zero. Launches share them as the steps
    of one stream share the activations: one at a time, in stream order.
    """
    key = (device, num_groups)
    if key not in _merge_counts:
        _merge_counts[key] = torch.zeros(num_groups, dtype=torch.int32, device=device)
    return _merge_counts[key]


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: ForwardBatch,
    scale: float,
    num_kv_splits: int | None = None,
    fused_merge: bool = True,
) -> torch.Tensor:
    """q [B, Hq, Dk] (one new token per request); k_cache [S, Hkv, Dk]; v_cache [S, Hkv, Dv] -> [B, Hq, Dv].

    ``fused_merge``: the last split of each (request, KV head) merges in the
    split launch; False merges in a second launch (same result, bit for bit).
    """
    num_q_heads = q.shape[1]
    q = q if q.stride(-1) == 1 else q.contiguous()
    return _decode(q, q.stride(1), num_q_heads, k_cache, v_cache, batch, scale, num_kv_splits, fused_merge, None)


def decode_attention_prologue(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prologue: QKVPrologue,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: ForwardBatch,
    scale: float,
    num_kv_splits: int | None = None,
    fused_merge: bool = True,
) -> torch.Tensor:
    """``prologue.apply`` then decode_attention, in the split launch: q [B, Hq*D], k [B, Hkv*D], v [B, Hkv*Dv] raw.

    Same bits as the two launches under the interpreter (same operations,
    same roundings); k and v of each token land in its ``batch.out_slots`` row.
    """
    num_q_heads = check_qkv(q, k, v, prologue.q_norm_weight, prologue.k_norm_weight, prologue.norm, prologue.cos, prologue.sin, k_cache, v_cache)
    return _decode(q, k_cache.shape[-1], num_q_heads, k_cache, v_cache, batch, scale, num_kv_splits, fused_merge, (k, v, prologue))


def _decode(
    q: torch.Tensor,
    stride_qh: int,
    num_q_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: ForwardBatch,
    scale: float,
    num_kv_splits: int | None,
    fused_merge: bool,
    fused: tuple[torch.Tensor, torch.Tensor, QKVPrologue] | None,
) -> torch.Tensor:
    """The split (and merge) launch over q's rows of ``num_q_heads`` heads ``stride_qh`` apart; ``fused``: raw k, v and the prologue."""
    if not batch.is_decode:
        raise ValueError("decode_attention takes one query token per request; use extend_attention")
    num_reqs, k_dim = q.shape[0], k_cache.shape[-1]
    num_kv_heads, v_dim = k_cache.shape[1], v_cache.shape[-1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of KV heads ({num_kv_heads})")
    group = num_q_heads // num_kv_heads
    splits = num_kv_splits or default_num_kv_splits(num_reqs, num_kv_heads, q.device)
    k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_cache, v_cache))

    part_out = torch.empty(num_reqs, num_q_heads, splits, v_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_reqs, num_q_heads, splits, dtype=torch.float32, device=q.device)
    out = q.new_empty(num_reqs, num_q_heads, v_dim)
    counts = merge_counts(q.device, num_reqs * num_kv_heads) if fused_merge else part_lse
    block_dk, block_dv = max(16, triton.next_power_of_2(k_dim)), max(16, triton.next_power_of_2(v_dim))
    block_n, block_s = tile_keys(splits, block_dk), triton.next_power_of_2(splits)
    _decode_split_kernel[(num_reqs, num_kv_heads, splits)](
        q, k_cache, v_cache, batch.kv_indptr, batch.kv_indices, part_out, part_lse,
        scale * LOG2_E, q.stride(0), stride_qh, k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), num_q_heads, k_dim, v_dim, splits,
        out, out.stride(0), out.stride(1), counts, *_prologue_args(q, num_kv_heads, k_dim, batch, fused),
        MIN_SPLIT_TOKENS=block_n, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        LOOP_N=loop_tile_keys(block_n),
        BLOCK_DK=block_dk, BLOCK_DV=block_dv, FUSED_MERGE=fused_merge, BLOCK_S=block_s,
        **_prologue_constexprs(num_q_heads, num_kv_heads, k_dim, fused),
        num_warps=4, num_stages=2, **pdl_args(q),
    )  # fmt: skip
    if not fused_merge:
        _decode_merge_kernel[(num_reqs, num_q_heads)](
            part_out, part_lse, out, out.stride(0), out.stride(1), num_q_heads, v_dim, splits, batch.kv_indptr,
            MIN_SPLIT_TOKENS=block_n, BLOCK_S=block_s, BLOCK_DV=block_dv, **pdl_args(q),
        )  # fmt: skip
    return out


def _prologue_args(
    q: torch.Tensor, num_kv_heads: int, k_dim: int, batch: ForwardBatch, fused: tuple[torch.Tensor, torch.Tensor, QKVPrologue] | None
) -> tuple:
    """The split kernel's prologue arguments, from k_src_ptr to clip (placeholders when there is no prologue)."""
    if fused is None:
        return (q, q, 0, 0, q, q, q, q, 0, 0, batch.out_slots, num_kv_heads, 0, 0.0, 0.0)
    k, v, p = fused
    q_weight = p.q_norm_weight if p.norm != "none" else q
    k_weight = p.k_norm_weight if p.norm != "none" else k
    return (
        k, v, k.stride(0), v.stride(0), q_weight, k_weight, p.cos, p.sin, p.cos.stride(0), p.sin.stride(0),
        batch.out_slots, num_kv_heads, p.cos.shape[-1], float(p.eps), 0.0 if p.clip is None else float(p.clip),
    )  # fmt: skip


def _prologue_constexprs(
    num_q_heads: int, num_kv_heads: int, k_dim: int, fused: tuple[torch.Tensor, torch.Tensor, QKVPrologue] | None
) -> dict[str, int | bool]:
    """The split kernel's prologue constexprs: the prologue's modes and the tiles of its norm statistics."""
    if fused is None:
        return dict(PROLOGUE=False, FULL_NORM=False, HEAD_NORM=False, HAS_CLIP=False, INTERLEAVE=False,
                    BLOCK_HQ=1, BLOCK_HK=1, BLOCK_R=1, BLOCK_P=1)  # fmt: skip
    p = fused[2]
    block_r, block_p = rotary_blocks(k_dim, p.cos.shape[-1])
    return dict(
        PROLOGUE=True, FULL_NORM=p.norm == "full", HEAD_NORM=p.norm == "per_head", HAS_CLIP=p.clip is not None,
        INTERLEAVE=p.interleave, BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HK=triton.next_power_of_2(num_kv_heads), BLOCK_R=block_r, BLOCK_P=block_p,
    )  # fmt: skip
