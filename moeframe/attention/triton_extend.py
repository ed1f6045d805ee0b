"""Extend attention over KV slots: new tokens of each request on top of its cached prefix.

FlashAttention-2's loop (Dao, 2023) with K and V gathered through
``kv_indices`` instead of read from contiguous memory, as SGLang's
extend_attention reads its token pool. The caller has already written the new
tokens' K/V into their slots, so one pass over the whole context serves both
the cached prefix (fully visible) and the new part (causal): new token i of a
request sits at context position ``kv_len - q_len + i``. Each program owns
``BLOCK_M`` new tokens of one query head and stops at the last key its rows
can see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moeframe.attention.batch import ForwardBatch

LOG2_E = 1.4426950408889634


@triton.jit
def _attend_keys(
    acc,
    l_i,
    m_i,
    q,
    q_pos,
    start,
    kv_end,
    k_ptr,
    v_ptr,
    kv_indices_ptr,
    kv_start,
    kv_head,
    scale_log2,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    offs_dk,
    offs_dv,
    dk_ok,
    dv_ok,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One online-softmax step over keys [start, start + BLOCK_N); MASKED for the causal and ragged edges."""
    offs_n = start + tl.arange(0, BLOCK_N)
    if MASKED:
        n_ok = offs_n < kv_end
        slot = tl.load(kv_indices_ptr + kv_start + offs_n, mask=n_ok, other=0).to(tl.int64)
        k = tl.load(k_ptr + slot[None, :] * stride_ks + kv_head * stride_kh + offs_dk[:, None], mask=dk_ok[:, None] & n_ok[None, :], other=0.0)
        v = tl.load(v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
        scores = tl.dot(q, k) * scale_log2
        scores = tl.where(n_ok[None, :] & (offs_n[None, :] <= q_pos[:, None]), scores, float("-inf"))
    else:
        slot = tl.load(kv_indices_ptr + kv_start + offs_n).to(tl.int64)
        k = tl.load(k_ptr + slot[None, :] * stride_ks + kv_head * stride_kh + offs_dk[:, None], mask=dk_ok[:, None], other=0.0)
        v = tl.load(v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh + offs_dv[None, :], mask=dv_ok[None, :], other=0.0)
        scores = tl.dot(q, k) * scale_log2
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    p = tl.exp2(scores - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _extend_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    q_indptr_ptr,
    kv_indptr_ptr,
    kv_indices_ptr,
    scale_log2,
    stride_qn,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_on,
    stride_oh,
    k_dim,
    v_dim,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    q_start = tl.load(q_indptr_ptr + req)
    q_len = tl.load(q_indptr_ptr + req + 1) - q_start
    if m_block * BLOCK_M >= q_len:
        return
    kv_start = tl.load(kv_indptr_ptr + req)
    kv_len = tl.load(kv_indptr_ptr + req + 1) - kv_start
    prefix_len = kv_len - q_len
    kv_head = head // GROUP

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < q_len
    q_pos = prefix_len + offs_m
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    dk_ok = offs_dk < k_dim
    dv_ok = offs_dv < v_dim
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qn + head * stride_qh + offs_dk[None, :], mask=m_ok[:, None] & dk_ok[None, :], other=0.0)
    q = q.to(k_ptr.dtype.element_ty)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    # Two phases, as FlashAttention-2's causal loop: whole key blocks that every
    # row of this tile sees (no masks), then the blocks on the diagonal and the
    # ragged end. Key 0 is visible to every row, so each row's max is finite
    # after the first block.
    all_visible_end = (prefix_len + m_block * BLOCK_M) // BLOCK_N * BLOCK_N
    kv_end = tl.minimum(kv_len, prefix_len + (m_block + 1) * BLOCK_M)
    for start in range(0, all_visible_end, BLOCK_N):
        acc, l_i, m_i = _attend_keys(
            acc, l_i, m_i, q, q_pos, start, kv_end, k_ptr, v_ptr, kv_indices_ptr, kv_start, kv_head, scale_log2,
            stride_ks, stride_kh, stride_vs, stride_vh, offs_dk, offs_dv, dk_ok, dv_ok, BLOCK_N, False,
        )  # fmt: skip
    for start in range(all_visible_end, kv_end, BLOCK_N):
        acc, l_i, m_i = _attend_keys(
            acc, l_i, m_i, q, q_pos, start, kv_end, k_ptr, v_ptr, kv_indices_ptr, kv_start, kv_head, scale_log2,
            stride_ks, stride_kh, stride_vs, stride_vh, offs_dk, offs_dv, dk_ok, dv_ok, BLOCK_N, True,
        )  # fmt: skip

    out = acc / l_i[:, None]
    tl.store(out_ptr + rows[:, None] * stride_on + head * stride_oh + offs_dv[None, :], out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & dv_ok[None, :])


@dataclass(frozen=True)
class ExtendTile:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_extend_tile(max_q_len: int, block_d: int, elem_bytes: int) -> ExtendTile:
    """Tiles measured best on an H100 at head dim 128 (benchmarks/kernels_h100.md): 128 x 128 keys,
    8 warps, 3 stages for prefills of 128 tokens or more; 64 x 64 for short extends. Wider heads
    and 4-byte inputs take smaller tiles to fit shared memory."""
    if block_d > 128 or elem_bytes > 2:
        return ExtendTile(64, 32, 4, 2)
    if max_q_len >= 128:
        return ExtendTile(128, 128, 8, 3)
    return ExtendTile(64, 64, 4, 3)


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: ForwardBatch,
    scale: float,
    tile: ExtendTile | None = None,
) -> torch.Tensor:
    """q [N, Hq, Dk] (new tokens, ragged by ``q_indptr``); k_cache [S, Hkv, Dk]; v_cache [S, Hkv, Dv] -> [N, Hq, Dv]."""
    num_tokens, num_q_heads, k_dim = q.shape
    num_kv_heads, v_dim = k_cache.shape[1], v_cache.shape[-1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of KV heads ({num_kv_heads})")
    q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k_cache, v_cache))
    out = q.new_empty(num_tokens, num_q_heads, v_dim)
    if num_tokens == 0:
        return out
    block_dk, block_dv = max(16, triton.next_power_of_2(k_dim)), max(16, triton.next_power_of_2(v_dim))
    tile = tile or default_extend_tile(batch.max_q_len, max(block_dk, block_dv), max(q.element_size(), k_cache.element_size()))
    grid = (batch.batch_size, num_q_heads, triton.cdiv(batch.max_q_len, tile.block_m))
    _extend_kernel[grid](
        q, k_cache, v_cache, out, batch.q_indptr, batch.kv_indptr, batch.kv_indices, scale * LOG2_E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), k_dim, v_dim,
        GROUP=num_q_heads // num_kv_heads, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_DK=block_dk, BLOCK_DV=block_dv,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )  # fmt: skip
    return out
