"""Gate logits of an MoE layer: float32 x @ W^T, one Triton GEMV launch for decode-sized batches on CUDA.

Routing is computed in float32 whatever the model's dtype (transformers'
routers cast first), so eager code casts the activations and then runs a
cuBLAS GEMV with its own split-K reduction: three launches per layer at batch
1. Up to ``MAX_GEMV_TOKENS`` tokens on CUDA, ``gate_gemv_kernel`` reads the
activations in their own dtype and the fp32 weight once, in one launch
(_gate_kernel.py); larger batches and the CPU keep ``F.linear`` on float32
(row by row under batch-invariant mode).
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.gpu.pdl import pdl_args
from moeframe.model.layers import batch_invariant

# Decode batch sizes; past them the weight is re-read by too many token blocks
# and cuBLAS's tiled GEMM wins.
MAX_GEMV_TOKENS = 64
# A program holds BLOCK_T x BLOCK_H float32 partial sums: 32 a thread at 4 warps.
TILE_ELEMENTS = 4096
MAX_BLOCK_T = 4


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.routers import _gate_kernel

    return _gate_kernel


def gate_gemv(hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[T, E] float32 logits of hidden_states [T, H] (any float dtype) and weight [E, H], in one launch."""
    num_tokens, hidden = hidden_states.shape
    num_experts = weight.shape[0]
    x = hidden_states if hidden_states.stride(1) == 1 else hidden_states.contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    logits = torch.empty(num_tokens, num_experts, dtype=torch.float32, device=x.device)
    if num_tokens == 0:
        return logits
    block_t = min(triton.next_power_of_2(num_tokens), MAX_BLOCK_T)
    block_h = min(triton.next_power_of_2(hidden), TILE_ELEMENTS // block_t)
    _kernels().gate_gemv_kernel[(num_experts, -(-num_tokens // block_t))](
        x, w, logits, num_tokens, hidden, x.stride(0), w.stride(0), logits.stride(0),
        BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4, **pdl_args(x),
    )  # fmt: skip
    return logits


def gate_logits(hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Float32 router logits [T, E] of hidden_states [T, H] and the gate weight [E, H]."""
    if (
        hidden_states.is_cuda
        and hidden_states.dim() == 2
        and hidden_states.shape[0] <= MAX_GEMV_TOKENS
        and not batch_invariant.batch_invariant()
    ):
        return gate_gemv(hidden_states, weight)
    return batch_invariant.linear(hidden_states.float(), weight.float())
