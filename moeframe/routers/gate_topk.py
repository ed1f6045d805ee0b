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

``norm_gate_softmax_topk`` also folds in the residual add and RMSNorm that
precede the MoE block (norm.py's add_rms_norm, with its rounding), as
small_gemv.norm_gemv does for the qkv projection and as TensorRT-LLM and
SGLang fuse a decode layer's norms into the kernel after them: the launch
returns the normed rows the experts read and the summed residual stream
besides the plan, and the separate add + RMSNorm kernel between the o_proj
GEMV and the gate goes away.
"""

from __future__ import annotations

from types import ModuleType

import torch
import triton
from torch import nn

from moeframe.gpu.pdl import pdl_args
from moeframe.model.layers import batch_invariant
from moeframe.model.layers.norm import RMSNorm
from moeframe.routers.base import NormedRouting, RouteContext, Router
from moeframe.routers.fused_topk import MAX_EXPERTS
from moeframe.routers.gate import MAX_BLOCK_T, MAX_GEMV_TOKENS, TILE_ELEMENTS
from moeframe.routers.plan import RoutingPlan

# The gate GEMV's decode sizes. The last program of a token block routes up to
# MAX_BLOCK_T tokens after its own GEMV tile; past this bound the separate
# top-k launch spreads the routing over more programs.
MAX_FUSED_TOKENS = MAX_GEMV_TOKENS
# Activation dtypes the fused norm rounds to (norm.py's add_rms_norm casts to the activations' dtype).
NORM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Warps of a launch whose token blocks hold one token: the last program's softmax top-k
# reduces across fewer warps. On an H100 the batch-1 decode step took 1,166 -> 1,157 us
# with two against four (1,205 -> 1,197 in another run); wider blocks keep four (unmeasured).
ONE_TOKEN_NUM_WARPS = 2

_fuse_norm = True


def set_fused_norm(enabled: bool) -> None:
    """Whether the fused launch may take in the norm before the MoE block (an ablation switch)."""
    global _fuse_norm
    _fuse_norm = enabled


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.routers import _gate_topk_kernel

    return _gate_topk_kernel


def new_counts(device: torch.device) -> torch.Tensor:
    """Zeroed completion counters for ``gate_softmax_topk``: one int32 per token block."""
    return torch.zeros(-(-MAX_FUSED_TOKENS // MAX_BLOCK_T), dtype=torch.int32, device=device)


def _check_routing(num_tokens: int, num_experts: int, k: int) -> None:
    if not 1 <= k <= num_experts:
        raise ValueError(f"k={k}: must lie in 1..{num_experts} (the number of experts)")
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"{num_experts} experts: the fused top-k kernel takes at most {MAX_EXPERTS}")
    if num_tokens > MAX_FUSED_TOKENS:
        raise ValueError(f"{num_tokens} tokens: the fused gate top-k takes at most {MAX_FUSED_TOKENS}")


def _row_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(1) == 1 else t.contiguous()


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
    k: int,
    renormalize: bool,
    scale: float,
    counts: torch.Tensor,
    bias: torch.Tensor | None,
    summed: torch.Tensor | None,
    normed: torch.Tensor | None,
) -> RoutingPlan:
    num_tokens, hidden = x.shape
    num_experts = weight.shape[0]
    device = x.device
    topk_ids = torch.empty(num_tokens, k, dtype=torch.int64, device=device)
    topk_weights = torch.empty(num_tokens, k, dtype=torch.float32, device=device)
    if num_tokens == 0:
        return RoutingPlan(topk_ids, topk_weights)
    w = _row_contiguous(weight)
    res = x if residual is None else residual
    logits = torch.empty(num_tokens, num_experts, dtype=torch.float32, device=device)
    block_t = min(triton.next_power_of_2(num_tokens), MAX_BLOCK_T)
    block_h = min(triton.next_power_of_2(hidden), TILE_ELEMENTS // block_t)
    _kernels().gate_softmax_topk_kernel[(num_experts, -(-num_tokens // block_t))](
        x, res, w if norm_weight is None else norm_weight, logits if summed is None else summed,
        logits if normed is None else normed, w, logits, logits if bias is None else bias.contiguous(), counts,
        topk_ids, topk_weights, num_tokens, hidden, num_experts, k, x.stride(0), res.stride(0), w.stride(0),
        float(eps), float(scale),
        NORM=norm_weight is not None, ROW_IN_TILE=hidden <= block_h, HAS_BIAS=bias is not None, RENORMALIZE=renormalize,
        BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_E=triton.next_power_of_2(num_experts),
        BLOCK_K=triton.next_power_of_2(k), num_warps=ONE_TOKEN_NUM_WARPS if block_t == 1 else 4, **pdl_args(x),
    )  # fmt: skip
    return RoutingPlan(topk_ids, topk_weights)


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
    _check_routing(hidden_states.shape[0], weight.shape[0], k)
    x = _row_contiguous(hidden_states)
    return _launch(x, None, None, 0.0, weight, k, renormalize, scale, counts, bias, None, None)


def norm_gate_softmax_topk(
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    k: int,
    renormalize: bool,
    scale: float,
    counts: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[RoutingPlan, torch.Tensor, torch.Tensor]:
    """(plan, normed, summed) of norm.py's add_rms_norm then ``gate_softmax_topk``, in one launch.

    ``normed, summed = add_rms_norm(hidden_states, residual, norm_weight, eps)``
    with its rounding (the sum and the normed row in hidden_states' dtype, which
    ``residual`` and ``norm_weight`` [H] share; a half type or float32), and the
    plan routes ``normed`` as ``gate_softmax_topk`` would.
    """
    num_tokens, hidden = hidden_states.shape
    _check_routing(num_tokens, weight.shape[0], k)
    if residual.shape != hidden_states.shape or norm_weight.shape != (hidden,):
        raise ValueError(
            f"hidden states {list(hidden_states.shape)}, residual {list(residual.shape)} and norm weight "
            f"{list(norm_weight.shape)}: the residual must match the hidden states and the norm weight be [{hidden}]"
        )
    dtype, device = hidden_states.dtype, hidden_states.device
    if residual.dtype != dtype or norm_weight.dtype != dtype:
        raise ValueError(f"the residual ({residual.dtype}) and norm weight ({norm_weight.dtype}) must be {dtype}")
    summed = torch.empty(num_tokens, hidden, dtype=dtype, device=device)
    normed = torch.empty(num_tokens, hidden, dtype=dtype, device=device)
    x, res = _row_contiguous(hidden_states), _row_contiguous(residual)
    plan = _launch(x, res, norm_weight.contiguous(), eps, weight, k, renormalize, scale, counts, bias, summed, normed)
    return plan, normed, summed


class GateTopK:
    """The fused launch for one router, holding that router's counters (one tensor per device)."""

    def __init__(self) -> None:
        self._counts: dict[torch.device, torch.Tensor] = {}

    @staticmethod
    def applies(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
        """Where gate_logits runs the GEMV and softmax_topk the fused top-k: CUDA, decode-sized, E <= MAX_EXPERTS."""
        return (
            hidden_states.is_cuda
            and not batch_invariant.batch_invariant()
            and hidden_states.dim() == 2
            and 1 <= hidden_states.shape[0] <= MAX_FUSED_TOKENS
            and weight.shape[0] <= MAX_EXPERTS
        )

    @classmethod
    def fuses_norm(
        cls, hidden_states: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module, weight: torch.Tensor
    ) -> bool:
        """Where the residual add and ``norm`` join the launch too: a plain RMSNorm, one activation dtype throughout.

        Any other norm module (a subclass, tensor parallelism's), the first
        layer's missing residual and ``set_fused_norm(False)`` keep ``norm.add_forward``.
        """
        if not _fuse_norm or not cls.applies(hidden_states, weight) or residual is None or type(norm) is not RMSNorm:
            return False
        dtype, device = hidden_states.dtype, hidden_states.device
        return (
            dtype in NORM_DTYPES
            and residual.shape == hidden_states.shape
            and residual.dtype == dtype
            and residual.device == device
            and norm.weight.shape == (hidden_states.shape[1],)
            and norm.weight.dtype == dtype
            and norm.weight.device == device
        )

    def _counts_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._counts:
            self._counts[device] = new_counts(device)
        return self._counts[device]

    def __call__(
        self,
        hidden_states: torch.Tensor,
        weight: torch.Tensor,
        k: int,
        renormalize: bool,
        scale: float,
        bias: torch.Tensor | None = None,
    ) -> RoutingPlan:
        counts = self._counts_on(hidden_states.device)
        return gate_softmax_topk(hidden_states, weight, k, renormalize, scale, counts, bias)

    def norm_and_route(
        self,
        hidden_states: torch.Tensor,
        residual: torch.Tensor,
        norm: RMSNorm,
        weight: torch.Tensor,
        k: int,
        renormalize: bool,
        scale: float,
        bias: torch.Tensor | None = None,
    ) -> NormedRouting:
        """``norm.add_forward(hidden_states, residual)`` and the routing of its normed rows, in the one launch."""
        counts = self._counts_on(hidden_states.device)
        plan, normed, summed = norm_gate_softmax_topk(
            hidden_states, residual, norm.weight, norm.eps, weight, k, renormalize, scale, counts, bias
        )
        return NormedRouting(plan, normed, summed)


class FusedSoftmaxTopKRouter(Router):
    """A router that routes by softmax top-k where ``softmax_topk_args`` says so, in the fused launch on CUDA decode.

    native (softmax families) and top_k (softmax, no capacity) share these two
    hooks; everywhere else, and where the launch does not apply, the base
    Router's torch path runs.
    """

    gate_topk: GateTopK

    def softmax_topk_args(self) -> tuple[int, bool, float] | None:
        """(k, renormalize, scale) when this router's choice is plain softmax top-k, else None."""
        return None

    def route_hidden(self, hidden_states: torch.Tensor, gate_weight: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        args = self.softmax_topk_args()
        if args is not None and self.gate_topk.applies(hidden_states, gate_weight):
            return self.gate_topk(hidden_states, gate_weight, *args)
        return super().route_hidden(hidden_states, gate_weight, ctx)

    def route_residual(
        self, h: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module, gate_weight: torch.Tensor, ctx: RouteContext
    ) -> NormedRouting:
        args = self.softmax_topk_args()
        if args is not None and self.gate_topk.fuses_norm(h, residual, norm, gate_weight):
            return self.gate_topk.norm_and_route(h, residual, norm, gate_weight, *args)
        return super().route_residual(h, residual, norm, gate_weight, ctx)
