"""The small-batch GEMV and its fused input norm against F.linear and norm.py, and the paths that choose them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from sm90_compile import compile_for_sm90

from moeframe.model.layers.attention import Attention
from moeframe.model.layers.norm import RMSNorm, add_rms_norm, rms_norm
from moeframe.model.layers.rotary import Rotary
from moeframe.model.layers.small_gemv import (
    BLOCK_T,
    DEFAULT_DECODE_GEMV,
    MAX_GEMV_TOKENS,
    MAX_PREFETCH_TOKENS,
    MAX_STAGES,
    PREFETCH_TILE_BYTES,
    SHARED_BYTES_PER_SM,
    gemv,
    gemv_tiles,
    linear,
    norm_gemv,
    norm_project,
    prefetch_gemv,
    prefetch_tile_rows,
    project,
    set_decode_gemv,
)
from moeframe.model.spec import AttentionSpec, RopeSpec
from moeframe.parallel.comm import Comm
from moeframe.parallel.tp_layers import RowParallelLinear

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}
EPS = 1e-5


def gemv_inputs(num_tokens: int, n: int, k: int, seed: int, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, k, generator=generator)
    weight = torch.randn(n, k, generator=generator) / k**0.5
    bias = torch.randn(n, generator=generator)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def norm_inputs(num_tokens: int, k: int, seed: int, dtype: torch.dtype):
    """A residual stream, the block output added to it, and a norm weight around 1."""
    generator = torch.Generator().manual_seed(seed)
    residual = 3 * torch.randn(num_tokens, k, generator=generator)
    h = torch.randn(num_tokens, k, generator=generator)
    norm_weight = 1 + 0.2 * torch.randn(k, generator=generator)
    return h.to(dtype), residual.to(dtype), norm_weight.to(dtype)


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear in float32, rounded once to the inputs' dtype."""
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)


@pytest.mark.parametrize("kernel", [gemv, prefetch_gemv])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 3, 8])
@pytest.mark.parametrize(("n", "k"), [(100, 72), (40, 600), (20, 1100)])
def test_gemv_equals_linear_on_sizes_off_the_block_grid(n, k, num_tokens, dtype, kernel, device):
    x, weight, bias = gemv_inputs(num_tokens, n, k, seed=n + k + num_tokens, dtype=dtype)
    out = kernel(x.to(device), weight.to(device), bias.to(device))
    assert out.dtype == dtype and out.shape == (num_tokens, n)
    torch.testing.assert_close(out.cpu(), reference(x, weight, bias), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemv_without_bias_equals_linear(dtype, device):
    x, weight, _ = gemv_inputs(3, 100, 72, seed=1, dtype=dtype)
    out = gemv(x.to(device), weight.to(device))
    torch.testing.assert_close(out.cpu(), reference(x, weight, None), **TOLERANCE[dtype])


def test_gemv_reads_a_row_slice_of_a_wider_tensor(device):
    x, weight, bias = gemv_inputs(5, 48, 200, seed=2)
    wide = torch.randn(8, 3 * 200)
    wide[2:7, 200:400] = x
    strided = wide.to(device)[2:7, 200:400]
    assert strided.stride() == (600, 1)
    out = gemv(strided, weight.to(device), bias.to(device))
    torch.testing.assert_close(out.cpu(), reference(x, weight, bias), **TOLERANCE[torch.float32])


def test_gemv_reads_columns_with_a_stride(device):
    x, weight, bias = gemv_inputs(2, 24, 64, seed=3)
    strided = torch.stack([x, x], dim=-1).to(device)[..., 1]
    assert strided.stride() == (128, 2)
    out = gemv(strided, weight.to(device), bias.to(device))
    torch.testing.assert_close(out.cpu(), reference(x, weight, bias), **TOLERANCE[torch.float32])


def test_gemv_refuses_more_tokens_than_one_program_holds(device):
    x, weight, _ = gemv_inputs(17, 16, 16, seed=4)
    with pytest.raises(ValueError, match="at most 16 tokens"):
        gemv(x.to(device), weight.to(device))


def test_prefetch_gemv_without_bias_on_a_strided_row_slice_equals_linear(device):
    x, weight, _ = gemv_inputs(5, 48, 200, seed=2, dtype=torch.float16)
    wide = torch.zeros(8, 600, dtype=torch.float16)
    wide[2:7, 200:400] = x
    out = prefetch_gemv(wide.to(device)[2:7, 200:400], weight.to(device))
    torch.testing.assert_close(out.cpu(), reference(x, weight, None), **TOLERANCE[torch.float16])


@pytest.mark.parametrize(
    ("k", "dtype", "rows"),
    [(2048, torch.bfloat16, 8), (2000, torch.float16, 8), (1024, torch.float32, 8), (64, torch.float16, 64), (16384, torch.bfloat16, 1)],
)
def test_prefetch_tile_holds_the_most_whole_rows_that_fit(k, dtype, rows):
    assert prefetch_tile_rows(k, dtype) == rows
    padded_row_bytes = (1 << (k - 1).bit_length()) * torch.finfo(dtype).bits // 8
    assert rows * padded_row_bytes <= PREFETCH_TILE_BYTES < 2 * rows * padded_row_bytes or rows == 64


def test_prefetch_gemv_float32_output_holds_the_half_precision_result_widened(device):
    x, weight, bias = gemv_inputs(2, 300, 200, seed=6, dtype=torch.float16)
    args = (x.to(device), weight.to(device), bias.to(device))
    wide = prefetch_gemv(*args, out_dtype=torch.float32)
    assert wide.dtype == torch.float32
    assert torch.equal(wide, prefetch_gemv(*args).float())


def test_prefetch_gemv_refuses_a_row_longer_than_its_tile(device):
    assert prefetch_tile_rows(16385, torch.bfloat16) is None
    with pytest.raises(ValueError, match="K = 16385 is too long"):
        prefetch_gemv(torch.zeros(1, 16385, device=device), torch.zeros(4, 16385, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_tokens", range(1, MAX_GEMV_TOKENS + 1))
def test_norm_gemv_equals_add_rms_norm_then_linear(num_tokens, dtype, device):
    k, n = 600, 72  # K spans several chunks and is no power of two
    h, residual, norm_weight = norm_inputs(num_tokens, k, seed=num_tokens, dtype=dtype)
    _, weight, bias = gemv_inputs(1, n, k, seed=10 + num_tokens, dtype=dtype)
    out, summed = norm_gemv(h.to(device), residual.to(device), norm_weight.to(device), EPS, weight.to(device), bias.to(device))
    normed, expected_sum = add_rms_norm(h, residual, norm_weight, EPS)
    assert torch.equal(summed.cpu(), expected_sum)
    torch.testing.assert_close(out.cpu(), reference(normed, weight, bias), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_tokens", "n", "k"), [(1, 40, 1100), (5, 100, 72), (8, 20, 300)])
def test_norm_gemv_without_a_residual_is_rms_norm_then_linear(num_tokens, n, k, dtype, device):
    h, _, norm_weight = norm_inputs(num_tokens, k, seed=k, dtype=dtype)
    _, weight, _ = gemv_inputs(1, n, k, seed=n, dtype=dtype)
    h = h.to(device)
    out, residual = norm_gemv(h, None, norm_weight.to(device), EPS, weight.to(device))
    assert residual is h
    expected = reference(rms_norm(h.cpu(), norm_weight, EPS), weight, None)
    torch.testing.assert_close(out.cpu(), expected, **TOLERANCE[dtype])


def test_norm_gemv_rounds_the_normed_row_to_the_dtype_as_rms_norm_does(device):
    """fp16 activations whose normed value times the weight is not representable: the kernel must round twice too."""
    k = 64
    h = torch.full((1, k), 1.0, dtype=torch.float16)
    h[0, 0] = 3.0
    norm_weight = torch.full((k,), 1.0009765625, dtype=torch.float16)  # 1 + 2^-10
    weight = torch.zeros(1, k, dtype=torch.float16)
    weight[0, 0] = 1.0
    out, _ = norm_gemv(h.to(device), None, norm_weight.to(device), EPS, weight.to(device))
    assert torch.equal(out.cpu()[0, 0], rms_norm(h, norm_weight, EPS)[0, 0])


def test_norm_gemv_reads_a_strided_block_output(device):
    h, residual, norm_weight = norm_inputs(3, 160, seed=5, dtype=torch.float32)
    _, weight, bias = gemv_inputs(1, 24, 160, seed=6)
    strided = torch.stack([h, h], dim=-1).to(device)[..., 0]
    out, summed = norm_gemv(strided, residual.to(device), norm_weight.to(device), EPS, weight.to(device), bias.to(device))
    normed, expected_sum = add_rms_norm(h, residual, norm_weight, EPS)
    assert torch.equal(summed.cpu(), expected_sum)
    torch.testing.assert_close(out.cpu(), reference(normed, weight, bias), **TOLERANCE[torch.float32])


def test_tiles_give_every_sm_two_programs_and_never_drop_below_the_mma_width():
    assert gemv_tiles(2048, 2048, torch.bfloat16, 132)[:3] == (16, 256, 4)
    assert gemv_tiles(6144, 2048, torch.bfloat16, 132)[:3] == (16, 256, 4)
    assert gemv_tiles(16384, 2048, torch.bfloat16, 132)[0] == 32
    assert gemv_tiles(50304, 2048, torch.bfloat16, 132)[0] == 64
    block_n, block_k, _, _ = gemv_tiles(100, 72, torch.float32, 132)
    assert (block_n, block_k) == (16, 64)


@pytest.mark.parametrize("fused_norm", [False, True])
@pytest.mark.parametrize("n", [2048, 4224, 6144, 16384, 50304])
def test_pipeline_stages_of_the_programs_sharing_an_sm_fit_its_shared_memory(n, fused_norm):
    block_n, block_k, _, num_stages = gemv_tiles(n, 2048, torch.bfloat16, 132, fused_norm)
    resident = math.ceil(math.ceil(n / block_n) / 132)
    stage_rows = block_n + (2 * BLOCK_T + 1 if fused_norm else BLOCK_T)
    assert 2 <= num_stages <= MAX_STAGES
    assert resident * (num_stages - 1) * stage_rows * block_k * 2 <= SHARED_BYTES_PER_SM


def test_linear_on_the_cpu_is_f_linear_bit_for_bit():
    x, weight, bias = gemv_inputs(3, 100, 72, seed=5)
    assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))


class DoublingComm(Comm):
    """An all-reduce over two ranks that hold the same partial sum."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return 2 * tensor


def test_project_runs_a_row_parallel_linear_through_its_all_reduce():
    full, x = nn.Linear(6, 4), torch.randn(2, 6)
    cols = torch.arange(2, 5)
    row_parallel = RowParallelLinear(full, cols, DoublingComm())
    expected = 2 * F.linear(x[:, cols], full.weight[:, cols]) + full.bias
    torch.testing.assert_close(project(row_parallel, x[:, cols]), expected)


def test_project_of_a_plain_linear_equals_the_module():
    layer, x = nn.Linear(6, 4), torch.randn(2, 6)
    assert torch.equal(project(layer, x), layer(x))


def test_norm_project_on_the_cpu_is_add_forward_then_the_module_bit_for_bit():
    norm, layer = RMSNorm(6, EPS), nn.Linear(6, 4)
    nn.init.normal_(norm.weight)
    h, residual = torch.randn(3, 6), torch.randn(3, 6)
    normed, summed = norm.add_forward(h, residual)
    out, got_sum = norm_project(norm, layer, h, residual)
    assert torch.equal(out, layer(normed)) and torch.equal(got_sum, summed)
    out, got_residual = norm_project(norm, layer, h, None)
    assert torch.equal(out, layer(norm(h))) and got_residual is h


def test_attention_project_qkv_on_the_cpu_is_the_norm_then_qkv_proj():
    spec = AttentionSpec(num_heads=2, num_kv_heads=1, head_dim=4, qkv_bias=True)
    attn = Attention(spec, 8, EPS, Rotary(RopeSpec(theta=1e4, rotary_dim=4)), 0)
    norm = RMSNorm(8, EPS)
    nn.init.normal_(norm.weight)
    h, residual = torch.randn(2, 8), torch.randn(2, 8)
    qkv, summed = attn.project_qkv(h, residual, norm)
    assert torch.equal(qkv, attn.qkv_proj(norm.add_forward(h, residual)[0])) and torch.equal(summed, h + residual)


# The prefetching kernel as the JIT specializes a batch-1 OLMoE o_proj launch (four warps): every weight load
# before the wait; with the L2 hints (moeframe/gpu/l2_prefetch.py) the weight loads evict-first and the L2
# prefetch of a later weight issued before the wait too.
PREFETCH_COMPILE_FOR_SM90 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.model.layers._prefetch_gemv_kernel import prefetch_gemv_kernel as kernel
mode = sys.argv[1]
hints = mode == "hints"
names = kernel.arg_names
consts = dict(HAS_BIAS=False, BLOCK_N=8, BLOCK_K=2048, WEIGHT_EVICT="evict_first" if hints else "",
              L2_PREFETCH=mode != "plain", L2_EVICT_LAST=hints, USE_PDL=True, stride_xk=1, num_tokens=1)
sig = {n: "constexpr" if n in consts else "*bf16" if n.endswith("_ptr") else "i32" for n in names}
aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ("N", "K", "stride_xt", "stride_wn", "stride_ot")]
attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": 4}).asm["ptx"]
lines = ptx.splitlines()
wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
loads = [i for i, line in enumerate(lines) if "ld.global" in line]
evict_first = [i for i in loads if "evict_first" in lines[i]]
kept = [i for i, line in enumerate(lines) if "prefetch.global.L2::evict_last" in line]
normal = [i for i, line in enumerate(lines) if "prefetch.global.L2 " in line]
print(sum(i < wait for i in loads), sum(i > wait for i in loads), len(evict_first), len(kept), len(normal),
      all(i < wait for i in kept + normal))
"""


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("plain", ["16", "2", "0", "0", "0", "True"]), ("hints", ["16", "2", "16", "1", "0", "True"]),
     ("tail", ["16", "2", "0", "0", "1", "True"])],
)  # fmt: skip
def test_the_prefetching_kernel_issues_its_weight_loads_before_the_pdl_wait(mode, expected) -> None:
    stdout = compile_for_sm90(PREFETCH_COMPILE_FOR_SM90, mode)
    # 8 rows x 2048 bf16 over 128 threads: sixteen 16-byte weight loads each before the wait, the token's row (two)
    # after; with the hints the weight loads (not the token's row) evict first, and one evict-last prefetch loop
    # precedes the wait; prefetching its own second wave (tail), one prefetch loop of the normal priority does
    assert stdout.split() == expected


# As the JIT specializes a batch-1 bf16 launch: 16-byte aligned pointers and sizes, unit strides and T = 1 constant.
COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.model.layers._gemv_kernel import gemv_kernel
names = gemv_kernel.arg_names
sig = dict(zip(names, ["*bf16"] * 7 + ["i32"] * 3 + ["fp32"] + ["i32"] * 6 + ["constexpr"] * 8))
aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ("N", "K", "stride_xt", "stride_rt", "stride_wn", "stride_ot")]
attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
for norm, residual in ((False, False), (True, False), (True, True)):
    consts = dict(NORM=norm, HAS_RESIDUAL=residual, HAS_BIAS=False, IEEE_FP32=False, BLOCK_T=16, BLOCK_N=16, BLOCK_K=256,
                  USE_PDL=True, stride_xk=1, stride_rk=1, num_tokens=1)
    sig.update(dict.fromkeys(("stride_xk", "stride_rk", "num_tokens"), "constexpr"))
    src = ASTSource(fn=gemv_kernel, signature=sig, constexprs=consts, attrs=attrs)
    options = {"launch_pdl": True, "num_warps": 4, "num_stages": 3}
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    print(all(op in ptx for op in ("griddepcontrol.wait", "griddepcontrol.launch_dependents", "mma.sync", "cp.async")))
"""


def test_every_variant_compiles_for_sm90_with_pdl_and_a_pipelined_weight_stream() -> None:
    stdout = compile_for_sm90(COMPILE_FOR_SM90)
    assert stdout.split() == ["True"] * 3


@pytest.fixture
def decode_gemv_mode():
    """Sets runner.decode_gemv for one test and puts the default back after it."""
    yield set_decode_gemv
    set_decode_gemv(DEFAULT_DECODE_GEMV)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("n", "k"), [(2048, 2048), (6144, 2048), (2048, 8192)])
def test_linear_takes_the_gemv_and_replays_in_a_cuda_graph(n, k, decode_gemv_mode):
    decode_gemv_mode("triton")
    x, weight, bias = gemv_inputs(MAX_GEMV_TOKENS, n, k, seed=6, dtype=torch.bfloat16)
    static_x, weight, bias = x.cuda(), weight.cuda(), bias.cuda()
    linear(static_x, weight, bias)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = linear(static_x, weight, bias)
    new_x, _, _ = gemv_inputs(MAX_GEMV_TOKENS, n, k, seed=7, dtype=torch.bfloat16)
    static_x.copy_(new_x)
    graph.replay()
    torch.testing.assert_close(static_out, reference(static_x, weight, bias), rtol=1e-2, atol=1e-2)
    assert torch.equal(static_out, gemv(static_x, weight, bias))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("n", "k"), [(2048, 2048), (6144, 2048), (2048, 8192)])
def test_linear_in_prefetch_mode_takes_the_prefetching_gemv_in_a_cuda_graph(n, k, decode_gemv_mode):
    decode_gemv_mode("prefetch")
    x, weight, bias = gemv_inputs(MAX_PREFETCH_TOKENS, n, k, seed=6, dtype=torch.bfloat16)
    static_x, weight, bias = x.cuda(), weight.cuda(), bias.cuda()
    linear(static_x, weight, bias)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = linear(static_x, weight, bias)
    static_x.copy_(gemv_inputs(MAX_PREFETCH_TOKENS, n, k, seed=7, dtype=torch.bfloat16)[0])
    graph.replay()
    torch.testing.assert_close(static_out, reference(static_x, weight, bias), rtol=1e-2, atol=1e-2)
    assert torch.equal(static_out, prefetch_gemv(static_x, weight, bias))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_linear_in_prefetch_mode_leaves_batches_past_its_token_limit_to_cublas(decode_gemv_mode):
    decode_gemv_mode("prefetch")
    x, weight, bias = (t.cuda() for t in gemv_inputs(MAX_PREFETCH_TOKENS + 1, 2048, 2048, seed=8, dtype=torch.bfloat16))
    assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_tokens", [1, 8])
def test_norm_project_fuses_on_cuda_and_matches_the_unfused_path(num_tokens, decode_gemv_mode):
    decode_gemv_mode("fused")
    norm, layer = RMSNorm(2048, 1e-6).cuda().bfloat16(), nn.Linear(2048, 6144, bias=False).cuda().bfloat16()
    nn.init.normal_(norm.weight, 1.0, 0.1)
    h, residual, _ = norm_inputs(num_tokens, 2048, seed=8, dtype=torch.bfloat16)
    h, residual = h.cuda(), residual.cuda()
    out, summed = norm_project(norm, layer, h, residual)
    normed, expected_sum = norm.add_forward(h, residual)
    assert torch.equal(summed, expected_sum)
    torch.testing.assert_close(out, F.linear(normed, layer.weight), rtol=2e-2, atol=2e-2)


def test_an_unknown_decode_gemv_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="runner.decode_gemv='gemm'"):
        set_decode_gemv("gemm")
