"""The qkv prologue of one decode token, computed inside the decode attention split kernel (triton_decode.py).

With ``runner.decode_attention_prologue=fused`` the split kernel takes the raw
q/k/v columns of the qkv projection instead of a prologue's output: every
program computes its query heads' normed, clipped, rotated q itself, and the
program that holds the newest key also its k and v row, in registers (vLLM's
and SGLang's decode paths fuse rotary with the KV write; this goes one step
further and feeds attention from registers, saving the prologue's launch).

A head is produced in the layout the prologue kernel stores
(_qkv_prologue_kernels.py): output dim ``d`` of the rotated part takes the
rotary pair it belongs to (``x1 * cos - x2 * sin`` in the first half,
``x2 * cos + x1 * sin`` in the second), the dims past ``rotary_dim`` pass
through. The values are gathered per output dim, so one [heads, head_dim]
tile comes out ready for ``tl.dot``; the norm statistics are summed over the
prologue's own three tiles with its helpers, and every rounding happens where
the prologue rounds, so both paths give the same bits under the interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moeframe.attention._qkv_prologue_kernels import _clamp, _head_tiles, _inv_rms, _normed, _sum_sq


@triton.jit
def _norm_inv(
    src_ptr,
    head0,
    limit,
    num_heads,
    head_dim,
    rot_half,
    eps,
    clip,
    FULL: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    INTERLEAVE: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """1 / RMS as the prologue computes it: over all ``num_heads`` heads (FULL, a scalar; BLOCK_HS covers
    them all) or per head of [head0, head0 + BLOCK_HS) after the clip (a [BLOCK_HS] vector); heads at or
    past ``limit`` are read as zeros."""
    heads = head0 + tl.arange(0, BLOCK_HS)
    x1, x2, xp, _, _, _ = _head_tiles(src_ptr, heads, limit, head_dim, rot_half, INTERLEAVE, BLOCK_R, BLOCK_P)
    if FULL:
        inv = _inv_rms(tl.sum(_sum_sq(x1, x2, xp), axis=0), num_heads * head_dim, eps)
    else:
        if HAS_CLIP:
            x1, x2, xp = _clamp(x1, clip), _clamp(x2, clip), _clamp(xp, clip)
        inv = _inv_rms(_sum_sq(x1, x2, xp), head_dim, eps)
    return inv


@triton.jit
def _pair_dims(d, rot_half, INTERLEAVE: tl.constexpr):
    """(rotary pair of output dim d, the input dim d takes, its partner's, d rotates, d is in the first half)."""
    first = d < rot_half
    rotated = d < 2 * rot_half
    pair = tl.where(first, d, d - rot_half)
    if INTERLEAVE:
        src1 = 2 * pair
        src2 = src1 + 1
    else:
        src1 = pair
        src2 = pair + rot_half
    src_a = tl.where(rotated, tl.where(first, src1, src2), d)
    src_b = tl.where(first, src2, src1)
    return pair, src_a, src_b, rotated, first


@triton.jit
def _head_weights(
    w_ptr, row, ok, d, head_dim, rot_half, FULL_NORM: tl.constexpr, HEAD_NORM: tl.constexpr, INTERLEAVE: tl.constexpr
):
    """The norm weights _prologue_head multiplies output dims ``d`` and their partners by, in float32 (zeros
    without a norm, when w_ptr is a placeholder).

    Weights, not activations: a kernel may load them before its PDL wait.
    ``row``: the head's first element in a full norm's weight, ignored per head.
    """
    _, src_a, src_b, rotated, _ = _pair_dims(d, rot_half, INTERLEAVE)
    wa = tl.zeros(d.shape, dtype=tl.float32)
    wb = tl.zeros(d.shape, dtype=tl.float32)
    if FULL_NORM:
        wa = tl.load(w_ptr + row + src_a, mask=ok & (d < head_dim), other=0.0).to(tl.float32)
        wb = tl.load(w_ptr + row + src_b, mask=ok & rotated, other=0.0).to(tl.float32)
    if HEAD_NORM:
        wa = tl.load(w_ptr + src_a, mask=ok & (d < head_dim), other=0.0).to(tl.float32)
        wb = tl.load(w_ptr + src_b, mask=ok & rotated, other=0.0).to(tl.float32)
    return wa, wb


@triton.jit
def _prologue_head(
    src_ptr,
    wa,
    wb,
    row,
    ok,
    d,
    inv,
    cos_ptr,
    sin_ptr,
    head_dim,
    rot_half,
    clip,
    FULL_NORM: tl.constexpr,
    HEAD_NORM: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    INTERLEAVE: tl.constexpr,
):
    """Output dims ``d`` of the heads starting at ``row`` (elements into src_ptr's token row), normed, clipped
    and rotated, rounded to src's dtype; 0 where ``ok`` is false. ``inv``: the full norm's scalar or the
    per-head norm's values, broadcastable against ``d``; ``wa``, ``wb``: the norm's weights (_head_weights)."""
    dtype = src_ptr.dtype.element_ty
    pair, src_a, src_b, rotated, first = _pair_dims(d, rot_half, INTERLEAVE)
    ok_a = ok & (d < head_dim)
    ok_b = ok & rotated
    a = tl.load(src_ptr + row + src_a, mask=ok_a, other=0.0).to(tl.float32)
    b = tl.load(src_ptr + row + src_b, mask=ok_b, other=0.0).to(tl.float32)
    # The order of Attention.forward: full norm, clip, per-head norm, rotary.
    if FULL_NORM:
        a, b = _normed(a, inv, wa, dtype), _normed(b, inv, wb, dtype)
    if HAS_CLIP:
        a, b = _clamp(a, clip), _clamp(b, clip)
    if HEAD_NORM:
        a, b = _normed(a, inv, wa, dtype), _normed(b, inv, wb, dtype)
    c = tl.load(cos_ptr + pair, mask=ok_b, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + pair, mask=ok_b, other=0.0).to(tl.float32)
    ac = a * c
    bs = b * s
    out = tl.where(rotated, tl.where(first, ac - bs, ac + bs), a)
    return out.to(dtype)
