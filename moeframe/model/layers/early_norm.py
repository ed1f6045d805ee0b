"""The add + top-k sum + RMSNorm before a decoder layer's qkv projection as a Triton kernel that launches its successor first.

On CUDA decode batches a layer opens with norm.py's add_topk_rms_norm (the
residual add, the MoE's deferred top-k sum and the input RMSNorm, one Inductor
kernel) and then the qkv projection, whose prefetching GEMV loads its weights
before its PDL wait. An Inductor kernel lets its successor launch only once its
own wait is over, so the qkv weight stream overlaps the norm alone (~2 us of
an 8 us stream at batch 1). _early_norm_kernel.py lets the projection launch
before it waits, so the stream also overlaps the MoE's down projection.
``runner.early_launch_norm`` switches it: an ablation, off by default, as it
lost on an H100 (batch-1 step span 1,164 us with Inductor's norm, 1,214 with
this kernel: the early qkv programs take SM slots and bandwidth from the down
projection). Numbers as add_topk_rms_norm's, but for the float32 order of the
rms reduction.
"""

from __future__ import annotations

from types import ModuleType

import torch

from moeframe.gpu.pdl import pdl_args, pdl_enabled, pdl_supported

# Decode batches only: one program per token row.
MAX_TOKENS = 8
# A row of the hidden size held by one program.
MAX_HIDDEN = 16384

_enabled = False


def set_early_launch_norm(enabled: bool) -> None:
    """Turn the kernel on or off for later forwards (``runner.early_launch_norm``)."""
    global _enabled
    _enabled = enabled


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.model.layers import _early_norm_kernel

    return _early_norm_kernel


def applies(parts: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether the kernel takes this add + norm: on, a PDL-capable GPU, a decode batch, row-contiguous tensors."""
    return (
        _enabled
        and pdl_enabled()
        and pdl_supported(parts.device)
        and parts.shape[0] <= MAX_TOKENS
        and parts.shape[2] <= MAX_HIDDEN
        and parts.stride(2) == 1
        and residual.stride(1) == 1
    )


def topk_add_rms_norm(
    parts: torch.Tensor, addend: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(sum_j parts[:, j] (+ addend) + residual), that sum + residual) in one launch; see norm.add_topk_rms_norm."""
    num_tokens, top_k, hidden = parts.shape
    normed = torch.empty(num_tokens, hidden, dtype=residual.dtype, device=residual.device)
    total = torch.empty_like(normed)
    if num_tokens == 0:
        return normed, total
    extra = residual if addend is None else addend
    _kernels().topk_add_rms_norm_kernel[(num_tokens,)](
        parts, extra, residual, weight, normed, total, hidden, float(eps),
        parts.stride(0), parts.stride(1), extra.stride(0), residual.stride(0), normed.stride(0), total.stride(0),
        TOP_K=top_k, HAS_ADDEND=addend is not None, BLOCK_H=1 << max(hidden - 1, 0).bit_length(),
        num_warps=4 if hidden <= 4096 else 8, **pdl_args(parts),
    )  # fmt: skip
    return normed, total
