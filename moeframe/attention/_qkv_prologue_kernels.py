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
def _rms_scale(x1, x2, xp, src_ptr, w1, w2, wp, num_heads, head_dim, eps, FULL: tl.constexpr):
    """rms_norm of norm.py over each head (or, FULL, over the whole block) of the three tiles, weights given as tiles."""
    dtype = src_ptr.dtype.element_ty
    sum_sq = _sum_sq(x1, x2, xp)
    if FULL:
        inv = tl.zeros_like(sum_sq) + _inv_rms(tl.sum(sum_sq, axis=0), num_heads * head_dim, eps)
    else:
        inv = _inv_rms(sum_sq, head_dim, eps)
    x1 = _normed(x1, inv[:, None], w1, dtype)
    x2 = _normed(x2, inv[:, None], w2, dtype)
    xp = _normed(xp, inv[:, None], wp, dtype)
    return x1, x2, xp


@triton.jit
def _norm_weight_tiles(
    w_ptr,
    heads,
    num_heads,
    head_dim,
    rot_half,
    FULL_NORM: tl.constexpr,
    HEAD_NORM: tl.constexpr,
    INTERLEAVE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The norm weight as float32 tiles shaped like ``_head_tiles``' (zeros without a norm): loaded before the PDL wait,
    as weights, so that no memory round trip follows the sum of squares."""
    dim1, dim2, offs_p, m1, mp = _tile_dims(heads, num_heads, head_dim, rot_half, INTERLEAVE, BLOCK_R, BLOCK_P)
    # the full norm's weight spans every head; the per-head norm's is one head long
    row = heads[:, None] * (head_dim if FULL_NORM else 0)
    w1 = tl.zeros([heads.shape[0], BLOCK_R], dtype=tl.float32)
    w2 = tl.zeros([heads.shape[0], BLOCK_R], dtype=tl.float32)
    wp = tl.zeros([heads.shape[0], BLOCK_P], dtype=tl.float32)
    if FULL_NORM or HEAD_NORM:
        w1 = tl.load(w_ptr + row + dim1[None, :], mask=m1, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + row + dim2[None, :], mask=m1, other=0.0).to(tl.float32)
        wp = tl.load(w_ptr + row + offs_p[None, :], mask=mp, other=0.0).to(tl.float32)
    return w1, w2, wp


@triton.jit
def _tile_dims(heads, num_heads, head_dim, rot_half, INTERLEAVE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """The dims of a head's three tiles (rotary halves, pass-through) and the tiles' masks over ``heads``."""
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
    return dim1, dim2, offs_p, m1, mp


@triton.jit
def _head_tiles(src_ptr, heads, num_heads, head_dim, rot_half, INTERLEAVE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """Heads ``heads`` of one token's row as float32 tiles: the two rotary halves and the pass-through dims, with the
    pass-through offsets and the masks."""
    dim1, dim2, offs_p, m1, mp = _tile_dims(heads, num_heads, head_dim, rot_half, INTERLEAVE, BLOCK_R, BLOCK_P)
    row = heads[:, None] * head_dim
    x1 = tl.load(src_ptr + row + dim1[None, :], mask=m1, other=0.0).to(tl.float32)
    x2 = tl.load(src_ptr + row + dim2[None, :], mask=m1, other=0.0).to(tl.float32)
    xp = tl.load(src_ptr + row + offs_p[None, :], mask=mp, other=0.0).to(tl.float32)
    return x1, x2, xp, offs_p, m1, mp


@triton.jit
def _clamp(x, clip):
    return tl.minimum(tl.maximum(x, -clip), clip)


@triton.jit
def _rotate_heads(
    src_ptr,
    dst_ptr,
    stride_dst_h,
    norm_w1,
    norm_w2,
    norm_wp,
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
    """Heads [head0, head0 + BLOCK_H) of one token's row at src_ptr -> dst_ptr + head * stride_dst_h.

    ``norm_w1``, ``norm_w2``, ``norm_wp``: the norm weight's tiles for these heads (``_norm_weight_tiles``).
    """
    dtype = src_ptr.dtype.element_ty
    heads = head0 + tl.arange(0, BLOCK_H)
    offs_r = tl.arange(0, BLOCK_R)
    x1, x2, xp, offs_p, m1, mp = _head_tiles(
        src_ptr, heads, num_heads, head_dim, rot_half, INTERLEAVE, BLOCK_R, BLOCK_P
    )
    # The order of Attention.forward: full norm, clip, per-head norm, rotary.
    if FULL_NORM:
        x1, x2, xp = _rms_scale(x1, x2, xp, src_ptr, norm_w1, norm_w2, norm_wp, num_heads, head_dim, eps, True)
    if HAS_CLIP:
        x1, x2, xp = _clamp(x1, clip), _clamp(x2, clip), _clamp(xp, clip)
    if HEAD_NORM:
        x1, x2, xp = _rms_scale(x1, x2, xp, src_ptr, norm_w1, norm_w2, norm_wp, num_heads, head_dim, eps, False)
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
    token = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < rot_half
    # The norm weights are weights: loaded before the wait, the q heads' tiles by the q programs and the k heads'
    # by the KV programs (a head count of 0 masks the other's loads off).
    is_q = part < q_blocks
    q_head0 = part * BLOCK_HQ
    head0 = (part - q_blocks) * BLOCK_HK
    wq1, wq2, wqp = _norm_weight_tiles(
        q_weight_ptr, q_head0 + tl.arange(0, BLOCK_HQ), tl.where(is_q, num_q_heads, 0), head_dim, rot_half,
        FULL_NORM, HEAD_NORM, INTERLEAVE, BLOCK_R, BLOCK_P,
    )  # fmt: skip
    wk1, wk2, wkp = _norm_weight_tiles(
        k_weight_ptr, head0 + tl.arange(0, BLOCK_HK), tl.where(is_q, 0, num_kv_heads), head_dim, rot_half,
        FULL_NORM, HEAD_NORM, INTERLEAVE, BLOCK_R, BLOCK_P,
    )  # fmt: skip
    pdl_wait(USE_PDL)
    cos = tl.load(cos_ptr + token * stride_cos + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + token * stride_sin + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    if is_q:
        _rotate_heads(
            q_ptr + token * stride_q, q_out_ptr + token * stride_qo_n, stride_qo_h, wq1, wq2, wqp, cos, sin,
            q_head0, num_q_heads, head_dim, rot_half, eps, clip,
            FULL_NORM, HEAD_NORM, HAS_CLIP, INTERLEAVE, BLOCK_HQ, BLOCK_R, BLOCK_P,
        )  # fmt: skip
    else:
        slot = tl.load(slots_ptr + token).to(tl.int64)
        _rotate_heads(
            k_ptr + token * stride_k, k_cache_ptr + slot * stride_kc_s, stride_kc_h, wk1, wk2, wkp, cos, sin,
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
