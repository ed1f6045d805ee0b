"""Gate logits and softmax top-k routing in one launch: the CUDA decode path of the native and top_k routers.

At batch 1 the gate GEMV (gate.py) and the softmax top-k (fused_topk.py) are
two ~2 us launches of which most is launch latency. Up to
``MAX_FUSED_TOKENS`` tokens on CUDA, ``gate_softmax_topk`` runs both in the
GEMV's grid, with the last program of each token block routing that block
(_gate_topk_kernel.py). The math is that of the two kernels it joins (it runs
their code): float32 logits, softmax, the choice bias for selection only, the
lower expert id first on exact ties, renormalised over the k when asked, times
``scale``. Each caller owns its counters (``GateTopK``, one per router and so
per layer); the kernel leaves them at zero, so CUDA-graph replays need no reset.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton

from moeframe.gpu.pdl import pdl_args
from moeframe.routers.fused_topk import MAX_EXPERTS
from moeframe.routers.gate import MAX_BLOCK_T, MAX_GEMV_TOKENS, TILE_ELEMENTS
from moeframe.routers.plan import RoutingPlan

# The gate GEMV's decode sizes. The last program of a token block routes up to
# MAX_BLOCK_T tokens after its own GEMV tile; past this bound the separate
# top-k launch spreads the routing over more programs.
MAX_FUSED_TOKENS = MAX_GEMV_TOKENS


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.routers import _gate_topk_kernel

    return _gate_topk_kernel


def new_counts(device: torch.device) -> torch.Tensor:
    """Zeroed completion counters for ``gate_softmax_topk``: one int32 per token block."""
    return torch.zeros(-(-MAX_FUSED_TOKENS // MAX_BLOCK_T), dtype=torch.int32, device=device)


def gate_softmax_topk(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    renormalize: bool,
    scale: float,
    counts: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> RoutingPlan:
    """``softmax_topk(gate_logits(hidden_states, weight), k, renormalize, scale, bias)`` in one launch.

    hidden_states [T, H] (any float dtype, T <= MAX_FUSED_TOKENS), weight [E, H],
    bias [E] or None; ``counts`` from ``new_counts``, zero between launches and
    used by one stream at a time.
    """
    num_tokens, hidden = hidden_states.shape
    num_experts = weight.shape[0]
    if not 1 <= k <= num_experts:
        raise ValueError(f"k={k}: must lie in 1..{num_experts} (the number of experts)")
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"{num_experts} experts: the fused top-k kernel takes at most {MAX_EXPERTS}")
    if num_tokens > MAX_FUSED_TOKENS:
        raise ValueError(f"{num_tokens} tokens: the fused gate top-k takes at most {MAX_FUSED_TOKENS}")
    x = hidden_states if hidden_states.stride(1) == 1 else hidden_states.contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    device = x.device
    topk_ids = torch.empty(num_tokens, k, dtype=torch.int64, device=device)
    topk_weights = torch.empty(num_tokens, k, dtype=torch.float32, device=device)
    if num_tokens == 0:
        return RoutingPlan(topk_ids, topk_weights)
    logits = torch.empty(num_tokens, num_experts, dtype=torch.float32, device=device)
    block_t = min(triton.next_power_of_2(num_tokens), MAX_BLOCK_T)
    block_h = min(triton.next_power_of_2(hidden), TILE_ELEMENTS // block_t)
    _kernels().gate_softmax_topk_kernel[(num_experts, -(-num_tokens // block_t))](
        x, w, logits, logits if bias is None else bias.contiguous(), counts, topk_ids, topk_weights,
        num_tokens, hidden, num_experts, k, x.stride(0), w.stride(0), float(scale),
        HAS_BIAS=bias is not None, RENORMALIZE=renormalize,
        BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_E=triton.next_power_of_2(num_experts),
        BLOCK_K=triton.next_power_of_2(k), num_warps=4, **pdl_args(x),
    )  # fmt: skip
    return RoutingPlan(topk_ids, topk_weights)


class GateTopK:
    """The fused launch for one router, holding that router's counters (one tensor per device)."""

    def __init__(self) -> None:
        self._counts: dict[torch.device, torch.Tensor] = {}

    @staticmethod
    def applies(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
        """Where gate_logits runs the GEMV and softmax_topk the fused top-k: CUDA, decode-sized, E <= MAX_EXPERTS."""
        return (
            hidden_states.is_cuda
            and hidden_states.dim() == 2
            and 1 <= hidden_states.shape[0] <= MAX_FUSED_TOKENS
            and weight.shape[0] <= MAX_EXPERTS
        )

    def __call__(
        self,
        hidden_states: torch.Tensor,
        weight: torch.Tensor,
        k: int,
        renormalize: bool,
        scale: float,
        bias: torch.Tensor | None = None,
    ) -> RoutingPlan:
        device = hidden_states.device
        if device not in self._counts:
            self._counts[device] = new_counts(device)
        return gate_softmax_topk(hidden_states, weight, k, renormalize, scale, self._counts[device], bias)
