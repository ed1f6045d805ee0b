"""The small-batch GEMV against F.linear, linear()'s choice of path, and project() on TP modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moeframe.model.layers.small_gemv import MAX_GEMV_TOKENS, gemv, gemv_tiles, linear, project


def gemv_inputs(num_tokens: int, n: int, k: int, seed: int, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, k, generator=generator)
    weight = torch.randn(n, k, generator=generator) / k**0.5
    bias = torch.randn(n, generator=generator)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear in float32, rounded once to the inputs' dtype."""
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)


TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 3, 8])
@pytest.mark.parametrize(("n", "k"), [(100, 72), (40, 600), (20, 1100)])
def test_gemv_equals_linear_on_sizes_off_the_block_grid(n, k, num_tokens, dtype, device):
    x, weight, bias = gemv_inputs(num_tokens, n, k, seed=n + k + num_tokens, dtype=dtype)
    out = gemv(x.to(device), weight.to(device), bias.to(device))
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


def test_tiles_give_every_sm_two_programs_and_never_drop_below_the_mma_width():
    assert gemv_tiles(2048, 2048, torch.bfloat16, 132)[0] == 16
    assert gemv_tiles(16384, 2048, torch.bfloat16, 132)[0] == 32
    assert gemv_tiles(50304, 2048, torch.bfloat16, 132)[0] == 64
    block_n, block_k, _, _ = gemv_tiles(100, 72, torch.float32, 132)
    assert (block_n, block_k) == (16, 64)


def test_linear_on_the_cpu_is_f_linear_bit_for_bit():
    x, weight, bias = gemv_inputs(3, 100, 72, seed=5)
    assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))


def test_project_runs_a_non_linear_module_through_its_own_forward():
    class Doubled(nn.Module):  # stands in for tp_layers.RowParallelLinear, which all-reduces
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * F.linear(x, self.weight)

    layer, x = Doubled(), torch.randn(2, 6)
    assert torch.equal(project(layer, x), 2 * F.linear(x, layer.weight))


def test_project_of_a_plain_linear_equals_the_module():
    layer, x = nn.Linear(6, 4), torch.randn(2, 6)
    assert torch.equal(project(layer, x), layer(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("n", "k"), [(2048, 2048), (6144, 2048), (2048, 8192)])
def test_linear_takes_the_gemv_and_replays_in_a_cuda_graph(n, k):
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
