"""The Triton kernel of qkv_prologue.py: q/k norm, clip, rotary and the KV-cache write in one launch.

Program (token, part): parts ``[0, q_blocks)`` each take a block of query
heads and write them rotated to ``q_out``; the remaining parts each take a
block of KV heads, rotate k and copy v into the pool row of the token's slot.
A head is loaded as three tiles: the two rotary halves (pairs ``(i, i + r/2)``,
or ``(2i, 2i+1)`` interleaved) and the dims past ``rotary_dim``, which pass
through. Norm statistics are summed over the three tiles: over each head
(per_head) or over the whole block, which then holds every head (full).

Every step rounds to the input dtype where the torch code materialises a
tensor (after each norm, after the rotation), and computes in float32 between.

This module is imported lazily (see qkv_prologue.py): Triton decides at
decoration time whether to compile or interpret a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.gpu._pdl_jit import pdl_wait

@triton.jit
def _sum_sq(x1, x2, xp):
    """Each head's sum of squares over its three tiles (the rotary halves and the pass-through dims)."""
    return tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1) + tl.sum(xp * xp, axis=1)


@triton.jit
def _inv_rms(sum_sq, count, eps):
    return tl.math.rsqrt(sum_sq / count + eps)


@triton.jit
def _normed(x, inv, w, dtype: tl.constexpr):
    """rms_norm of norm.py for one tile: x * inv in float32, rounded, times the weight, rounded."""
    return (w * (x * inv).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)


@triton.jit
def _rms_scale(x1, x2, xp, src_ptr, w_ptr, w1_offs, w2_offs, wp_offs, m1, mp, num_heads, head_dim, eps, FULL: tl.constexpr):
    """rms_norm of norm.py over each head (or, FULL, over the whole block) of the three tiles."""
    dtype = src_ptr.dtype.element_ty
    sum_sq = _sum_sq(x1, x2, xp)
    if FULL:
        inv = tl.zeros_like(sum_sq) + _inv_rms(tl.sum(sum_sq, axis=0), num_heads * head_dim, eps)
    else:
        inv = _inv_rms(sum_sq, head_dim, eps)
    w1 = tl.load(w_ptr + w1_offs, mask=m1, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + w2_offs, mask=m1, other=0.0).to(tl.float32)
    wp = tl.load(w_ptr + wp_offs, mask=mp, other=0.0).to(tl.float32)
    x1 = _normed(x1, inv[:, None], w1, dtype)
    x2 = _normed(x2, inv[:, None], w2, dtype)
    xp = _normed(xp, inv[:, None], wp, dtype)
    return x1, x2, xp


@triton.jit
def _head_tiles(src_ptr, heads, num_heads, head_dim, rot_half, INTERLEAVE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """Heads ``heads`` of one token's row as float32 tiles: the two rotary halves and the pass-through dims, with their offsets and masks."""
    offs_r = tl.arange(0, BLOCK_R)
    offs_p = 2 * rot_half + tl.arange(0, BLOCK_P)
    if INTERLEAVE:
        dim1 = 2 * offs_r
        dim2 = dim1 + 1
    else:
        dim1 = offs_r
        dim2 = offs_r + rot_half
    head_ok = heads < num_heads
    m1 = head_ok[:, None] & (offs_r < rot_half)[None, :]
    mp = head_ok[:, None] & (offs_p < head_dim)[None, :]
    row = heads[:, None] * head_dim
    x1 = tl.load(src_ptr + row + dim1[None, :], mask=m1, other=0.0).to(tl.float32)
    x2 = tl.load(src_ptr + row + dim2[None, :], mask=m1, other=0.0).to(tl.float32)
    xp = tl.load(src_ptr + row + offs_p[None, :], mask=mp, other=0.0).to(tl.float32)
    return x1, x2, xp, dim1, dim2, offs_p, m1, mp, row


@triton.jit
def _clamp(x, clip):
    return tl.minimum(tl.maximum(x, -clip), clip)


@triton.jit
def _rotate_heads(
    src_ptr,
    dst_ptr,
    stride_dst_h,
    w_ptr,
    cos,
    sin,
    head0,
    num_heads,
    head_dim,
    rot_half,
    eps,
    clip,
    FULL_NORM: tl.constexpr,
    HEAD_NORM: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    INTERLEAVE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Heads [head0, head0 + BLOCK_H) of one token's row at src_ptr -> dst_ptr + head * stride_dst_h."""
    dtype = src_ptr.dtype.element_ty
    heads = head0 + tl.arange(0, BLOCK_H)
    offs_r = tl.arange(0, BLOCK_R)
    x1, x2, xp, dim1, dim2, offs_p, m1, mp, row = _head_tiles(
        src_ptr, heads, num_heads, head_dim, rot_half, INTERLEAVE, BLOCK_R, BLOCK_P
    )
    # The order of Attention.forward: full norm, clip, per-head norm, rotary.
    if FULL_NORM:
        x1, x2, xp = _rms_scale(
            x1, x2, xp, src_ptr, w_ptr, row + dim1[None, :], row + dim2[None, :], row + offs_p[None, :],
            m1, mp, num_heads, head_dim, eps, True,
        )  # fmt: skip
    if HAS_CLIP:
        x1, x2, xp = _clamp(x1, clip), _clamp(x2, clip), _clamp(xp, clip)
    if HEAD_NORM:
        x1, x2, xp = _rms_scale(
            x1, x2, xp, src_ptr, w_ptr, dim1[None, :], dim2[None, :], offs_p[None, :],
            m1, mp, num_heads, head_dim, eps, False,
        )  # fmt: skip
    c = cos[None, :]
    s = sin[None, :]
    out1 = (x1 * c - x2 * s).to(dtype).to(dst_ptr.dtype.element_ty)
    out2 = (x2 * c + x1 * s).to(dtype).to(dst_ptr.dtype.element_ty)
    dst_row = dst_ptr + heads[:, None] * stride_dst_h
    tl.store(dst_row + offs_r[None, :], out1, mask=m1)
    tl.store(dst_row + rot_half + offs_r[None, :], out2, mask=m1)
    tl.store(dst_row + offs_p[None, :], xp.to(dtype).to(dst_ptr.dtype.element_ty), mask=mp)


@triton.jit
def qkv_prologue_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    cos_ptr,
    sin_ptr,
    q_weight_ptr,
    k_weight_ptr,
    stride_q,
    stride_k,
    stride_v,
    stride_qo_n,
    stride_qo_h,
    stride_kc_s,
    stride_kc_h,
    stride_vc_s,
    stride_vc_h,
    stride_cos,
    stride_sin,
    num_q_heads,
    num_kv_heads,
    head_dim,
    v_dim,
    rot_half,
    q_blocks,
    eps,
    clip,
    FULL_NORM: tl.constexpr,
    HEAD_NORM: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    INTERLEAVE: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < rot_half
    cos = tl.load(cos_ptr + token * stride_cos + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + token * stride_sin + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    if part < q_blocks:
        _rotate_heads(
            q_ptr + token * stride_q, q_out_ptr + token * stride_qo_n, stride_qo_h, q_weight_ptr, cos, sin,
            part * BLOCK_HQ, num_q_heads, head_dim, rot_half, eps, clip,
            FULL_NORM, HEAD_NORM, HAS_CLIP, INTERLEAVE, BLOCK_HQ, BLOCK_R, BLOCK_P,
        )  # fmt: skip
    else:
        slot = tl.load(slots_ptr + token).to(tl.int64)
        head0 = (part - q_blocks) * BLOCK_HK
        _rotate_heads(
            k_ptr + token * stride_k, k_cache_ptr + slot * stride_kc_s, stride_kc_h, k_weight_ptr, cos, sin,
            head0, num_kv_heads, head_dim, rot_half, eps, clip,
            FULL_NORM, HEAD_NORM, HAS_CLIP, INTERLEAVE, BLOCK_HK, BLOCK_R, BLOCK_P,
        )  # fmt: skip
        heads = head0 + tl.arange(0, BLOCK_HK)
        offs_d = tl.arange(0, BLOCK_DV)
        mask = (heads < num_kv_heads)[:, None] & (offs_d < v_dim)[None, :]
        v = tl.load(v_ptr + token * stride_v + heads[:, None] * v_dim + offs_d[None, :], mask=mask, other=0.0)
        if HAS_CLIP:
            v = _clamp(v.to(tl.float32), clip).to(v_ptr.dtype.element_ty)
        dst = v_cache_ptr + slot * stride_vc_s + heads[:, None] * stride_vc_h + offs_d[None, :]
        tl.store(dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)
