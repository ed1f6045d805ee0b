"""``experts=triton``: the fused MoE of vLLM and SGLang, in two Triton kernels.

    T <= single_pass_tokens (off by default): single_pass_moe_kernel (gate/up, SiLU and split-K down in
                                              one launch, fp32 atomics) -> cast
    otherwise:
    topk_ids -> align (rows in expert order, padded per expert to block_m; no pass at T <= 2,
                       one Triton program at decode sizes, torch ops past that)
      -> act [T*k, I] = silu(x W_gate^T) * (x W_up^T): gate_up_gemv_kernel where each assignment has a
         block (T <= 2, gemv_gate_up), else gate_up_silu_kernel (gathered rows, fused epilogue)
      -> T <= down_topk_sum_tokens (off by default): down_topk_sum_kernel: out [T, H] = sum_j weight * act W_down^T
         otherwise: y [T*k, H] = weight * act W_down^T, by down_prefetch_kernel where each assignment
                    has a block (T <= 2, prefetch_down: expert weights loaded before the PDL wait),
                    else down_weighted_kernel
                    -> sum over the k assignments of each token (one generated kernel on CUDA, fp32);
                       with defer_topk_sum at T <= MAX_GENERATED_SUM_TOKENS (bf16, fp32), left to the
                       next layer's add + RMSNorm, which sums in its own kernel (model/layers/topk_sum.py)

Block sizes come from the tuned JSON tables in ``configs/`` (tools/tune_moe.py)
or a heuristic (moe_configs.py). Every shape is static and nothing syncs with
the host, so a decode step with this kernel can be captured in a CUDA graph.
Every kernel is launched with programmatic dependent launch where the GPU
has it (moeframe/gpu/pdl.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import triton

from moeframe.experts import EXPERTS
from moeframe.experts.base import ExpertsKernel
from moeframe.experts.down_prefetch import down_prefetch_rows, run_down_prefetch
from moeframe.experts.gate_up_gemv import gate_up_gemv_rows, run_gate_up_gemv
from moeframe.experts.moe_align import ExpertBlocks, align_by_expert, max_padded_rows, one_per_block
from moeframe.experts.moe_configs import MoEConfig, TileConfig, pick_config
from moeframe.gpu.pdl import pdl_args
from moeframe.gpu.triton_mode import triton_unavailable
from moeframe.model.layers.topk_sum import DEFERRABLE_DTYPES, MoEOutput, PendingTopkSum, reduced, sum_assignments
from moeframe.routers.plan import RoutingPlan


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.experts import _fused_moe_kernels

    return _fused_moe_kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Up to this many tokens each assignment gets its own block, with no alignment
# pass: the experts of so few tokens rarely repeat. On an H100 at the OLMoE
# shape this saved 10 us at T=1 and T=2, tied at T=4 and lost at T=8
# (benchmarks/kernels_h100.md).
MAX_ONE_PER_BLOCK_TOKENS = 2
# Up to this many tokens the whole forward is one launch of the single-pass
# kernel (its tile below, not the tuned tables): the two dependent kernels were
# each too short to reach copy bandwidth. On an H100 at the OLMoE shape it took
# 52.3 vs 55.9 us at T=1 and 85.6 vs 89.4 us at T=2; BLOCK_N 16 lost at both,
# 32 tied at T=1 and lost at T=2 (benchmarks/kernels_h100.md).
MAX_SINGLE_PASS_TOKENS = 2
SINGLE_PASS_TILE = TileConfig(block_n=64, block_k=128, num_warps=4, num_stages=4)
# Up to this many tokens the down projection and the top-k sum are one kernel
# (down_topk_sum_kernel), with the tile below rather than the tuned tables: its
# grid is tokens x H / block_n, one program per SM at T=1 and H=2048 (the
# kernel's docstring says why). Past it each token re-reads the experts it
# shares with others, and the aligned down kernel reads each expert once.
# Off by default (0): on an H100 it lost at every T in the 8-layer stack (T=1:
# 44.7 us a layer against 41.7 for down + sum; best tile at T=2 69.8 vs 71.3,
# a tie) and lost 8 us a layer inside the batch-1 step (22.9 vs ~15 us after
# gate/up; whole step span 1,572 vs 1,458 us). Kept as an ablation
# (experts.down_topk_sum_tokens).
MAX_DOWN_TOPK_SUM_TOKENS = 0
# 3 x 16 KB of w2 in flight per program (num_stages - 1 chunks of 16 x 512 bf16): the best of
# six tiles at T=1 in tools/bench_kernels.py's moe_stack table (DOWN_TOPK_SUM_TILES there).
DOWN_TOPK_SUM_TILE = TileConfig(block_n=16, block_k=512, num_warps=4, num_stages=4)
# Up to this many tokens the top-k sum is a generated kernel: on an H100 it took
# 1.6 us at T=1 where aten's reduction over the middle dimension took 5 us, but
# 360 us at T=8192 where aten's is about 3x faster.
MAX_GENERATED_SUM_TOKENS = 256
# Up to this many assignments the alignment runs as one Triton program; past
# it the torch sort is faster than one program looping over chunks.
MAX_ONE_PROGRAM_ALIGN = 2048


def align(topk_ids: torch.Tensor, num_experts: int, block_m: int, one_per_block_tokens: int = MAX_ONE_PER_BLOCK_TOKENS) -> ExpertBlocks:
    """Rows in expert order, padded per expert to ``block_m``: no pass at batch 1, one kernel launch at decode sizes."""
    num_assignments = topk_ids.numel()
    if topk_ids.shape[0] <= one_per_block_tokens:
        return one_per_block(topk_ids, block_m)
    if num_assignments > MAX_ONE_PROGRAM_ALIGN:
        return align_by_expert(topk_ids, num_experts, block_m)
    rows = max_padded_rows(num_assignments, num_experts + 1, block_m)
    device = topk_ids.device
    blocks = ExpertBlocks(
        sorted_ids=torch.empty(rows, dtype=torch.int32, device=device),
        block_expert=torch.empty(rows // block_m, dtype=torch.int32, device=device),
        num_rows=torch.empty(1, dtype=torch.int32, device=device),
        block_m=block_m,
        num_assignments=num_assignments,
    )
    _kernels().align_kernel[(1,)](
        topk_ids.reshape(-1), blocks.sorted_ids, blocks.block_expert, blocks.num_rows,
        num_assignments, num_experts, rows,
        BLOCK_M=block_m, CHUNK=128, BLOCK_E=1 << num_experts.bit_length(), num_warps=4, **pdl_args(topk_ids),
    )  # fmt: skip
    return blocks


def run_gate_up(x: torch.Tensor, w13: torch.Tensor, blocks: ExpertBlocks, act: torch.Tensor, top_k: int, tile: TileConfig) -> None:
    """act[a] = silu(gate) * up of assignment a's token through its expert; rows of dropped assignments untouched."""
    num_experts, two_inter, hidden = w13.shape
    inter = two_inter // 2
    rows = blocks.padded_rows
    grid = (_cdiv(rows, blocks.block_m) * _cdiv(inter, tile.block_n),)
    _kernels().gate_up_silu_kernel[grid](
        x, w13, act, blocks.sorted_ids, blocks.block_expert, blocks.num_rows,
        rows, inter, hidden, blocks.num_assignments, num_experts, top_k,
        x.stride(0), w13.stride(0), w13.stride(1), w13.stride(2), act.stride(0),
        BLOCK_M=blocks.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, GROUP_M=tile.group_m,
        ONE_PER_BLOCK=blocks.one_per_block, num_warps=tile.num_warps, num_stages=tile.num_stages, **pdl_args(x),
    )  # fmt: skip


def run_down(act: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor, blocks: ExpertBlocks, out: torch.Tensor, tile: TileConfig) -> None:
    """out[a] = weight[a] * down(act[a]) for every assignment, zeros for dropped ones."""
    num_experts, hidden, inter = w2.shape
    rows = blocks.padded_rows
    grid = (_cdiv(rows, blocks.block_m) * _cdiv(hidden, tile.block_n),)
    _kernels().down_weighted_kernel[grid](
        act, w2, out, weights, blocks.sorted_ids, blocks.block_expert, blocks.num_rows,
        rows, hidden, inter, blocks.num_assignments, num_experts,
        act.stride(0), w2.stride(0), w2.stride(1), w2.stride(2), out.stride(0),
        BLOCK_M=blocks.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, GROUP_M=tile.group_m,
        ONE_PER_BLOCK=blocks.one_per_block, num_warps=tile.num_warps, num_stages=tile.num_stages, **pdl_args(act),
    )  # fmt: skip


def run_down_topk_sum(
    act: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, out: torch.Tensor, tile: TileConfig
) -> None:
    """out[t] = sum_j topk_weights[t, j] * down(act[t * k + j]) through expert topk_ids[t, j]; ids of -1 skipped."""
    num_experts, hidden, inter = w2.shape
    num_tokens, top_k = topk_ids.shape
    grid = (num_tokens, _cdiv(hidden, tile.block_n))
    _kernels().down_topk_sum_kernel[grid](
        act, w2, out, topk_ids.contiguous(), topk_weights.contiguous(),
        hidden, inter, top_k, num_experts,
        act.stride(0), w2.stride(0), w2.stride(1), w2.stride(2), out.stride(0),
        BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, BLOCK_TOPK=triton.next_power_of_2(top_k),
        num_warps=tile.num_warps, num_stages=tile.num_stages, **pdl_args(act),
    )  # fmt: skip


def run_single_pass(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor, weights: torch.Tensor, tile: TileConfig = SINGLE_PASS_TILE
) -> torch.Tensor:
    """[T, H] in fp32: sum_j weights[t, j] * expert_{topk_ids[t, j]}(x[t]) from one kernel launch; ids of -1 skipped."""
    num_experts, two_inter, hidden = w13.shape
    inter = two_inter // 2
    out = torch.zeros(x.shape[0], hidden, dtype=torch.float32, device=x.device)
    flat_ids = topk_ids.reshape(-1)
    grid = (flat_ids.numel() * _cdiv(inter, tile.block_n),)
    _kernels().single_pass_moe_kernel[grid](
        x, w13, w2, out, flat_ids, weights.reshape(-1).float().contiguous(),
        inter, hidden, flat_ids.numel(), num_experts, topk_ids.shape[1],
        x.stride(0), w13.stride(0), w13.stride(1), w13.stride(2), w2.stride(0), w2.stride(1), w2.stride(2), out.stride(0),
        BLOCK_M=16, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, num_warps=tile.num_warps, num_stages=tile.num_stages,
        **pdl_args(x),
    )  # fmt: skip
    return out


def check_shapes(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor) -> None:
    num_experts, two_inter, hidden_size = w13.shape
    if hidden.dim() != 2 or hidden.shape[1] != hidden_size:
        raise ValueError(f"hidden must be [T, {hidden_size}], got {list(hidden.shape)}")
    if two_inter % 2 or w2.shape != (num_experts, hidden_size, two_inter // 2):
        raise ValueError(f"w2 must be [{num_experts}, {hidden_size}, {two_inter // 2}] for w13 {list(w13.shape)}, got {list(w2.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"topk_ids must be [T={hidden.shape[0]}, k], got {list(topk_ids.shape)}")
    if not hidden.dtype == w13.dtype == w2.dtype:
        raise ValueError(f"hidden, w13 and w2 must share a dtype, got {hidden.dtype}, {w13.dtype}, {w2.dtype}")


def fused_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    config: MoEConfig | None = None,
    one_per_block_tokens: int = MAX_ONE_PER_BLOCK_TOKENS,
    single_pass_tokens: int = MAX_SINGLE_PASS_TOKENS,
    down_topk_sum_tokens: int = MAX_DOWN_TOPK_SUM_TOKENS,
    down_topk_sum_tile: TileConfig = DOWN_TOPK_SUM_TILE,
    prefetch_down: bool = True,
    gemv_gate_up: bool = True,
) -> torch.Tensor:
    """hidden [T, H] -> [T, H]: sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(hidden[t]), skipping ids of -1."""
    return reduced(
        fused_moe_unreduced(
            hidden, w13, w2, topk_ids, topk_weights, config, one_per_block_tokens,
            single_pass_tokens, down_topk_sum_tokens, down_topk_sum_tile, prefetch_down, gemv_gate_up,
        )
    )  # fmt: skip


def fused_moe_unreduced(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    config: MoEConfig | None = None,
    one_per_block_tokens: int = MAX_ONE_PER_BLOCK_TOKENS,
    single_pass_tokens: int = MAX_SINGLE_PASS_TOKENS,
    down_topk_sum_tokens: int = MAX_DOWN_TOPK_SUM_TOKENS,
    down_topk_sum_tile: TileConfig = DOWN_TOPK_SUM_TILE,
    prefetch_down: bool = True,
    gemv_gate_up: bool = True,
) -> MoEOutput:
    """``fused_moe``, but where it would sum the k assignment rows in a generated kernel of their own, the rows unsummed.

    ``prefetch_down``: where each assignment has a block of its own (T <= 2)
    the down projection is down_prefetch.py's kernel, which streams its
    expert weights before the PDL wait, overlapping gate/up; ``gemv_gate_up``:
    there gate/up is gate_up_gemv.py's kernel, one GEMV per assignment.
    """
    check_shapes(hidden, w13, w2, topk_ids)
    num_tokens, top_k = topk_ids.shape
    num_experts, two_inter, hidden_size = w13.shape
    if num_tokens == 0:
        return torch.empty_like(hidden)
    if num_tokens <= single_pass_tokens:
        return run_single_pass(hidden.contiguous(), w13.contiguous(), w2.contiguous(), topk_ids, topk_weights).to(hidden.dtype)
    if config is None:
        config = pick_config(num_tokens, top_k, num_experts, two_inter // 2, hidden_size, hidden.device, hidden.dtype, True)
    hidden, w13, w2 = hidden.contiguous(), w13.contiguous(), w2.contiguous()
    blocks = align(topk_ids, num_experts, config.block_m, one_per_block_tokens)
    # Made before gate/up launches: the prefetching down kernel reads the ids before its PDL
    # wait, so no launch that writes them may sit between gate/up and down.
    flat_ids, flat_weights = topk_ids.reshape(-1).contiguous(), topk_weights.reshape(-1).float().contiguous()
    act = hidden.new_empty(num_tokens * top_k, two_inter // 2)
    if gemv_gate_up and blocks.one_per_block and gate_up_gemv_rows(hidden_size, w13.dtype) is not None:
        run_gate_up_gemv(hidden, w13, flat_ids, act, top_k)
    else:
        run_gate_up(hidden, w13, blocks, act, top_k, config.gate_up)
    if num_tokens <= down_topk_sum_tokens:
        out = torch.empty_like(hidden)
        run_down_topk_sum(act, w2, topk_ids, topk_weights, out, down_topk_sum_tile)
        return out
    out = hidden.new_empty(num_tokens * top_k, hidden_size)
    if prefetch_down and blocks.one_per_block and down_prefetch_rows(two_inter // 2, w2.dtype) is not None:
        run_down_prefetch(act, w2, flat_weights, flat_ids, out)
    else:
        run_down(act, w2, flat_weights, blocks, out, config.down)
    return _deferred_sum(out.view(num_tokens, top_k, hidden_size))


def _deferred_sum(out: torch.Tensor) -> MoEOutput:
    """The [T, k, H] assignment rows summed over k, or left to the next norm where it can sum them."""
    if out.shape[0] > MAX_GENERATED_SUM_TOKENS:
        return out.sum(dim=1)
    return PendingTopkSum(out) if out.dtype in DEFERRABLE_DTYPES else sum_assignments(out)


@dataclass(frozen=True)
class TritonMoEParams:
    # false: always the heuristic block sizes, to measure what tuning buys
    use_tuned_configs: bool = True
    # batches of at most this many tokens run the one-launch kernel (fp32 atomics: about 7%
    # faster at 1 token on an H100, but its last bits depend on program order, so greedy
    # decoding is no longer bitwise reproducible); 0 keeps the deterministic two-kernel path
    single_pass_tokens: int = 0
    # batches of at most this many tokens run the down projection and the top-k sum as one
    # kernel (deterministic); 0 keeps the separate down kernel and sum at every size
    down_topk_sum_tokens: int = MAX_DOWN_TOPK_SUM_TOKENS
    # where the k assignment rows would be summed by a launch of their own (T <= 256, bf16 or
    # fp32), leave the sum to the next layer's residual add + RMSNorm, number for number;
    # false sums them here (the layer hands on [T, H])
    defer_topk_sum: bool = True
    # batches with a block per assignment (T <= 2) run the down projection that loads its expert
    # weights before the PDL wait (down_prefetch.py); false keeps the pipelined down kernel
    prefetch_down: bool = True
    # batches with a block per assignment (T <= 2) run gate/up + SiLU as one GEMV per assignment
    # that issues its whole weight tile at once (gate_up_gemv.py); false keeps the MMA-tiled kernel
    gemv_gate_up: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.single_pass_tokens <= MAX_SINGLE_PASS_TOKENS:
            raise ValueError(f"single_pass_tokens must be in 0..{MAX_SINGLE_PASS_TOKENS}, got {self.single_pass_tokens}")
        if self.down_topk_sum_tokens < 0:
            raise ValueError(f"down_topk_sum_tokens must be >= 0, got {self.down_topk_sum_tokens}")


@EXPERTS.register("triton", params=TritonMoEParams)
class TritonFusedMoE(ExpertsKernel):
    def __init__(self, params: TritonMoEParams, device: torch.device | None = None, **_: object) -> None:
        if device is not None and (problem := triton_unavailable(device)) is not None:
            raise ValueError(f"{problem}; on the CPU choose experts=auto, grouped_mm or reference")
        self.use_tuned_configs = params.use_tuned_configs
        self.single_pass_tokens = params.single_pass_tokens
        self.down_topk_sum_tokens = params.down_topk_sum_tokens
        self.defer_topk_sum = params.defer_topk_sum
        self.prefetch_down = params.prefetch_down
        self.gemv_gate_up = params.gemv_gate_up

    def forward(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        return reduced(self._run(hidden, w13, w2, plan))

    def forward_unreduced(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> MoEOutput:
        out = self._run(hidden, w13, w2, plan)
        return out if self.defer_topk_sum else reduced(out)

    def _run(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan) -> MoEOutput:
        num_tokens, top_k = plan.topk_ids.shape
        num_experts, two_inter, hidden_size = w13.shape
        config = pick_config(
            num_tokens, top_k, num_experts, two_inter // 2, hidden_size, hidden.device, hidden.dtype, self.use_tuned_configs
        )
        return fused_moe_unreduced(
            hidden, w13, w2, plan.topk_ids, plan.topk_weights, config,
            single_pass_tokens=self.single_pass_tokens, down_topk_sum_tokens=self.down_topk_sum_tokens,
            prefetch_down=self.prefetch_down, gemv_gate_up=self.gemv_gate_up,
        )  # fmt: skip
