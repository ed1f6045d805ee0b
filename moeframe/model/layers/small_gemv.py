"""Dense projections of decode-sized batches: a Triton GEMV on CUDA where cuBLAS leaves SMs idle, F.linear elsewhere.

At batch 1 the attention's qkv/o projections and the dense MLP's GEMVs are
weight streams. cuBLAS picks 64-row tiles for them (o_proj of OLMoE-1B-7B,
2048 x 2048: 32 programs on a 132-SM H100, 46% of the copy bandwidth); the
kernel in _gemv_kernel.py gives each program 16-64 rows so the grid covers
the GPU, and reads the weight once for all tokens of the batch. It runs for
CUDA tensors of at most ``MAX_GEMV_TOKENS`` rows in half, bfloat16 or float32
with a K-contiguous weight; everything else, the CPU always, runs
``F.linear``. Tile sizes follow fixed rules of N, K and the dtype, never a
runtime autotune: a CUDA graph captures one launch, and a fixed tiling keeps
every output's summation order, hence its bits, the same from run to run.

Split-K (several programs per output row, summed by a second launch or by
atomics) is left out: at the sizes served here N / BLOCK_N already gives
>= 128 programs, each streaming 64 KB or more with a pipeline several loads
deep, while a second launch would cost about what the GEMV saves and fp32
atomics would make the last bits depend on the order programs finish.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

# Decode batch sizes, as measured by tools/bench_kernels.py (table ``gemv``). The MMA
# tile holds 16 tokens, so up to 16 the weight is still read once; past 8 it is unmeasured,
# and from prefill sizes on cuBLAS's tiled GEMMs are the right kernels.
MAX_GEMV_TOKENS = 8
BLOCK_T = 16
# Enough programs to give every SM at least two.
PROGRAMS_PER_SM = 2
GEMV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels() -> ModuleType:
    # Imported on first use, not with the package: Triton chooses between
    # compiling and interpreting (TRITON_INTERPRET) when a kernel is defined.
    from moeframe.model.layers import _gemv_kernel

    return _gemv_kernel


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter (tests): one "SM", so small weights already take the wide row blocks
    return torch.cuda.get_device_properties(device).multi_processor_count


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def gemv_tiles(n: int, k: int, dtype: torch.dtype, num_sms: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for a [N, K] weight.

    The widest row block that still gives every SM ``PROGRAMS_PER_SM``
    programs (16 at the least: the MMA's smallest N); a K chunk of 8-16 KB
    of weight per stage for half types, and a small one for float32, whose
    dot runs on the FMA units and holds its operands in registers.
    """
    block_n = 16
    for wide in (64, 32):
        if -(-n // wide) >= PROGRAMS_PER_SM * num_sms:
            block_n = wide
            break
    if dtype == torch.float32:
        return block_n, min(64, max(16, _next_power_of_2(k))), 4, 2
    chunk = 512 if block_n == 16 else 256
    return block_n, min(chunk, max(16, _next_power_of_2(k))), 4, 4 if block_n == 16 else 3


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, K] @ weight [N, K]^T (+ bias [N]) in x's dtype, T <= 16, in one Triton launch."""
    num_tokens, k = x.shape
    n = weight.shape[0]
    if num_tokens > BLOCK_T:
        raise ValueError(f"gemv holds at most {BLOCK_T} tokens in one program, got {num_tokens}")
    out = torch.empty(num_tokens, n, dtype=x.dtype, device=x.device)
    if num_tokens == 0 or n == 0:
        return out
    block_n, block_k, num_warps, num_stages = gemv_tiles(n, k, x.dtype, _num_sms(x.device))
    _kernels().gemv_kernel[(-(-n // block_n),)](
        x, weight, weight if bias is None else bias, out, num_tokens, n, k,
        x.stride(0), x.stride(1), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, IEEE_FP32=x.dtype == torch.float32,
        BLOCK_T=BLOCK_T, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def _uses_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        x.is_cuda
        and x.dim() == 2
        and 0 < x.shape[0] <= MAX_GEMV_TOKENS
        and x.dtype in GEMV_DTYPES
        and weight.dtype == x.dtype
        and weight.device == x.device
        and weight.is_contiguous()
        and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: the Triton GEMV for decode-sized CUDA batches, F.linear itself otherwise."""
    if _uses_gemv(x, weight, bias):
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, through ``linear`` when layer is a plain nn.Linear.

    Tensor parallelism swaps projections for its own modules (a row-parallel
    linear all-reduces its partial sums): those run their own forward. A
    column-parallel shard is a plain nn.Linear over its rows and takes the GEMV.
    """
    if type(layer) is nn.Linear:
        return linear(x, layer.weight, layer.bias)
    return layer(x)
