"""Dense projections of decode-sized batches on CUDA: Triton GEMVs launched with PDL, or F.linear.

At batch 1 the attention's qkv/o projections and the dense MLP's GEMVs are
weight streams. The default (``runner.decode_gemv=prefetch``) is
``prefetch_gemv`` (_prefetch_gemv_kernel.py) for batches of one or two
tokens: each program loads its whole weight tile before its PDL wait, so the
stream overlaps the kernel before it instead of following it (on an H100 the
o projection then ends 2 us after attention instead of 6; the batch-1 step
span fell from 1,320 to 1,259 us); larger batches run cuBLAS.

The other Triton path, an ablation, is the pipelined GEMV of _gemv_kernel.py,
which gives each program 16-64 rows
so the grid covers the GPU, and reads the weight once for all tokens of the
batch. Alone it only ties cuBLAS on an H100 (6.7 vs 6.5 us at 2048 x 2048,
12.5 vs 12.3 us at 6144 x 2048; benchmarks/kernels_h100/gemv_experiment);
it was expected to pay inside a decode step, where the kernels around it are
launched with programmatic dependent launch (moeframe/gpu/pdl.py) and a cuBLAS
kernel breaks that chain: in a synthetic 16-layer chain of layer-shaped GEMVs
replayed from a CUDA graph, Triton GEMVs with PDL took 1,077 us against
cuBLAS's 1,125 us (benchmarks/kernels_h100/pdl_experiment, best at 16-row
blocks, 256-wide K chunks, 4 warps: the tiles chosen here for OLMoE's qkv and
o projections). Inside the real batch-1 step it lost to cuBLAS (see
DECODE_GEMV_MODES): its pipeline starts only after the wait. ``norm_gemv``
also folds the residual add and RMSNorm before the qkv projection into the
same launch.

The GEMVs run for CUDA tensors of at most ``MAX_GEMV_TOKENS`` rows in half,
bfloat16 or float32 with a K-contiguous weight; everything else, the CPU
always, runs ``F.linear`` (and norm.py's torch norm). Tile sizes follow fixed
rules of N, K and the dtype, never a runtime autotune: a CUDA graph captures
one launch, and a fixed tiling keeps every output's summation order, hence
its bits, the same from run to run.

Split-K (several programs per output row, summed by a second launch or by
atomics) is left out: from N = 2048 (OLMoE's o_proj, a dense MLP's down
projection) N / BLOCK_N gives >= 128 programs, each streaming 64 KB or more
through a pipeline several 8 KB loads deep, enough to cover the memory
latency of one SM; a second launch would cost about what the GEMV saves, and
fp32 atomics would make the last bits depend on the order programs finish.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

from moeframe.gpu.l2_prefetch import l2_hints, tail_prefetch, weight_eviction
from moeframe.gpu.occupancy import resident_programs
from moeframe.gpu.pdl import pdl_args
from moeframe.gpu.register_tiles import whole_rows
from moeframe.model.layers import batch_invariant
from moeframe.model.layers.norm import RMSNorm
from moeframe.model.layers.topk_sum import MoEOutput, PendingTopkSum, reduced

# Decode batch sizes: the range the GEMV was measured at (T = 1, 4, 8; benchmarks/kernels_h100/gemv_experiment).
# The MMA tile holds 16 tokens, so up to 16 the weight would still be read once, but past 8
# cuBLAS's own small-batch kernels are unmeasured against it; prefill sizes belong to cuBLAS.
MAX_GEMV_TOKENS = 8
BLOCK_T = 16
# Enough programs to give every SM at least two.
PROGRAMS_PER_SM = 2
# Weight bytes one program loads per pipeline stage (the token block adds 16 rows beside it).
STAGE_WEIGHT_BYTES = 8192
# Shared memory the programs resident on one SM may fill with stages (an H100 SM has 228 KB),
# and the deepest pipeline worth its prologue.
SHARED_BYTES_PER_SM = 192 * 1024
MAX_STAGES = 6
GEMV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# runner.decode_gemv: "prefetch" (_prefetch_gemv_kernel.py: the weight tile
# loaded before the PDL wait), "fused" (the pipelined Triton GEMV, the qkv one
# with the norm inside), "triton" (that GEMV, norms apart) or "cublas" (F.linear).
# Inside the batch-1 step on an H100 the pipelined paths lost to cuBLAS (step
# span 1,498 us with cuBLAS, 1,521 triton, 1,572 fused, all else equal); the
# prefetching GEMV won (1,320 us with cuBLAS, 1,259 prefetch; the o projection
# ends 1.7 us after the attention merge instead of 6.0), so it is the default.
DECODE_GEMV_MODES = ("prefetch", "fused", "triton", "cublas")
DEFAULT_DECODE_GEMV = "prefetch"
# A prefetching program holds its whole [BLOCK_N, K] weight tile in registers: at most this many bytes.
# 32 KB measured best in the batch-1 step on an H100 (step span 1,264 us; 1,299 at 64 KB, 1,214
# against 1,205 at 16 KB).
PREFETCH_TILE_BYTES = 32 * 1024
# Warps of a prefetching program: four (64 weight registers a thread at a 32 KB tile) against
# eight took the batch-1 step span from 1,133 to 1,130 us and 1,105 to 1,101 us in two H100 runs; 16: 1,120.
PREFETCH_NUM_WARPS = 4
# Each token costs the prefetching kernel a pass of CUDA-core FMAs over the tile after the
# wait; at 8 tokens it tied cuBLAS on an H100 (batch-8 decode 1,978 vs 1,997 tok/s), so in the
# "prefetch" mode batches of more tokens than this run F.linear (cuBLAS).
MAX_PREFETCH_TOKENS = 2
# runner.gemv_tail_prefetch: a prefetching GEMV whose grid outgrows one wave by at most this many bytes
# of weight has its first wave prefetch them into L2 (moeframe/gpu/l2_prefetch.py); a grid of many
# waves (the lm_head) streams anyway and is left alone.
MAX_TAIL_PREFETCH_BYTES = 16 * 1024 * 1024
# The first wave of each prefetching GEMV launch configuration (with or without the tail prefetch), learnt once
# from its first launch (gpu/occupancy.py).
_first_waves: dict[tuple, int | None] = {}
_mode = DEFAULT_DECODE_GEMV


def set_decode_gemv(mode: str) -> None:
    """Choose how decode-sized CUDA projections run (``runner.decode_gemv``)."""
    global _mode
    if mode not in DECODE_GEMV_MODES:
        raise ValueError(f"runner.decode_gemv={mode!r}: choose one of {', '.join(DECODE_GEMV_MODES)}")
    _mode = mode


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.model.layers import _gemv_kernel

    return _gemv_kernel


def _prefetch_kernels() -> ModuleType:
    from moeframe.model.layers import _prefetch_gemv_kernel

    return _prefetch_gemv_kernel


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter (tests): one "SM", so small weights already take the wide row blocks
    return torch.cuda.get_device_properties(device).multi_processor_count


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class GemvTiles(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


@functools.cache
def gemv_tiles(n: int, k: int, dtype: torch.dtype, num_sms: int, fused_norm: bool = False) -> GemvTiles:
    """The tiling of a [N, K] weight.

    The widest row block that still gives every SM ``PROGRAMS_PER_SM``
    programs (16 at the least: the MMA's smallest N). For half types a K
    chunk of ``STAGE_WEIGHT_BYTES`` of weight, and as many stages as the
    programs sharing an SM leave shared memory for (Triton buffers
    ``num_stages - 1`` of them): a grid of one program per SM (N = 2048)
    keeps five chunks, 40 KB, in flight, enough to cover HBM latency at an
    SM's share of the bandwidth; a grid of three per SM keeps four each.
    ``fused_norm`` (norm_gemv) counts the residual's token block and the norm
    weight's chunk in each stage too. For float32 a small chunk, as its dot
    runs on the FMA units with the operands in registers.
    """
    block_n = 16
    for wide in (64, 32):
        if _cdiv(n, wide) >= PROGRAMS_PER_SM * num_sms:
            block_n = wide
            break
    if dtype == torch.float32:
        return GemvTiles(block_n, min(64, max(16, _next_power_of_2(k))), 4, 2)
    itemsize = torch.finfo(dtype).bits // 8
    block_k = min(STAGE_WEIGHT_BYTES // (block_n * itemsize), max(16, _next_power_of_2(k)))
    resident = _cdiv(_cdiv(n, block_n), num_sms)
    stage_rows = block_n + (2 * BLOCK_T + 1 if fused_norm else BLOCK_T)
    buffered = SHARED_BYTES_PER_SM // (resident * stage_rows * block_k * itemsize)
    return GemvTiles(block_n, block_k, 4, max(2, min(MAX_STAGES, buffered + 1)))


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tiles: GemvTiles | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    num_tokens, k = x.shape
    n = weight.shape[0]
    if num_tokens > BLOCK_T:
        raise ValueError(f"gemv holds at most {BLOCK_T} tokens in one program, got {num_tokens}")
    if weight.shape[1] != k:
        raise ValueError(f"gemv of x [{num_tokens}, {k}] and weight {list(weight.shape)}: K differs")
    out = torch.empty(num_tokens, n, dtype=x.dtype, device=x.device)
    summed = None if residual is None else torch.empty(num_tokens, k, dtype=x.dtype, device=x.device)
    if num_tokens == 0 or n == 0:
        if summed is not None:
            torch.add(x, residual, out=summed)
        return out, summed
    fused = norm_weight is not None
    block_n, block_k, num_warps, num_stages = tiles or gemv_tiles(n, k, x.dtype, _num_sms(x.device), fused)
    res = x if residual is None else residual
    _kernels().gemv_kernel[(_cdiv(n, block_n),)](
        x, res, weight if norm_weight is None else norm_weight, out if summed is None else summed,
        weight, weight if bias is None else bias, out, num_tokens, n, k, eps,
        x.stride(0), x.stride(1), res.stride(0), res.stride(1), weight.stride(0), out.stride(0),
        NORM=fused, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        IEEE_FP32=x.dtype == torch.float32, BLOCK_T=BLOCK_T, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages, **pdl_args(x),
    )  # fmt: skip
    return out, summed


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, tiles: GemvTiles | None = None
) -> torch.Tensor:
    """x [T, K] @ weight [N, K]^T (+ bias [N]) in x's dtype, T <= 16, in one Triton launch.

    ``tiles``: gemv_tiles' choice unless given (benchmarks of other tilings).
    """
    return _launch(x, None, None, 0.0, weight, bias, tiles)[0]


def prefetch_tile_rows(k: int, dtype: torch.dtype) -> int | None:
    """Rows of a prefetching program's weight tile within ``PREFETCH_TILE_BYTES``; None where one row does not fit."""
    return whole_rows(k, dtype, PREFETCH_TILE_BYTES)


def prefetch_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    l2_prefetch: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [T, K] @ weight [N, K]^T (+ bias [N]) in x's dtype, in one launch that loads its weights before the PDL wait.

    K must leave a row within ``PREFETCH_TILE_BYTES`` (``prefetch_tile_rows``).
    ``out_dtype`` (float32 for logits): the result rounded to x's dtype, then
    stored in this wider dtype, as ``prefetch_gemv(x, weight).to(out_dtype)``.
    ``l2_prefetch``: a contiguous tensor (a later kernel's weight) the programs
    prefetch into L2 before their wait, where moeframe/gpu/l2_prefetch.py's
    hints apply; the result never depends on it.
    """
    num_tokens, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"prefetch_gemv of x [{num_tokens}, {k}] and weight {list(weight.shape)}: K differs")
    block_n = prefetch_tile_rows(k, weight.dtype)
    if block_n is None:
        raise ValueError(f"prefetch_gemv holds a whole weight row of {PREFETCH_TILE_BYTES} bytes at most: K = {k} is too long")
    out = torch.empty(num_tokens, n, dtype=out_dtype or x.dtype, device=x.device)
    if num_tokens == 0 or n == 0:
        return out
    block_k = _next_power_of_2(k)
    num_programs = _cdiv(n, block_n)
    prefetches = l2_prefetch is not None and l2_hints(x)
    if prefetches and not l2_prefetch.is_contiguous():
        raise ValueError(f"prefetch_gemv prefetches a contiguous tensor into L2, got strides {tuple(l2_prefetch.stride())}")
    # The L2 prefetch: a later kernel's weight (kept past the experts' stream), or this weight's second wave
    # (read within the launch), shared by the first wave's programs.
    l2_target, l2_parts, evict_last = (l2_prefetch if prefetches else weight), num_programs, True
    wave_key = (x.device, weight.dtype, block_n, block_k, bias is not None)
    # the prefetching variant's wave once it has run (it may hold more registers), else the plain one's
    first_wave = _first_waves.get((*wave_key, True), _first_waves.get((*wave_key, False)))
    tail = not prefetches and tail_prefetch(x) and first_wave is not None and _tail_rows(n, block_n, k, weight, first_wave)
    if tail:
        l2_target, l2_parts, evict_last = weight[first_wave * block_n :], first_wave, False
    compiled = _prefetch_kernels().prefetch_gemv_kernel[(num_programs,)](
        x, weight, weight if bias is None else bias, out, num_tokens, n, k,
        x.stride(0), x.stride(1), weight.stride(0), out.stride(0),
        l2_target, l2_target.numel() * l2_target.element_size() if prefetches or tail else 0, l2_parts,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, WEIGHT_EVICT=weight_eviction(x),
        L2_PREFETCH=prefetches or tail, L2_EVICT_LAST=evict_last, num_warps=PREFETCH_NUM_WARPS, **pdl_args(x),
    )  # fmt: skip
    if x.is_cuda and (*wave_key, tail) not in _first_waves:
        _first_waves[(*wave_key, tail)] = resident_programs(compiled, x.device)
    return out


def _tail_rows(n: int, block_n: int, k: int, weight: torch.Tensor, first_wave: int) -> bool:
    """Whether rows past the first wave exist and are few enough (``MAX_TAIL_PREFETCH_BYTES``) to prefetch into L2."""
    tail_rows = n - first_wave * block_n
    return 0 < tail_rows and tail_rows * k * weight.element_size() <= MAX_TAIL_PREFETCH_BYTES


def norm_gemv(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    tiles: GemvTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.linear(rms_norm(x + residual), weight, bias), x + residual) in one Triton launch, T <= 16.

    norm.py's add_rms_norm (rms_norm alone, and ``x`` returned as the
    residual, when ``residual`` is None) followed by ``gemv``, with its
    rounding: the sum and the normed row are rounded to x's dtype as there.
    """
    out, summed = _launch(x, residual, norm_weight, eps, weight, bias, tiles)
    return out, x if summed is None else summed


def uses_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``linear(x, weight, bias)`` runs the Triton GEMV: a decode-sized CUDA batch in a GEMV dtype.

    Never under batch-invariant mode, whose projections go row by row (batch_invariant.py).
    """
    return (
        _mode != "cublas"
        and not batch_invariant.batch_invariant()
        and x.is_cuda
        and x.dim() == 2
        and 0 < x.shape[0] <= MAX_GEMV_TOKENS
        and x.dtype in GEMV_DTYPES
        and weight.dtype == x.dtype
        and weight.device == x.device
        and weight.is_contiguous()
        and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
    )


def _fuses_norm(x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module, layer: nn.Module) -> bool:
    return (
        _mode == "fused"
        and type(norm) is RMSNorm
        and type(layer) is nn.Linear
        and uses_gemv(x, layer.weight, layer.bias)
        and norm.weight.dtype == x.dtype
        and norm.weight.is_contiguous()
        and norm.weight.shape == (x.shape[1],)
        and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype and residual.device == x.device))
    )


def _prefetches(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        _mode == "prefetch"
        and uses_gemv(x, weight, bias)
        and x.shape[0] <= MAX_PREFETCH_TOKENS
        and prefetch_tile_rows(x.shape[1], weight.dtype) is not None
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, l2_prefetch: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: the Triton GEMV for decode-sized CUDA batches, F.linear itself otherwise
    (row by row under batch-invariant mode: batch_invariant.py).

    ``l2_prefetch``: a later kernel's weight the prefetching GEMV may pull into L2 (``prefetch_gemv``).
    """
    if _prefetches(x, weight, bias):
        return prefetch_gemv(x, weight, bias, l2_prefetch=l2_prefetch)
    if _mode != "prefetch" and uses_gemv(x, weight, bias):
        return gemv(x, weight, bias)
    return batch_invariant.linear(x, weight, bias)


def project_float(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x).float()`` (the logits of the lm_head): one prefetching launch writing float32 where it applies.

    At batch 1 the cast of the lm_head's ~50k logits is a launch of its own
    (3 us on an H100); the prefetching GEMV stores them as float32 itself.
    """
    if type(layer) is nn.Linear and _prefetches(x, layer.weight, layer.bias):
        return prefetch_gemv(x, layer.weight, layer.bias, out_dtype=torch.float32)
    return project(layer, x).float()


def project(layer: nn.Module, x: torch.Tensor, l2_prefetch: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x)``, through ``linear`` when layer is a plain nn.Linear (with ``l2_prefetch``, see there).

    Tensor parallelism swaps projections for its own modules (a row-parallel
    linear all-reduces its partial sums): those run their own forward. A
    column-parallel shard is a plain nn.Linear over its rows and takes the GEMV.
    """
    if type(layer) is nn.Linear:
        return linear(x, layer.weight, layer.bias, l2_prefetch)
    return layer(x)


def norm_project(
    norm: nn.Module, layer: nn.Module, x: MoEOutput, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``project(layer, norm(x + residual))``, x + residual); no add while ``residual`` is None (the first layer).

    One ``norm_gemv`` launch where ``norm`` is a plain RMSNorm, ``layer`` a
    plain nn.Linear and the batch takes the GEMV; otherwise ``norm.add_forward``
    then ``project``, the path the CPU (the reference) always runs. The GEMV
    reads summed rows, so an MoE output whose top-k sum is pending is summed
    first (its own launch); ``norm.add_forward`` sums it inside the norm.
    """
    # one of the k rows has the sum's shape, dtype and device
    like_sum = x.parts[:, 0] if isinstance(x, PendingTopkSum) else x
    if _fuses_norm(like_sum, residual, norm, layer):
        return norm_gemv(reduced(x), residual, norm.weight, norm.eps, layer.weight, layer.bias)
    normed, residual = norm.add_forward(x, residual)
    return project(layer, normed), residual
