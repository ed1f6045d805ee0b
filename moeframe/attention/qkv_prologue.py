"""Everything between the q/k/v projection and attention, in one Triton launch.

Attention.forward's torch sequence (q/k RMSNorm, clip, rotary of q and k, the
write of k and v into the pool at the step's slots, and the casts between) is
eight or so small kernels per layer; at batch 1 they cost more than the
attention itself. vLLM and SGLang fuse the rotary embedding with the KV-cache
write the same way; this kernel also takes the norms and the clip, so a layer
goes from its qkv GEMM straight to attention. The torch code in
Attention.forward stays the reference (and the CPU path); the tests compare
the two under Triton's interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import triton

from moeframe.gpu.pdl import pdl_args

NORMS = ("none", "per_head", "full")

# Elements of one head block (both rotary halves and the pass-through dims)
# that a program takes when heads are normed independently: a few thousand
# keeps a decode step at a handful of programs and a program's tiles in registers.
HEAD_BLOCK_ELEMENTS = 2048


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.attention import _qkv_prologue_kernels

    return _qkv_prologue_kernels


def _check_row_major(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"prepare_qkv: {name} needs unit stride in its last dim, got strides {tuple(t.stride())}")


@dataclass(frozen=True, eq=False)
class QKVPrologue:
    """What prepare_qkv does to one layer's q, k and v besides the tensors themselves: norms, clip, rotary.

    An attention backend given one may fuse the prologue into its kernel
    (triton_decode.decode_attention_prologue at decode); any other runs
    ``apply`` and then attends (attention.attend_with_prologue). Fields as
    prepare_qkv's arguments of the same names.
    """

    q_norm_weight: torch.Tensor | None
    k_norm_weight: torch.Tensor | None
    norm: str
    eps: float
    clip: float | None
    cos: torch.Tensor
    sin: torch.Tensor
    interleave: bool

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"QKVPrologue: unknown norm '{self.norm}'; valid choices: {', '.join(NORMS)}")
        if self.norm != "none" and (self.q_norm_weight is None or self.k_norm_weight is None):
            raise ValueError(f"QKVPrologue: norm '{self.norm}' needs both norm weights")

    def apply(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out_slots: torch.Tensor) -> torch.Tensor:
        """prepare_qkv with this prologue's settings."""
        return prepare_qkv(
            q, k, v, q_norm_weight=self.q_norm_weight, k_norm_weight=self.k_norm_weight, norm=self.norm, eps=self.eps,
            clip=self.clip, cos=self.cos, sin=self.sin, interleave=self.interleave,
            k_cache=k_cache, v_cache=v_cache, out_slots=out_slots,
        )  # fmt: skip


def check_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    norm: str,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> int:
    """Query heads of q, after checking that the prologue's inputs fit together (ValueError otherwise)."""
    if norm not in NORMS:
        raise ValueError(f"prepare_qkv: unknown norm '{norm}'; valid choices: {', '.join(NORMS)}")
    _, num_kv_heads, head_dim = k_cache.shape
    v_dim = v_cache.shape[-1]
    num_q_heads = q.shape[1] // head_dim
    rot_half = cos.shape[-1]
    if q.shape[1] != num_q_heads * head_dim or k.shape[1] != num_kv_heads * head_dim or v.shape[1] != num_kv_heads * v_dim:
        raise ValueError(
            f"prepare_qkv: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match "
            f"the caches' heads x dims {tuple(k_cache.shape[1:])}, {tuple(v_cache.shape[1:])}"
        )
    if 2 * rot_half > head_dim:
        raise ValueError(f"prepare_qkv: rotary_dim {2 * rot_half} exceeds head_dim {head_dim}")
    if norm != "none" and (q_norm_weight.dtype != q.dtype or k_norm_weight.dtype != k.dtype):
        raise ValueError(f"prepare_qkv: norm weights ({q_norm_weight.dtype}, {k_norm_weight.dtype}) must have q's dtype {q.dtype}")
    for name, t in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_row_major(name, t)
    return num_q_heads


def rotary_blocks(head_dim: int, rot_half: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_P): the tile widths of a head's rotary halves and of its pass-through dims."""
    return triton.next_power_of_2(rot_half), triton.next_power_of_2(max(1, head_dim - 2 * rot_half))


def prepare_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    norm: str,
    eps: float,
    clip: float | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleave: bool,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
) -> torch.Tensor:
    """Normed, clipped, rotated q [N, Hq, D]; k and v (normed, clipped, k rotated) written to the caches' rows ``out_slots``.

    q [N, Hq*D], k [N, Hkv*D], v [N, Hkv*Dv]: row views with unit column
    stride (column slices of one fused qkv output are fine). ``norm``:
    "per_head" RMSNorm over each head (weights [D]), "full" over all heads of
    q and of k together (weights [Hq*D], [Hkv*D]); the weights share q's
    dtype. ``clip`` clamps q, k and v to [-clip, clip] after a full norm and
    before a per-head one. cos, sin [N, rotary_dim/2] (Rotary.cos_sin): the
    first rotary_dim dims of each q and k head rotate as rotary.rotate does,
    the rest pass through. k_cache [S, Hkv, D], v_cache [S, Hkv, Dv].
    """
    num_q_heads = check_qkv(q, k, v, q_norm_weight, k_norm_weight, norm, cos, sin, k_cache, v_cache)
    num_tokens = q.shape[0]
    _, num_kv_heads, head_dim = k_cache.shape
    v_dim = v_cache.shape[-1]
    rot_half = cos.shape[-1]

    q_out = torch.empty(num_tokens, num_q_heads, head_dim, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    block_r, block_p = rotary_blocks(head_dim, rot_half)
    if norm == "full":
        block_hq, block_hk = triton.next_power_of_2(num_q_heads), triton.next_power_of_2(num_kv_heads)
    else:
        per_block = max(1, HEAD_BLOCK_ELEMENTS // (2 * block_r + block_p))
        block_hq = min(triton.next_power_of_2(num_q_heads), triton.next_power_of_2(per_block + 1) // 2)
        block_hk = min(triton.next_power_of_2(num_kv_heads), block_hq)
    q_blocks = triton.cdiv(num_q_heads, block_hq)
    kv_blocks = triton.cdiv(num_kv_heads, block_hk)
    tile = max(block_hq, block_hk) * (2 * block_r + block_p)
    num_warps = max(1, min(8, tile // 512))
    q_weight = q_norm_weight if norm != "none" else q
    k_weight = k_norm_weight if norm != "none" else k
    _kernels().qkv_prologue_kernel[(num_tokens, q_blocks + kv_blocks)](
        q, k, v, q_out, k_cache, v_cache, out_slots, cos, sin, q_weight, k_weight,
        q.stride(0), k.stride(0), v.stride(0), q_out.stride(0), q_out.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), cos.stride(0), sin.stride(0),
        num_q_heads, num_kv_heads, head_dim, v_dim, rot_half, q_blocks, eps, 0.0 if clip is None else float(clip),
        FULL_NORM=norm == "full", HEAD_NORM=norm == "per_head", HAS_CLIP=clip is not None, INTERLEAVE=interleave,
        BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_R=block_r, BLOCK_P=block_p,
        BLOCK_DV=triton.next_power_of_2(v_dim), num_warps=num_warps, **pdl_args(q),
    )  # fmt: skip
    return q_out
