"""Softmax top-k routing of gate logits in one Triton launch: the CUDA path of ``native.softmax_topk``.

Eager PyTorch spends five launches on it (softmax, topk's gather and sort,
gather, renormalise); vLLM's ``topk_softmax`` and SGLang's fused top-k do it
in one kernel, and so does this. The semantics are those of the torch code in
native.py: softmax in float32, the optional choice bias added for selection
only, k picks sorted by choice score (lower expert id first on exact ties),
the unbiased probabilities gathered, renormalised over the k when asked, times
``scale``. Shapes are static and nothing syncs with the host, so a decode step
that routes with it can be captured in a CUDA graph.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.gpu.pdl import pdl_args
from moeframe.routers.plan import RoutingPlan

# expert ids are packed into 10 bits of the kernel's selection keys
MAX_EXPERTS = 1024
# Up to this many tokens each token gets its own program (decode: lowest
# latency); past it a program takes a block of tokens.
MAX_ONE_TOKEN_PROGRAMS = 64


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.routers import _topk_kernel

    return _topk_kernel


def fused_softmax_topk(
    gate_logits: torch.Tensor, k: int, renormalize: bool, scale: float, bias: torch.Tensor | None = None
) -> RoutingPlan:
    """``native.softmax_topk`` in one kernel launch; gate_logits [T, E], bias [E] or None."""
    num_tokens, num_experts = gate_logits.shape
    if not 1 <= k <= num_experts:
        raise ValueError(f"k={k}: must lie in 1..{num_experts} (the number of experts)")
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"{num_experts} experts: the fused top-k kernel takes at most {MAX_EXPERTS}")
    logits = gate_logits.float()
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    topk_ids = torch.empty(num_tokens, k, dtype=torch.int64, device=logits.device)
    topk_weights = torch.empty(num_tokens, k, dtype=torch.float32, device=logits.device)
    if num_tokens == 0:
        return RoutingPlan(topk_ids, topk_weights)
    block_e = triton.next_power_of_2(num_experts)
    block_t = 1 if num_tokens <= MAX_ONE_TOKEN_PROGRAMS else max(1, min(16, 2048 // block_e))
    tile = block_t * block_e
    _kernels().softmax_topk_kernel[(-(-num_tokens // block_t),)](
        logits, logits if bias is None else bias.contiguous(), topk_ids, topk_weights,
        num_tokens, num_experts, k, logits.stride(0), float(scale),
        HAS_BIAS=bias is not None, RENORMALIZE=renormalize,
        BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(k),
        num_warps=1 if tile <= 128 else 2 if tile <= 512 else 4, **pdl_args(logits),
    )  # fmt: skip
    return RoutingPlan(topk_ids, topk_weights)
