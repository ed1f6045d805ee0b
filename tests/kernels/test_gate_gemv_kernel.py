"""The gate GEMV kernel against the float32 F.linear reference, and gate_logits' choice of path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moeframe.routers.gate import gate_gemv, gate_logits

HIDDEN = 96


def gate_inputs(num_tokens: int, num_experts: int, hidden: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=generator)
    weight = torch.randn(num_experts, hidden, generator=generator) / hidden**0.5
    return x, weight


@pytest.mark.parametrize("num_tokens", [1, 3, 37])
@pytest.mark.parametrize("num_experts", [8, 60, 64, 128])
def test_gate_gemv_of_float32_activations_equals_float32_linear(num_experts, num_tokens, device):
    x, weight = gate_inputs(num_tokens, num_experts, HIDDEN, seed=num_experts + num_tokens)
    logits = gate_gemv(x.to(device), weight.to(device))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.cpu(), F.linear(x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_tokens", [1, 3, 37])
@pytest.mark.parametrize("num_experts", [8, 60])
def test_gate_gemv_casts_low_precision_activations_as_it_loads(num_experts, num_tokens, device, low_precision):
    x, weight = gate_inputs(num_tokens, num_experts, HIDDEN, seed=1)
    x = x.to(low_precision)
    logits = gate_gemv(x.to(device), weight.to(device))
    torch.testing.assert_close(logits.cpu(), F.linear(x.float(), weight), rtol=1e-5, atol=1e-5)


def test_gate_gemv_loops_over_a_hidden_size_longer_than_its_tile(device):
    x, weight = gate_inputs(5, 3, 2500, seed=2)
    logits = gate_gemv(x.to(device), weight.to(device))
    torch.testing.assert_close(logits.cpu(), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_gate_gemv_reads_strided_activations(device):
    x, weight = gate_inputs(3, 8, 2 * HIDDEN, seed=3)
    x = x[:, :HIDDEN]
    logits = gate_gemv(x.to(device), weight[:, :HIDDEN].to(device))
    torch.testing.assert_close(logits.cpu(), F.linear(x, weight[:, :HIDDEN]), rtol=1e-5, atol=1e-5)


def test_gate_logits_on_the_cpu_are_float32_linear_bit_for_bit():
    x, weight = gate_inputs(3, 8, HIDDEN, seed=4)
    x = x.to(torch.bfloat16)
    assert torch.equal(gate_logits(x, weight), F.linear(x.float(), weight))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gate_gemv_replays_in_a_cuda_graph():
    x, weight = gate_inputs(2, 64, 2048, seed=5)
    static_x, weight = x.to("cuda", torch.bfloat16), weight.cuda()
    gate_gemv(static_x, weight)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_logits = gate_logits(static_x, weight)
    new_x, _ = gate_inputs(2, 64, 2048, seed=6)
    static_x.copy_(new_x)
    graph.replay()
    expected = F.linear(static_x.float().cpu(), weight.cpu())
    torch.testing.assert_close(static_logits.cpu(), expected, rtol=1e-5, atol=1e-5)
